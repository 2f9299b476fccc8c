"""Referral use cases: open (routed or manual), act on the lifecycle, onward routing, holds, notes.

Each function works inside the caller's transaction; the caller commits. Business rows, history and
outbox events therefore commit together. Every status change is a conditional
``UPDATE ... WHERE version = :v``: of two concurrent actions on one referral exactly one wins.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, func, or_, update
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from enlace_platform import firewall
from enlace_platform.access import Permission, may
from enlace_platform.auth import Principal
from enlace_platform.crypto import Keyring
from enlace_platform.outbox import add_event
from enlace_platform.problems import Problem
from enlace_platform.timeutil import as_utc
from referral.adapters.directory import consented_agency_types, load_directory, open_counts, to_directory_service
from referral.adapters.orm import AgencyRow, CasePersonRow, HistoryRow, HoldRow, ReferralRow, ServiceRow
from referral.domain import events
from referral.domain.clocks import NeedClocks, clock_for
from referral.domain.codes import (
    ACCEPT_DEADLINE, CANCELLED_BY_COORDINATOR, COMPLETED_FINAL, CONSENT_WITHDRAWN, COORDINATOR,
    FINAL_OUTCOME_RESOLVES, HOLD_BEARING_NEEDS, OUTCOME_CODES, REASON_CODES, REJECTED_NO_ALTERNATIVE, TRAFFICKING,
    coordinator_of,
)
from referral.domain.consent import cancelled_by_withdrawal
from referral.domain.lifecycle import (
    OPEN, TERMINAL, WORKING, Action, Allowed, Conflict, Role, Status, allowed_actions, decide,
)
from referral.domain.routing import CaseFacts, RoutingDecision, ineligibility, lead_rank, route
from referral.service_layer.sealing import sealed_text


_OPEN_STATUSES = [str(s) for s in OPEN]


def now_utc() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Policy:
    """Deadline clocks per need and the trafficking reflection period."""
    clocks: dict[str, NeedClocks]
    default_clocks: NeedClocks
    reflection_period: timedelta

    @classmethod
    def from_settings(cls, settings) -> "Policy":
        clocks, default = settings.clock_policy()
        return cls(clocks, default, settings.reflection_period)

    def clock(self, status: Status, need_code: str, since: datetime) -> tuple[str | None, datetime | None]:
        return clock_for(status, need_code, self.clocks, self.default_clocks, since)


@dataclass(frozen=True)
class Actor:
    agency_id: str | None  # None: the system (routing, clocks)
    subject: str | None = None

    @classmethod
    def of(cls, principal: Principal) -> "Actor":
        return cls(principal.agency_id, principal.subject)


SYSTEM = Actor(None)


@dataclass(frozen=True)
class Command:
    action: Action
    reason_code: str | None = None
    reason_text: str | None = None
    outcome_code: str | None = None
    to_service_id: str | None = None
    expected_version: int | None = None


def open_key(person_id: str, need_code: str) -> str:
    return f"{person_id}|{need_code}"


def _iso(value: datetime | None) -> str | None:
    return None if value is None else as_utc(value).isoformat()


# --- events and history ----------------------------------------------------------------------

def referral_payload(ref: ReferralRow, event_type: str, actor: Actor, at: datetime, *,
                     reason_code: str | None = None, previous_to_agency_id: str | None = None) -> dict:
    """The catalog's shared referral payload: codes and ids only. A reassignment also names the agency
    that held the referral before (null when it came from the queue), so that agency is told."""
    payload = {
        "referral_id": ref.id, "case_id": ref.case_id, "person_id": ref.person_id, "need_code": ref.need_code,
        "urgency": ref.urgency, "status": ref.status, "is_lead": ref.is_lead,
        "from_agency_id": ref.from_agency_id, "to_agency_id": ref.to_agency_id,
        "to_agency_type": ref.to_agency_type, "to_service_id": ref.to_service_id,
        "coordinator_agency_id": ref.coordinator_agency_id, "due_at": _iso(ref.due_at),
        "previous_referral_id": ref.previous_referral_id, "actor_agency_id": actor.agency_id,
        "reason_code": reason_code, "outcome_code": ref.outcome_code if event_type == events.REFERRAL_COMPLETED else None,
        "occurred_at": _iso(at),
    }
    if event_type == events.REFERRAL_REASSIGNED:
        payload["previous_to_agency_id"] = previous_to_agency_id
    return payload


async def publish(session: AsyncSession, ref: ReferralRow, event_type: str, actor: Actor, at: datetime,
                  *, reason_code: str | None = None, previous_to_agency_id: str | None = None) -> None:
    """The event on referral.referral and, for a status change of a referral an enforcement agency sent, its
    mirror on referral.status, in the caller's transaction; never for a sensitive need, which the barrier does
    not show an enforcement agency at all (firewall.referral_shown). Hold changes are mirrored whoever sent the
    referral, whatever its need (place_hold, release_hold): a hold is what stops a removal."""
    add_event(session, topic=events.TOPIC, case_id=ref.case_id, event_type=event_type, source=events.SOURCE,
              subject=ref.id, data=referral_payload(ref, event_type, actor, at, reason_code=reason_code,
                                                    previous_to_agency_id=previous_to_agency_id))
    if event_type in firewall.ENFORCEMENT_EVENT_TYPES \
            and firewall.referral_shown(firewall.Viewer.ENFORCEMENT, ref.need_code) \
            and await _sent_by_enforcement(session, ref):
        publish_status(session, ref, event_type, at, hold_active=await _hold_active(session, ref),
                       sent_by_enforcement=True)


async def _sent_by_enforcement(session: AsyncSession, ref: ReferralRow) -> bool:
    """By the directory's mark: the status topic's readers learn nothing of other agencies' referrals. An agency
    gone from the directory counts as not: no one reads a mirror on its behalf any more."""
    with session.no_autoflush:
        sender = await session.get(AgencyRow, ref.from_agency_id)
    return sender is not None and sender.enforcement


async def _hold_active(session: AsyncSession, ref: ReferralRow) -> bool:
    """Whether a hold for the referral's need is active on the person now. Without a flush, so the rows the
    caller added are still written by one flush; a hold placed in this transaction is mirrored by place_hold."""
    if ref.need_code not in HOLD_BEARING_NEEDS:
        return False
    with session.no_autoflush:
        found = await session.exec(select(HoldRow.id).where(HoldRow.active_key == open_key(ref.person_id,
                                                                                            ref.need_code)))
        return found.first() is not None


def status_payload(ref: ReferralRow, cause_type: str, at: datetime, *, hold_active: bool,
                   sent_by_enforcement: bool) -> dict:
    """referral.status_changed.v1: the referral as the firewall lets an enforcement agency see it (kind
    "referral"), when the change happened and the event type that caused it."""
    if not firewall.event_visible(cause_type, firewall.Viewer.ENFORCEMENT):
        raise ValueError(f"{cause_type} is not an event an enforcement agency hears about")
    seen = firewall.project("referral", {
        "id": ref.id, "case_id": ref.case_id, "person_id": ref.person_id, "from_agency_id": ref.from_agency_id,
        "status": ref.status, "hold_active": hold_active, "outcome_code": ref.outcome_code,
    }, firewall.Viewer.ENFORCEMENT, need_code=ref.need_code)
    # Not in firewall.TABLE yet (a kind "status_event" would hold them): the change's time, which the event's
    # arrival discloses anyway, and its cause, one of firewall.ENFORCEMENT_EVENT_TYPES (checked above).
    # Of a referral another agency sent, only the hold: who sent it (an anti-trafficking unit, say) and how it
    # ended are that agency's.
    return {"referral_id": seen["id"], "case_id": seen["case_id"], "person_id": seen["person_id"],
            "from_agency_id": seen["from_agency_id"] if sent_by_enforcement else None, "status": seen["status"],
            "hold_active": seen["hold_active"], "outcome_code": seen["outcome_code"] if sent_by_enforcement else None,
            "occurred_at": _iso(at), "cause_type": cause_type}


def publish_status(session: AsyncSession, ref: ReferralRow, cause_type: str, at: datetime, *,
                   hold_active: bool, sent_by_enforcement: bool) -> None:
    add_event(session, topic=events.STATUS_TOPIC, case_id=ref.case_id, event_type=events.STATUS_CHANGED,
              source=events.SOURCE, subject=ref.id, data=status_payload(ref, cause_type, at, hold_active=hold_active,
                                                                        sent_by_enforcement=sent_by_enforcement))


async def add_history(session: AsyncSession, ref: ReferralRow, action: str, from_status: str | None, actor: Actor,
                      at: datetime, *, keyring: Keyring | None = None, reason_text: str | None = None,
                      note: str | None = None, seq: int | None = None, **details) -> HistoryRow:
    """One history row; free text (a reason's or a note) is sealed with the person's key, so it needs the keyring.
    ``seq``: the row's number when the caller knows it (a referral opened in this transaction), else the next one.
    The row is flushed with the transaction's next statement or its commit."""
    if seq is None:
        last = (await session.exec(select(func.max(HistoryRow.seq)).where(HistoryRow.referral_id == ref.id))).one()
        seq = (last or 0) + 1
    text = await sealed_text(session, keyring, ref.person_id, reason_text=reason_text, note=note)
    row = HistoryRow(referral_id=ref.id, seq=seq, at=at, action=action, from_status=from_status,
                     to_status=ref.status, actor_agency_id=actor.agency_id, actor_subject=actor.subject, **text,
                     **details)
    session.add(row)
    return row


# --- opening referrals -----------------------------------------------------------------------

_WORKING_STATUSES = [str(s) for s in WORKING]
NOT_REFERABLE = "No such person in that case among the persons your agency may refer."


async def referable_person(session: AsyncSession, principal: Principal, case_id: str,
                           person_id: str) -> CasePersonRow:
    """The person's case as intake registered it, if the caller may open a manual referral for them: the
    registering agency, an agency working on an accepted referral for them, or the coordinator of the case's
    jurisdiction (with the role coordinator), always inside that jurisdiction (no cross-border agreement
    exists yet). Every refusal is the 404 of a person referral never heard of, after the same one query."""
    taken_on = select(ReferralRow.id).where(
        ReferralRow.person_id == person_id, ReferralRow.to_agency_id == principal.agency_id,
        col(ReferralRow.status).in_(_WORKING_STATUSES)).exists()
    found = (await session.exec(select(CasePersonRow, taken_on).where(CasePersonRow.person_id == person_id))).first()
    if found is not None:
        case, works_on_them = found
        in_jurisdiction = case.case_id == case_id and case.jurisdiction == principal.jurisdiction
        coordinates = principal.agency_type == COORDINATOR and may(principal, Permission.COORDINATE)
        if in_jurisdiction and (principal.agency_id == case.registering_agency_id or works_on_them or coordinates):
            return case
    raise Problem(404, detail=NOT_REFERABLE)

async def decide_route(session: AsyncSession, need_code: str, facts: CaseFacts,
                       excluded_agencies: frozenset[str] = frozenset()) -> RoutingDecision:
    return route(need_code, facts, await load_directory(session, facts.jurisdiction), excluded_agencies)


async def facts_for(session: AsyncSession, jurisdiction: str, age_band: str, languages: list[str],
                    person_id: str, *, consented: frozenset[str] | None = None) -> CaseFacts:
    """``consented``: the agency types the person's consent covers, when the caller has just written them."""
    if consented is None:
        consented = await consented_agency_types(session, person_id)
    return CaseFacts(jurisdiction=jurisdiction, age_band=age_band, languages=tuple(languages),
                     consented_agency_types=consented)


async def open_referral_for(session: AsyncSession, person_id: str, need_code: str) -> ReferralRow | None:
    return (await session.exec(select(ReferralRow).where(ReferralRow.open_key == open_key(person_id, need_code)))).first()


async def open_referrals_around(session: AsyncSession, case_id: str, person_id: str,
                                need_codes: list[str]) -> tuple[dict[str, ReferralRow], list[ReferralRow]]:
    """(the person's open referral of each of these needs that has one, by need; the case's open referrals),
    with one query: what routing a screening needs to know before it opens referrals (see settle_lead)."""
    keys = [open_key(person_id, code) for code in dict.fromkeys(need_codes)]
    rows = (await session.exec(select(ReferralRow).where(or_(
        and_(ReferralRow.case_id == case_id, col(ReferralRow.status).in_(_OPEN_STATUSES)),
        col(ReferralRow.open_key).in_(keys))))).all()
    of_person = {row.need_code: row for row in rows if row.open_key in keys}
    return of_person, [row for row in rows if row.case_id == case_id and row.status in _OPEN_STATUSES]


async def settle_lead(session: AsyncSession, case_id: str, opened: ReferralRow | None = None, *,
                      open_refs: list[ReferralRow] | None = None) -> None:
    """Exactly one lead among the case's open referrals: the most protective one (LEAD_PRIORITY).

    The current lead keeps the role unless an open referral of a strictly more protective need exists
    (ties never move it, so a rejection's onward referral inherits the lead). With no open lead, the most
    protective open referral, oldest first, leads. A referral that gains or loses the role is changed
    here (version bumped, except for the referral being ``opened``), so its next event carries the new
    ``is_lead``. An ``opened`` referral not yet added to the session is counted in and given its role before
    its INSERT, which then needs no UPDATE. ``open_refs``: the case's open referrals, when the caller holds
    them (open_referrals_around) and nothing else changed them since.
    """
    if open_refs is None:
        open_refs = (await session.exec(select(ReferralRow).where(
            ReferralRow.case_id == case_id, col(ReferralRow.status).in_(_OPEN_STATUSES)))).all()
    refs = [r for r in open_refs if r.case_id == case_id and r.status in _OPEN_STATUSES]
    pending = opened is not None and opened not in session
    if pending:
        refs.append(opened)
    if not refs:
        return
    by_protection = lambda r: (lead_rank(r.need_code), as_utc(r.created_at), r.id)  # noqa: E731
    best = min(refs, key=by_protection)
    current = min((r for r in refs if r.is_lead), key=by_protection, default=None)
    lead = current if current is not None and lead_rank(current.need_code) <= lead_rank(best.need_code) else best
    for r in refs:
        if r is opened and pending:
            r.is_lead = r is lead
        elif r.is_lead != (r is lead):
            bump = 0 if r is opened else 1
            await session.exec(update(ReferralRow).where(ReferralRow.id == r.id)
                               .values(is_lead=r is lead, version=ReferralRow.version + bump))
            set_committed_value(r, "is_lead", r is lead)
            set_committed_value(r, "version", r.version + bump)


async def open_referral(session: AsyncSession, policy: Policy, *, case_id: str, person_id: str, need_code: str,
                        urgency: str, facts: CaseFacts, from_agency_id: str, is_lead: bool = False,
                        decision: RoutingDecision, actor: Actor, at: datetime, screening_id: str | None = None,
                        previous: ReferralRow | None = None, escalation_reason: str | None = None,
                        referral_id: str | None = None, accept_by: datetime | None = None,
                        case_open_refs: list[ReferralRow] | None = None) -> ReferralRow:
    """A new referral (status requested), routed or queued; publishes it, escalates a queued one, places a hold.

    ``is_lead`` only matters for an onward referral inheriting its rejected predecessor's lead; the case's
    lead is settled by settle_lead. ``case_open_refs``: the case's open referrals when the caller holds them
    (open_referrals_around); the new referral is appended to that list."""
    chosen = decision.service
    clock, due_at = policy.clock(Status.REQUESTED, need_code, at)
    if clock == ACCEPT_DEADLINE and due_at is not None and accept_by is not None:
        due_at = min(due_at, as_utc(accept_by))
    ref = ReferralRow(
        case_id=case_id, screening_id=screening_id, person_id=person_id, need_code=need_code, urgency=urgency,
        is_lead=is_lead, jurisdiction=facts.jurisdiction, age_band=facts.age_band, languages=list(facts.languages),
        from_agency_id=from_agency_id, to_agency_id=chosen.agency_id if chosen else None,
        to_agency_type=chosen.agency_type if chosen else None, to_service_id=chosen.service_id if chosen else None,
        coordinator_agency_id=coordinator_of(facts.jurisdiction),
        previous_referral_id=previous.id if previous else None, routing=decision.explanation(),
        routing_reasons=list(decision.reasons), clock=clock, due_at=due_at,
        open_key=open_key(person_id, need_code), created_at=at, updated_at=at,
    )
    if referral_id is not None:
        ref.id = referral_id
    if chosen is None:
        ref.escalation_reason = escalation_reason or decision.escalation_reason
    # Before publishing: the new referral's event says if it leads.
    await settle_lead(session, case_id, opened=ref, open_refs=case_open_refs)
    if case_open_refs is not None:
        case_open_refs.append(ref)
    # Looked up before anything is added, so the rows below (referral, history, events, hold) are written
    # together by the next flush, the events in one statement.
    hold_needed = need_code in HOLD_BEARING_NEEDS and await active_hold(session, person_id, need_code) is None
    session.add(ref)
    await add_history(session, ref, "route", None, actor, at, to_agency_id=ref.to_agency_id,
                      reason_code=ref.escalation_reason, seq=1)
    await publish(session, ref, events.REFERRAL_REQUESTED, actor, at)
    if ref.escalation_reason:
        await add_history(session, ref, "escalate", ref.status, SYSTEM, at, reason_code=ref.escalation_reason,
                          seq=2)
        await publish(session, ref, events.REFERRAL_ESCALATED, SYSTEM, at, reason_code=ref.escalation_reason)
    if hold_needed:
        await place_hold(session, policy, ref, at)
    return ref


# --- protection holds ------------------------------------------------------------------------

async def active_hold(session: AsyncSession, person_id: str, need_code: str) -> HoldRow | None:
    return (await session.exec(select(HoldRow).where(HoldRow.active_key == open_key(person_id, need_code)))).first()


def hold_payload(hold: HoldRow) -> dict:
    return {"hold_id": hold.id, "case_id": hold.case_id, "person_id": hold.person_id, "referral_id": hold.referral_id,
            "need_code": hold.need_code, "from_agency_id": hold.from_agency_id, "to_agency_id": hold.to_agency_id,
            "placed_at": _iso(hold.placed_at), "not_before": _iso(hold.not_before)}


async def place_hold(session: AsyncSession, policy: Policy, ref: ReferralRow, at: datetime) -> None:
    """One hold per (person, need): placed by the first referral of a hold-bearing need (the caller found no
    active hold); onward referrals keep it."""
    hold = HoldRow(case_id=ref.case_id, person_id=ref.person_id, need_code=ref.need_code, referral_id=ref.id,
                   from_agency_id=ref.from_agency_id, to_agency_id=ref.to_agency_id, jurisdiction=ref.jurisdiction,
                   placed_at=at, active_key=open_key(ref.person_id, ref.need_code),
                   not_before=at + policy.reflection_period if ref.need_code == TRAFFICKING else None)
    session.add(hold)
    add_event(session, topic=events.HOLD_TOPIC, case_id=ref.case_id, event_type=events.HOLD_PLACED,
              source=events.SOURCE, subject=hold.id, data=hold_payload(hold))
    publish_status(session, ref, events.HOLD_PLACED, at, hold_active=True,
                   sent_by_enforcement=await _sent_by_enforcement(session, ref))


async def release_hold(session: AsyncSession, hold: HoldRow, *, reason: str, ref: ReferralRow,
                       outcome_code: str | None, at: datetime) -> bool:
    """Claims the release with a conditional UPDATE: a hold is released exactly once."""
    result = await session.exec(
        update(HoldRow).where(HoldRow.id == hold.id, col(HoldRow.released_at).is_(None))
        .values(released_at=at, release_reason=reason, released_by_referral_id=ref.id, outcome_code=outcome_code,
                active_key=None))
    if result.rowcount != 1:
        return False
    add_event(session, topic=events.HOLD_TOPIC, case_id=hold.case_id, event_type=events.HOLD_RELEASED,
              source=events.SOURCE, subject=hold.id,
              data={"hold_id": hold.id, "case_id": hold.case_id, "person_id": hold.person_id,
                    "referral_id": ref.id, "need_code": hold.need_code, "from_agency_id": hold.from_agency_id,
                    "to_agency_id": ref.to_agency_id, "release_reason": reason, "outcome_code": outcome_code,
                    "released_at": _iso(at)})
    publish_status(session, ref, events.HOLD_RELEASED, at, hold_active=False,
                   sent_by_enforcement=await _sent_by_enforcement(session, ref))
    return True


# --- acting on a referral --------------------------------------------------------------------

def is_coordinator_for(principal: Principal, ref: ReferralRow) -> bool:
    return principal.agency_type == COORDINATOR and principal.jurisdiction == ref.jurisdiction


def agency_roles(principal: Principal, ref: ReferralRow) -> frozenset[Role]:
    """The caller's agency's part in this referral: who may see it at all (anyone else gets 404)."""
    roles = set()
    if ref.to_agency_id is not None and principal.agency_id == ref.to_agency_id:
        roles.add(Role.RECEIVER)
    if principal.agency_id == ref.from_agency_id:
        roles.add(Role.SENDER)
    if is_coordinator_for(principal, ref):
        roles.add(Role.COORDINATOR)
    return frozenset(roles)


def roles_of(principal: Principal, ref: ReferralRow) -> frozenset[Role]:
    """The parts the caller may act in: the coordinator's part needs the user's role coordinator too (a
    caseworker of the coordinator agency sees its queue but may not reassign or cancel as coordinator)."""
    roles = agency_roles(principal, ref)
    if Role.COORDINATOR in roles and not may(principal, Permission.COORDINATE):
        roles -= {Role.COORDINATOR}
    return roles


async def visible_referral(session: AsyncSession, referral_id: str, principal: Principal) -> ReferralRow:
    """The referral if the caller's agency has a part in it; otherwise 404, as for an unknown id. An enforcement
    agency that did not receive a referral of a sensitive need gets the same 404, its own referral included: the
    barrier shows it no such referral at all (firewall.referral_shown)."""
    ref = await session.get(ReferralRow, referral_id)
    roles = agency_roles(principal, ref) if ref is not None else frozenset()
    if not roles or not firewall.referral_shown(firewall.viewer_in(principal, roles), ref.need_code):
        raise Problem(404, detail=f"No referral {referral_id} visible to your agency.")
    return ref


def _allowed_now(ref: ReferralRow, principal: Principal | None) -> list[str]:
    if principal is None:
        return []
    return [str(a) for a in allowed_actions(Status(ref.status), roles_of(principal, ref),
                                            has_receiver=ref.to_agency_id is not None)]


async def conditional_update(session: AsyncSession, ref: ReferralRow, changes: dict,
                             principal: Principal | None = None) -> None:
    """UPDATE ... WHERE version = :v; the loser of a race gets 409 (naming the status it lost to and what the
    caller may do now) and nothing changes."""
    referral_id, version = ref.id, ref.version
    changes = {**changes, "version": version + 1}
    result = await session.exec(update(ReferralRow).where(ReferralRow.id == referral_id,
                                                          ReferralRow.version == version).values(**changes))
    if result.rowcount != 1:
        await session.rollback()
        current = await session.get(ReferralRow, referral_id, populate_existing=True)
        raise Problem(409, detail="The referral was changed by someone else at the same time; reload and retry.",
                      current_status=current.status if current else None,
                      current_version=current.version if current else None,
                      allowed_actions=_allowed_now(current, principal) if current else [])
    for key, value in changes.items():
        set_committed_value(ref, key, value)


def _validate(cmd: Command, allowed: Allowed) -> None:
    if allowed.rule.needs_reason:
        if cmd.reason_code not in REASON_CODES:
            raise Problem(422, detail=f"{cmd.action} needs reason_code, one of {sorted(REASON_CODES)}",
                          errors=[{"path": "body/reason_code", "message": "required, from the catalog's list"}])
        if not (cmd.reason_text or "").strip():
            raise Problem(422, detail=f"{cmd.action} needs reason_text explaining the reason",
                          errors=[{"path": "body/reason_text", "message": "required"}])
    if allowed.rule.needs_outcome and cmd.outcome_code not in OUTCOME_CODES:
        raise Problem(422, detail=f"complete needs outcome_code, one of {sorted(OUTCOME_CODES)}",
                      errors=[{"path": "body/outcome_code", "message": "required, from the catalog's list"}])
    if cmd.action == Action.REASSIGN and not cmd.to_service_id:
        raise Problem(422, detail="reassign needs to_service_id",
                      errors=[{"path": "body/to_service_id", "message": "required"}])


async def _reassign_target(session: AsyncSession, ref: ReferralRow, service_id: str):
    row = await session.get(ServiceRow, service_id)
    agency = await session.get(AgencyRow, row.agency_id) if row else None
    if row is None or agency is None:
        raise Problem(422, detail=f"No directory service {service_id}",
                      errors=[{"path": "body/to_service_id", "message": "unknown service"}])
    service = to_directory_service(row, agency.type, (await open_counts(session, [row.id])).get(row.id, 0))
    problem = None
    if ref.need_code not in service.need_codes:
        problem = f"does not serve {ref.need_code}"
    elif service.area != ref.jurisdiction:
        problem = f"serves {service.area}, the referral is in {ref.jurisdiction}"
    elif not service.active:
        problem = "inactive"
    if problem:
        raise Problem(422, detail=f"{service_id} cannot take this referral: {problem}",
                      errors=[{"path": "body/to_service_id", "message": problem}])
    return service


def _closing(at: datetime, reason_code: str | None, outcome_code: str | None) -> dict:
    """What every move to a terminal status changes: the open slot, the clock and any escalation end."""
    return dict(open_key=None, clock=None, due_at=None, closed_at=at, escalation_reason=None,
                reason_code=reason_code, outcome_code=outcome_code)


async def act(session: AsyncSession, policy: Policy, referral_id: str, principal: Principal, cmd: Command,
              at: datetime | None = None, *, keyring: Keyring) -> ReferralRow:
    """Run one lifecycle action for the caller; returns the referral after it (the caller commits)."""
    at = at or now_utc()
    ref = await visible_referral(session, referral_id, principal)
    roles = roles_of(principal, ref)
    verdict = decide(Status(ref.status), cmd.action, roles, has_receiver=ref.to_agency_id is not None)
    if isinstance(verdict, Conflict):
        raise Problem(409, detail=f"Cannot {cmd.action} a referral that is {ref.status}; "
                                  f"you may: {', '.join(verdict.allowed_actions) or 'nothing'}.",
                      current_status=ref.status, allowed_actions=[str(a) for a in verdict.allowed_actions])
    if not isinstance(verdict, Allowed):
        parts = ", ".join(sorted(roles)) or "no part you may act in"
        needs_role = " (acting as its coordinator needs the role coordinator)" if roles != agency_roles(
            principal, ref) else ""
        raise Problem(403, detail=f"Your agency ({parts} of this referral) may not {cmd.action} it{needs_role}.")
    _validate(cmd, verdict)
    if cmd.expected_version is not None and cmd.expected_version != ref.version:
        raise Problem(409, detail=f"The referral is at version {ref.version}, not {cmd.expected_version}.",
                      current_status=ref.status, current_version=ref.version,
                      allowed_actions=_allowed_now(ref, principal))

    actor = Actor.of(principal)
    from_status, previous_to_agency_id = ref.status, ref.to_agency_id
    accept_by = ref.due_at if ref.clock == ACCEPT_DEADLINE else None  # an onward referral keeps it
    target = verdict.target
    changes: dict = {"status": str(target), "updated_at": at}
    if cmd.action in (Action.ACCEPT, Action.REASSIGN):
        clock, due_at = policy.clock(target, ref.need_code, at)
        changes.update(clock=clock, due_at=due_at, clock_fired_at=None, escalation_reason=None)
    if cmd.action == Action.ACCEPT:
        changes["accepted_at"] = at
    if cmd.action == Action.REASSIGN:
        service = await _reassign_target(session, ref, cmd.to_service_id)
        changes.update(to_agency_id=service.agency_id, to_agency_type=service.agency_type,
                       to_service_id=service.service_id, accepted_at=None)
    if target in TERMINAL:
        changes.update(_closing(at, cmd.reason_code, cmd.outcome_code))
    await conditional_update(session, ref, changes, principal)

    await add_history(session, ref, str(cmd.action), from_status, actor, at, keyring=keyring,
                      reason_code=cmd.reason_code, reason_text=cmd.reason_text, outcome_code=cmd.outcome_code,
                      to_agency_id=ref.to_agency_id if cmd.action == Action.REASSIGN else None)
    await publish(session, ref, events.ACTION_EVENTS[cmd.action], actor, at, reason_code=cmd.reason_code,
            previous_to_agency_id=previous_to_agency_id)

    if target in TERMINAL and cmd.action != Action.REJECT:  # a rejection's onward referral settles it
        await settle_lead(session, ref.case_id)
    if cmd.action == Action.REJECT:
        await route_onward(session, policy, ref, at, accept_by=accept_by)
    elif (cmd.action == Action.COMPLETE and ref.need_code != TRAFFICKING
          and ref.need_code in FINAL_OUTCOME_RESOLVES.get(cmd.outcome_code, ())):
        hold = await active_hold(session, ref.person_id, ref.need_code)
        if hold:
            await release_hold(session, hold, reason=COMPLETED_FINAL, ref=ref, outcome_code=cmd.outcome_code, at=at)
    elif cmd.action == Action.CANCEL and Role.COORDINATOR in roles and ref.need_code != TRAFFICKING:
        hold = await active_hold(session, ref.person_id, ref.need_code)
        if hold:
            await release_hold(session, hold, reason=CANCELLED_BY_COORDINATOR, ref=ref, outcome_code=None, at=at)
    return ref


async def cancel_after_consent_withdrawal(session: AsyncSession, person_id: str, agency_type: str,
                                         at: datetime | None = None) -> list[ReferralRow]:
    """The person withdrew their consent to referrals to ``agency_type``: the system cancels their open
    referrals to that type (CONSENT_WITHDRAWN), except the mandatory child-protection ones, which go on
    by law. Protection holds stay (a withdrawn consent never allows a removal); queued referrals have no
    agency type yet and stay queued. Nothing open to that type: nothing happens (idempotent)."""
    at = at or now_utc()
    of_person = (await session.exec(select(ReferralRow).where(ReferralRow.person_id == person_id)
                                    .order_by(ReferralRow.created_at, ReferralRow.id))).all()
    refs = [r for r in of_person if cancelled_by_withdrawal(r.status, r.need_code, r.to_agency_type, agency_type)]
    for ref in refs:
        from_status = ref.status
        await conditional_update(session, ref, {"status": str(Status.CANCELLED), "updated_at": at,
                                                **_closing(at, CONSENT_WITHDRAWN, None)})
        await add_history(session, ref, str(Action.CANCEL), from_status, SYSTEM, at, reason_code=CONSENT_WITHDRAWN)
        await publish(session, ref, events.REFERRAL_CANCELLED, SYSTEM, at, reason_code=CONSENT_WITHDRAWN)
    for case_id in dict.fromkeys(ref.case_id for ref in refs):
        await settle_lead(session, case_id)
    return refs


async def release_hold_by_coordinator(session: AsyncSession, hold_id: str, principal: Principal,
                                      at: datetime | None = None) -> HoldRow:
    """A coordinator ends a hold whose need has no open referral left (e.g. the sender cancelled it)."""
    at = at or now_utc()
    hold = await session.get(HoldRow, hold_id)
    # The route already demanded the role coordinator (Permission.COORDINATE); this is the agency's part.
    if hold is None or not (principal.agency_type == COORDINATOR and principal.jurisdiction == hold.jurisdiction):
        raise Problem(404, detail=f"No protection hold {hold_id} in your jurisdiction.")
    if hold.released_at is not None:
        raise Problem(409, detail="The hold was already released.", release_reason=hold.release_reason)
    open_ref = await open_referral_for(session, hold.person_id, hold.need_code)
    if open_ref is not None:
        raise Problem(409, detail="A referral for this need is still open; cancel it instead.",
                      open_referral_id=open_ref.id)
    if hold.not_before is not None and as_utc(hold.not_before) > at:
        raise Problem(409, detail="The reflection period has not ended; the hold cannot be released before "
                                  f"{_iso(hold.not_before)}.", not_before=_iso(hold.not_before))
    latest = (await session.exec(select(ReferralRow).where(
        ReferralRow.person_id == hold.person_id, ReferralRow.need_code == hold.need_code)
        .order_by(col(ReferralRow.created_at).desc()).limit(1))).first()
    await release_hold(session, hold, reason=CANCELLED_BY_COORDINATOR, ref=latest, outcome_code=None, at=at)
    await session.refresh(hold)
    return hold


async def rejected_agencies(session: AsyncSession, ref: ReferralRow) -> frozenset[str]:
    """Agencies that rejected this need along the chain of onward referrals."""
    agencies: set[str] = set()
    current: ReferralRow | None = ref
    while current is not None:
        if current.status == Status.REJECTED and current.to_agency_id:
            agencies.add(current.to_agency_id)
        current = await session.get(ReferralRow, current.previous_referral_id) if current.previous_referral_id else None
    return frozenset(agencies)


async def route_onward(session: AsyncSession, policy: Policy, rejected: ReferralRow, at: datetime,
                       accept_by: datetime | None = None) -> ReferralRow:
    """A new referral to the next eligible service, linked to the rejected one; the hold stays, and so does
    the deadline to accept: a child passed between agencies is still owed care within the first clock."""
    facts = await facts_for(session, rejected.jurisdiction, rejected.age_band, rejected.languages, rejected.person_id)
    decision = await decide_route(session, rejected.need_code, facts, await rejected_agencies(session, rejected))
    return await open_referral(
        session, policy, case_id=rejected.case_id, person_id=rejected.person_id, need_code=rejected.need_code,
        urgency=rejected.urgency, facts=facts, from_agency_id=rejected.from_agency_id, is_lead=rejected.is_lead,
        decision=decision, actor=SYSTEM, at=at, screening_id=rejected.screening_id, previous=rejected,
        escalation_reason=REJECTED_NO_ALTERNATIVE, accept_by=accept_by)


async def assign_from_queue(session: AsyncSession, policy: Policy, ref: ReferralRow, decision: RoutingDecision,
                            at: datetime) -> None:
    """The system assigns a queued referral once routing finds a service (e.g. consent was given)."""
    service = decision.service
    clock, due_at = policy.clock(Status.REQUESTED, ref.need_code, at)
    await conditional_update(session, ref, {
        "to_agency_id": service.agency_id, "to_agency_type": service.agency_type, "to_service_id": service.service_id,
        "routing": decision.explanation(), "routing_reasons": list(decision.reasons), "escalation_reason": None,
        "clock": clock, "due_at": due_at, "clock_fired_at": None, "updated_at": at})
    await add_history(session, ref, "reassign", ref.status, SYSTEM, at, to_agency_id=service.agency_id)
    await publish(session, ref, events.REFERRAL_REASSIGNED, SYSTEM, at)


async def add_note(session: AsyncSession, referral_id: str, principal: Principal, text: str,
                   at: datetime | None = None, *, keyring: Keyring) -> HistoryRow:
    """A progress note: the text stays here, sealed with the person's key; the event carries ids only."""
    at = at or now_utc()
    ref = await visible_referral(session, referral_id, principal)
    actor = Actor.of(principal)
    row = await add_history(session, ref, "note", ref.status, actor, at, keyring=keyring, note=text)
    await publish(session, ref, events.REFERRAL_NOTE_ADDED, actor, at)
    return row


def eligible_problem(service, need_code: str, facts: CaseFacts) -> str | None:
    if need_code not in service.need_codes:
        return f"does not serve {need_code}"
    why = ineligibility(service, need_code, facts)
    return why[1] if why else None
