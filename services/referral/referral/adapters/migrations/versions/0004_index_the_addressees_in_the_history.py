"""index the addressees in the history

GET /audit finds the referrals an agency was ever addressed by referral_history.to_agency_id (the audit
scope, referral.adapters.audit_scope); without an index every auditor's page scans the history.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 01:33:03.661705
"""
from collections.abc import Sequence

from alembic import op


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('referral_history', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_referral_history_to_agency_id'), ['to_agency_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('referral_history', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_referral_history_to_agency_id'))
