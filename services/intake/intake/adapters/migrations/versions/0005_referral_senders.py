"""referral senders: intake_referral.from_agency_id and sender_entitled

Intake grants a receiving agency a read of a person only when the referral's sender might refer that
person, by intake's own records (docs/security.md): it keeps each referral's sender and whether that sender
was entitled. Referrals recorded before this revision have neither; the next event of each fills them in.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 10:00:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('intake_referral', schema=None) as batch_op:
        batch_op.add_column(sa.Column('from_agency_id', sa.String(), nullable=True))
        batch_op.add_column(sa.Column('sender_entitled', sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('intake_referral', schema=None) as batch_op:
        batch_op.drop_column('sender_entitled')
        batch_op.drop_column('from_agency_id')
