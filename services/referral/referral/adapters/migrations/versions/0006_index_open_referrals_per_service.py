"""index open referrals per service

Routing counts each candidate service's open referrals (capacity) for every screening it routes. Without
an index that count scanned the whole referral table each time, so routing slowed as referrals grew; on
(to_service_id, status) it is read from the index alone.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 13:20:00.000000
"""
from collections.abc import Sequence

from alembic import op


revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('referral_referral', schema=None) as batch_op:
        batch_op.create_index('ix_referral_referral_to_service_id_status', ['to_service_id', 'status'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('referral_referral', schema=None) as batch_op:
        batch_op.drop_index('ix_referral_referral_to_service_id_status')
