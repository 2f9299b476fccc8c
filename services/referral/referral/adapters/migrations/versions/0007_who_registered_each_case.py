"""who registered each case: referral_case_person

A manual referral may be opened only by the agency that registered the person's case, an agency holding an
accepted referral for them, or the jurisdiction's coordinator, and only inside the case's jurisdiction
(docs/security.md). Referral learns who registered each case, and where, from case.registered.v1 and
case.screened.v1. Persons already screened are filled in from their screening's referrals, whose sender is
the registering agency (case.screened.v1 registering_agency_id); persons registered but never screened
before this revision stay unknown until their next screening.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 10:00:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'referral_case_person',
        sa.Column('person_id', sa.String(), nullable=False),
        sa.Column('case_id', sa.String(), nullable=False),
        sa.Column('registering_agency_id', sa.String(), nullable=False),
        sa.Column('jurisdiction', sa.String(), nullable=False),
        sa.Column('learnt_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('person_id'),
    )
    with op.batch_alter_table('referral_case_person', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_referral_case_person_case_id'), ['case_id'], unique=False)
    # A screening's referrals (and their onward ones) are sent by the agency that registered the case.
    op.execute("""
        INSERT INTO referral_case_person (person_id, case_id, registering_agency_id, jurisdiction, learnt_at)
        SELECT person_id, MIN(case_id), MIN(from_agency_id), MIN(jurisdiction), CURRENT_TIMESTAMP
        FROM referral_referral WHERE screening_id IS NOT NULL GROUP BY person_id
    """)


def downgrade() -> None:
    with op.batch_alter_table('referral_case_person', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_referral_case_person_case_id'))
    op.drop_table('referral_case_person')
