"""Referral's own gauges on /metrics, read at scrape time: referrals by status, those overdue, those
waiting in a coordinator's queue, and active protection holds."""

from datetime import UTC, datetime

from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from enlace_platform.metrics import ServiceMetrics
from referral.adapters.orm import HoldRow, ReferralRow
from referral.domain.lifecycle import OPEN, Status

OPEN_VALUES = [s.value for s in OPEN]


async def referral_gauges(metrics: ServiceMetrics, session: AsyncSession) -> None:
    by_status = metrics.gauge("enlace_referrals", "Referrals by FHIR Task status", ("status",))
    counts = dict((await session.exec(select(ReferralRow.status, func.count()).group_by(ReferralRow.status))).all())
    for status in Status:
        by_status.labels(status.value).set(counts.get(status.value, 0))
    open_referrals = col(ReferralRow.status).in_(OPEN_VALUES)
    overdue = (await session.exec(select(func.count()).where(
        open_referrals, col(ReferralRow.due_at).is_not(None), col(ReferralRow.due_at) <= datetime.now(UTC)))).one()
    metrics.gauge("enlace_referrals_overdue", "Open referrals past their deadline").set(overdue)
    queued = (await session.exec(select(func.count()).where(
        open_referrals, col(ReferralRow.to_agency_id).is_(None)))).one()
    metrics.gauge("enlace_referrals_unassigned", "Open referrals in a coordinator's queue").set(queued)
    holds = (await session.exec(select(func.count()).where(col(HoldRow.released_at).is_(None)))).one()
    metrics.gauge("enlace_protection_holds_active", "Protection holds not yet released").set(holds)
