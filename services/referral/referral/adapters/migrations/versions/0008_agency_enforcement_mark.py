"""agency enforcement mark: referral_agency.enforcement

Whether an agency is on the enforcement side of the information barrier (enlace_platform.firewall) is
the directory's word. Existing agencies get their type's default: a migration authority is enforcement.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 16:20:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('referral_agency', schema=None) as batch_op:
        batch_op.add_column(sa.Column('enforcement', sa.Boolean(), nullable=False, server_default=sa.false()))
    op.execute("UPDATE referral_agency SET enforcement = (type = 'migration_authority')")
    with op.batch_alter_table('referral_agency', schema=None) as batch_op:
        batch_op.alter_column('enforcement', server_default=None)


def downgrade() -> None:
    with op.batch_alter_table('referral_agency', schema=None) as batch_op:
        batch_op.drop_column('enforcement')
