"""Deadline clocks and reflection periods, run by a background loop in every replica.

Each breach is claimed with a conditional UPDATE on its fired marker, in its own transaction, so it
fires exactly once however many replicas share the database.
"""

import asyncio
import logging
from datetime import datetime

from sqlalchemy import func, update
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from enlace_platform.runtime import every
from referral.adapters.orm import HoldRow, ReferralRow
from referral.domain import events
from referral.domain.codes import OVERDUE, REFLECTION_PERIOD_ENDED
from referral.domain.lifecycle import OPEN
from referral.service_layer.referrals import SYSTEM, add_history, now_utc, open_referral_for, publish, release_hold

log = logging.getLogger(__name__)
BATCH = 100


async def fire_overdue(session: AsyncSession, referral_id: str, at: datetime) -> bool:
    ref = await session.get(ReferralRow, referral_id)
    if ref is None or ref.clock is None:
        return False
    claimed = await session.exec(
        update(ReferralRow).where(ReferralRow.id == referral_id, ReferralRow.clock == ref.clock,
                                  col(ReferralRow.clock_fired_at).is_(None), col(ReferralRow.due_at) <= at,
                                  col(ReferralRow.status).in_([str(s) for s in OPEN]))
        # A queued referral keeps why it is queued (CONSENT_MISSING still routes it when consent arrives).
        .values(clock_fired_at=at, escalation_reason=func.coalesce(ReferralRow.escalation_reason, OVERDUE)))
    if claimed.rowcount != 1:
        return False  # another replica fired it, or the referral moved on
    await session.refresh(ref)
    await add_history(session, ref, "overdue", ref.status, SYSTEM, at, reason_code=ref.clock)
    await publish(session, ref, events.REFERRAL_OVERDUE, SYSTEM, at, reason_code=ref.clock)
    await add_history(session, ref, "escalate", ref.status, SYSTEM, at, reason_code=OVERDUE)
    await publish(session, ref, events.REFERRAL_ESCALATED, SYSTEM, at, reason_code=OVERDUE)
    return True


def _no_open_referral_for_the_hold():
    """The hold's (person, need) has no open referral: its active_key equals an open referral's open_key."""
    return ~select(ReferralRow.id).where(ReferralRow.open_key == HoldRow.active_key).exists()


async def end_reflection_period(session: AsyncSession, hold_id: str, at: datetime) -> bool:
    """A trafficking hold ends once its reflection period is over and no referral for the need is open:
    whatever the outcome, but never while the anti-trafficking referral is still open (it may not even be
    accepted yet); the next pass after it closes releases the hold."""
    hold = await session.get(HoldRow, hold_id)
    if hold is None or hold.released_at is not None:
        return False
    if await open_referral_for(session, hold.person_id, hold.need_code) is not None:
        return False
    # The referral whose chain carried the hold: the person's latest referral for this need.
    ref = (await session.exec(select(ReferralRow).where(ReferralRow.person_id == hold.person_id,
                                                        ReferralRow.need_code == hold.need_code)
                              .order_by(col(ReferralRow.created_at).desc()).limit(1))).first()
    if ref is None:
        return False
    outcome = ref.outcome_code if ref.status == "completed" else None
    return await release_hold(session, hold, reason=REFLECTION_PERIOD_ENDED, ref=ref, outcome_code=outcome, at=at)


async def run_clocks(sessions: async_sessionmaker[AsyncSession], at: datetime | None = None) -> int:
    """One pass: fire every breached deadline and end every finished reflection period. Returns how many."""
    at = at or now_utc()
    async with sessions() as session:
        due = (await session.exec(select(ReferralRow.id).where(
            col(ReferralRow.due_at) <= at, col(ReferralRow.clock_fired_at).is_(None),
            col(ReferralRow.status).in_([str(s) for s in OPEN])).limit(BATCH))).all()
        ended = (await session.exec(select(HoldRow.id).where(
            col(HoldRow.not_before) <= at, col(HoldRow.released_at).is_(None), _no_open_referral_for_the_hold())
            .limit(BATCH))).all()
    fired = 0
    for referral_id in due:
        async with sessions() as session:
            if await fire_overdue(session, referral_id, at):
                fired += 1
            await session.commit()
    for hold_id in ended:
        async with sessions() as session:
            if await end_reflection_period(session, hold_id, at):
                fired += 1
            await session.commit()
    return fired


def clock_loop(interval_s: float):
    return every(interval_s, lambda runtime: run_clocks(runtime.sessions), name="referral-clocks")
