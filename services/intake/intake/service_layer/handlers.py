"""Handlers of the referral service's events: protection holds, and referral status for access and outcomes.

Each is idempotent beyond the inbox: the same fact arriving twice (or out of order) ends in the same rows.
A payload that breaks its contract is a PoisonMessage and goes to the dead-letter topic.

What arrives on the bus is not an authority: a referral grants a read, and its hold blocks a removal, only
if its sender might refer the person by intake's own records (sender_entitled, docs/security.md).
"""

import logging

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError
from sqlalchemy import event, update
from sqlmodel import col, select
from sqlmodel import Session as SyncSession
from sqlmodel.ext.asyncio.session import AsyncSession

from enlace_platform.consumer import PoisonMessage
from enlace_platform.envelope import Envelope
from intake.adapters.orm import CaseRow, ProtectionHoldRow, ReferralViewRow
from intake.domain import events
from intake.domain.rules import NEED_CODES
from intake.domain.safeguard import (
    WORKING_REFERRAL_STATUSES, HoldState, coordinator_of, is_newer, on_placed, on_released,
)

log = logging.getLogger(__name__)


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore")  # a later version may add optional fields


class HoldPlaced(_Payload):
    hold_id: str
    case_id: str
    person_id: str
    referral_id: str
    need_code: str
    placed_at: AwareDatetime
    not_before: AwareDatetime | None = None


class HoldReleased(_Payload):
    hold_id: str
    case_id: str
    person_id: str
    referral_id: str
    need_code: str
    release_reason: str
    outcome_code: str | None = None
    released_at: AwareDatetime


class ReferralChanged(_Payload):
    referral_id: str
    case_id: str
    person_id: str
    need_code: str
    status: str
    from_agency_id: str | None = None
    previous_referral_id: str | None = None
    to_agency_id: str | None = None
    to_agency_type: str | None = None
    outcome_code: str | None = None
    occurred_at: AwareDatetime | None = None  # optional on referral.requested.v1 only


def _parse(model: type[_Payload], envelope: Envelope) -> Any:
    try:
        payload = model.model_validate(envelope.data)
    except ValidationError as exc:
        # Field paths only: the values might be anything.
        paths = ", ".join("/".join(map(str, e["loc"])) or "<root>" for e in exc.errors())
        raise PoisonMessage(f"{envelope.type} breaks its contract at: {paths}") from None
    if payload.case_id != envelope.key:
        raise PoisonMessage(f"{envelope.type}: case_id differs from the record key")
    if payload.need_code not in NEED_CODES:
        raise PoisonMessage(f"{envelope.type}: unknown need_code")
    return payload


def _state(row: ProtectionHoldRow | None) -> HoldState | None:
    if row is None:
        return None
    return HoldState(**{k: getattr(row, k) for k in HoldState.__dataclass_fields__})


async def _save(session: AsyncSession, row: ProtectionHoldRow | None, state: HoldState) -> None:
    row = row or ProtectionHoldRow(hold_id=state.hold_id, case_id=state.case_id, person_id=state.person_id)
    for name, value in asdict(state).items():
        setattr(row, name, value)
    session.add(row)
    _touch_case(session, state.case_id)


_TOUCHED_CASES = "intake_touched_cases"


def _touch_case(session: AsyncSession, case_id: str) -> None:
    """Work on the case elsewhere keeps it active: the retention clock restarts. The cases a transaction
    touched are updated together by one UPDATE just before it commits (a consumer's batch: one statement)."""
    session.info.setdefault(_TOUCHED_CASES, set()).add(case_id)
    session_class = type(session.sync_session)
    if not event.contains(session_class, "before_commit", _update_touched_cases):
        event.listen(session_class, "before_commit", _update_touched_cases)
        event.listen(session_class, "after_rollback", _forget_touched_cases)


def _update_touched_cases(session: SyncSession) -> None:
    touched = session.info.pop(_TOUCHED_CASES, None)
    if touched:
        cases = CaseRow.__table__  # Core: no case is loaded in a consumer's session, none to synchronise
        session.exec(update(cases).where(cases.c.id.in_(sorted(touched))).values(last_activity_at=datetime.now(UTC)))


