"""outbox leases: claimed_by and claimed_until

The outbox relay claims rows with a lease in a short transaction, sends them with no transaction open,
then records the outcome in a second one (enlace_platform.outbox): claimed_by names the relay holding a
row, claimed_until ends its lease, after which any relay may claim the row again. Both start empty.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 09:33:23.250455
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claimed_by', sa.String(), nullable=True))
        batch_op.add_column(sa.Column('claimed_until', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_column('claimed_until')
        batch_op.drop_column('claimed_by')
