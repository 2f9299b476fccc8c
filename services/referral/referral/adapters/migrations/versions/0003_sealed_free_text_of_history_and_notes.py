"""sealed free text of history and notes

The free text of reasons (reject, cancel, fail) and progress notes is about the person: from now on it is
sealed with the person's key (crypto-shredding). Two flags: text_sealed (the row's text is sealed, or it
has none) and text_erased (the person was erased, the text is gone). A migration cannot reach the
key-encryption key, so rows it finds with clear text keep text_sealed = false and the service seals them at
start-up (referral.service_layer.sealing.seal_legacy_text); nothing is lost. The downgrade keeps the
columns' text as it is (sealed), since opening it needs the keys.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 23:17:23.005471
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('referral_history', schema=None) as batch_op:
        batch_op.add_column(sa.Column('text_sealed', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('text_erased', sa.Boolean(), nullable=False, server_default=sa.false()))
    # Rows without free text have nothing to seal; the others wait for start-up, which has the key.
    op.execute("UPDATE referral_history SET text_sealed = true WHERE reason_text IS NULL AND note IS NULL")
    with op.batch_alter_table('referral_history', schema=None) as batch_op:  # the models carry no server default
        batch_op.alter_column('text_sealed', server_default=None, existing_type=sa.Boolean(), existing_nullable=False)
        batch_op.alter_column('text_erased', server_default=None, existing_type=sa.Boolean(), existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('referral_history', schema=None) as batch_op:
        batch_op.drop_column('text_erased')
        batch_op.drop_column('text_sealed')