def _forget_touched_cases(session: SyncSession) -> None:
    session.info.pop(_TOUCHED_CASES, None)


async def on_hold_placed(session: AsyncSession, envelope: Envelope) -> None:
    p = _parse(HoldPlaced, envelope)
    row = await session.get(ProtectionHoldRow, p.hold_id)
    placed = HoldState(hold_id=p.hold_id, case_id=p.case_id, person_id=p.person_id, referral_id=p.referral_id,
                       need_code=p.need_code, placed_at=p.placed_at, not_before=p.not_before)
    await _save(session, row, on_placed(_state(row), placed))


async def on_hold_released(session: AsyncSession, envelope: Envelope) -> None:
    p = _parse(HoldReleased, envelope)
    row = await session.get(ProtectionHoldRow, p.hold_id)
    state = on_released(_state(row), hold_id=p.hold_id, case_id=p.case_id, person_id=p.person_id,
                        referral_id=p.referral_id, need_code=p.need_code, released_at=p.released_at,
                        release_reason=p.release_reason, outcome_code=p.outcome_code)
    await _save(session, row, state)


async def on_referral_event(session: AsyncSession, envelope: Envelope) -> None:
    """Keeps the referral's current status, receiver and outcome code: the access grants and the case view."""
    p = _parse(ReferralChanged, envelope)
    occurred_at: datetime = p.occurred_at or envelope.time
    row = await session.get(ReferralViewRow, p.referral_id)
    if row is not None and not is_newer(occurred_at, row.occurred_at):
        return  # an older event replayed: the newer state stands
    row = row or ReferralViewRow(referral_id=p.referral_id, case_id=p.case_id, person_id=p.person_id,
                                 need_code=p.need_code, status=p.status, last_event_type=envelope.type,
                                 occurred_at=occurred_at)
    if row.sender_entitled is None and p.from_agency_id:  # decided once, as things stood when the referral came
        row.from_agency_id = p.from_agency_id
        row.sender_entitled = await _sender_entitled(session, p)
        if not row.sender_entitled:
            log.warning("referral %s from an agency not entitled to refer the person: it grants nothing and its "
                        "hold blocks nothing", p.referral_id)
    row.status, row.need_code, row.last_event_type, row.occurred_at = p.status, p.need_code, envelope.type, occurred_at
    row.to_agency_id, row.to_agency_type = p.to_agency_id, p.to_agency_type
    if p.outcome_code is not None:
        row.outcome_code = p.outcome_code
    session.add(row)
    _touch_case(session, p.case_id)


async def _sender_entitled(session: AsyncSession, p: ReferralChanged) -> bool:
    """By intake's own records: the agency that registered the case, the coordinator of its jurisdiction, an
    agency working on an entitled referral for the person, or the sender of the entitled referral this one
    continues (routed onward after a rejection keeps its sender)."""
    case = await session.get(CaseRow, p.case_id)
    if case is None:
        return False
    if p.from_agency_id in (case.agency_id, coordinator_of(case.jurisdiction)):
        return True
    if p.previous_referral_id:
        previous = await session.get(ReferralViewRow, p.previous_referral_id)
        if previous is not None and previous.sender_entitled and previous.person_id == p.person_id \
                and previous.from_agency_id == p.from_agency_id:
            return True
    working = await session.exec(select(ReferralViewRow.referral_id).where(
        ReferralViewRow.case_id == p.case_id, ReferralViewRow.person_id == p.person_id,
        ReferralViewRow.to_agency_id == p.from_agency_id, ReferralViewRow.sender_entitled == True,  # noqa: E712
        col(ReferralViewRow.status).in_(sorted(WORKING_REFERRAL_STATUSES))).limit(1))
    return working.first() is not None


HOLD_HANDLERS = {events.HOLD_PLACED: on_hold_placed, events.HOLD_RELEASED: on_hold_released}
REFERRAL_HANDLERS = {event_type: on_referral_event for event_type in events.REFERRAL_EVENT_TYPES}
