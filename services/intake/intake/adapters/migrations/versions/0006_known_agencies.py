"""known agencies: the directory's agencies, as intake last heard of them

The service's own copy of the directory's agencies (enlace_platform.agencies): a token's agency is
what the directory says it is. Empty here; the first start seeds it from the directory's seed file,
and agency.changed.v1 (topic referral.agency) keeps it current.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 16:20:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'known_agencies',
        sa.Column('id', sa.String(), nullable=False),
        sa.Column('type', sa.String(), nullable=False),
        sa.Column('jurisdiction', sa.String(), nullable=False),
        sa.Column('enforcement', sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )


def downgrade() -> None:
    op.drop_table('known_agencies')
