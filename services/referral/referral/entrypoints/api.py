"""Referral inbox API: referrals to and from the caller's agency (the coordinator: its jurisdiction's
queue and escalations), the lifecycle actions, history, notes, manual referrals, holds and KPIs."""

import statistics
import uuid
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import and_, func, or_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased
from sqlmodel import col, select

from enlace_platform import firewall
from enlace_platform.access import Allowed, Permission
from enlace_platform.audit import Purpose, note_objects
from enlace_platform.auth import Principal
from enlace_platform.crypto import Keyring
from enlace_platform.idempotency import Idempotency
from enlace_platform.limits import MAX_INT, Id, IdPath, IdQuery
from enlace_platform.problems import Problem, ProblemDetails
from enlace_platform.runtime import DbSession
from enlace_platform.timeutil import as_utc
from referral.adapters.orm import HistoryRow, HoldRow, ReferralRow
from referral.domain.codes import (
    AGE_BANDS, COORDINATOR, HOLD_BEARING_NEEDS, NEED_CODES, OUTCOME_CODES, REASON_CODES, URGENCIES,
)
from referral.domain.consent import withheld_from_receiver
from referral.domain.lifecycle import OPEN, TERMINAL, Action, Role, Status, allowed_actions
from referral.domain.routing import route
from referral.adapters.directory import load_directory, withdrawn_agency_types
from referral.entrypoints.directory_api import LanguageCode
from referral.service_layer.referrals import (
    Actor, Command, Policy, act, active_hold, agency_roles, add_note, decide_route, eligible_problem, facts_for,
    now_utc, open_referral, open_referral_for, referable_person, release_hold_by_coordinator, roles_of,
    visible_referral,
)
from referral.service_layer.sealing import HistoryText, open_history_text

router = APIRouter(tags=["referrals"], dependencies=[Purpose("protection_referral")])

# Each route declares the one permission its caller's roles must grant (enlace_platform.access).
ReferralReader = Annotated[Principal, Allowed(Permission.READ_REFERRALS)]
ReferralActor = Annotated[Principal, Allowed(Permission.ACT_ON_REFERRALS)]
Coordinator = Annotated[Principal, Allowed(Permission.COORDINATE)]
KpiReader = Annotated[Principal, Allowed(Permission.READ_KPIS)]

NeedCode = Literal[tuple(sorted(NEED_CODES))]
StatusCode = Literal[tuple(s.value for s in Status)]
OPEN_VALUES = [s.value for s in OPEN]

# Every field the information barrier may withhold says so (docs/security.md, "The information barrier").
WITHHELD = "null when withheld by the information barrier (docs/security.md)"

ACTION_ERRORS = {
    403: {"model": ProblemDetails, "description": "Your agency's role on this referral does not allow the action, "
                                                  "or an enforcement agency tried to cancel a protection referral"},
    409: {"model": ProblemDetails, "description": "Not allowed from the current status (names `current_status` "
                                                  "and `allowed_actions`), or lost a race with another user"},
}


def _policy(request: Request) -> Policy:
    return Policy.from_settings(request.app.state.runtime.settings)


def _keyring(request: Request) -> Keyring:
    return request.app.state.runtime.keyring


class Exclusion(BaseModel):
    service_id: str
    agency_id: str
    code: str = Field(description="OTHER_AREA, INACTIVE, ALREADY_REJECTED, NO_CAPACITY, AGE, LANGUAGE or CONSENT")
    detail: str


class Routing(BaseModel):
    need_code: str
    chosen_service_id: str | None
    chosen_agency_id: str | None
    chosen_because: str | None
    escalation_reason: str | None
    excluded: list[Exclusion]


class ReferralOut(BaseModel):
    id: str
    case_id: str
    person_id: str
    need_code: str | None = Field(description=WITHHELD)
    urgency: str | None = Field(description=WITHHELD)
    status: str
    version: int | None = Field(description=f"Send it back as expected_version to act only on what you saw; "
                                            f"{WITHHELD}")
    is_lead: bool | None = Field(description=WITHHELD)
    jurisdiction: str
    from_agency_id: str
    to_agency_id: str | None = Field(description=f"null while in the coordinator's queue; {WITHHELD}")
    to_agency_type: str | None = Field(description=WITHHELD)
    to_service_id: str | None = Field(description=WITHHELD)
    coordinator_agency_id: str
    previous_referral_id: str | None = Field(description=WITHHELD)
    next_referral_id: str | None = Field(description="The referral this one was routed onward to after a rejection; "
                                                     f"{WITHHELD}")
    routing: Routing | None = Field(description=WITHHELD)
    routing_reasons: list[str] | None = Field(description=WITHHELD)
    escalation_reason: str | None = Field(description=f"Why the coordinator must act, while it must; {WITHHELD}")
    clock: str | None = Field(description=WITHHELD)
    due_at: datetime | None = Field(description=WITHHELD)
    overdue: bool | None = Field(description=WITHHELD)
    reason_code: str | None = Field(description=WITHHELD)
    outcome_code: str | None = Field(description=f"{WITHHELD}; an enforcement agency sees only the public outcomes")
    created_at: datetime
    updated_at: datetime | None = Field(description=WITHHELD)
    accepted_at: datetime | None = Field(description=WITHHELD)
    closed_at: datetime | None
    hold_active: bool = Field(description="A protection hold is active for this person and need: no removal")
    allowed_actions: list[str] = Field(description="What your agency may do now")


class ReferralPage(BaseModel):
    items: list[ReferralOut]
    total: int
    limit: int
    offset: int


class ManualReferralIn(BaseModel):
    case_id: uuid.UUID
    person_id: uuid.UUID
    need_code: NeedCode
    urgency: Literal[tuple(sorted(URGENCIES))] = "standard"
    age_band: Literal[tuple(sorted(AGE_BANDS))]
    languages: list[LanguageCode] = Field([], max_length=20)
    to_service_id: Id | None = Field(None, description="A service of your jurisdiction; routed when absent")


class ActionIn(BaseModel):
    action: Literal[tuple(a.value for a in Action)]
    reason_code: Literal[tuple(sorted(REASON_CODES))] | None = Field(None, description="reject, cancel, fail")
    reason_text: str | None = Field(None, max_length=2000, description="Stays in this service; never in events")
    outcome_code: Literal[tuple(sorted(OUTCOME_CODES))] | None = Field(None, description="complete")
    to_service_id: Id | None = Field(None, description="reassign: the service that takes it")
    expected_version: int | None = Field(None, ge=0, le=MAX_INT,
                                         description="409 if the referral changed since you read it")


class NoteIn(BaseModel):
    text: str = Field(min_length=1, max_length=4000)


class HistoryOut(BaseModel):
    seq: int | None = Field(description=WITHHELD)
    at: datetime
    action: str
    from_status: str | None
    to_status: str
    actor_agency_id: str | None = Field(description=f"null: the system; {WITHHELD}")
    actor_subject: str | None = Field(description=WITHHELD)
    reason_code: str | None = Field(description=WITHHELD)
    reason_text: str | None = Field(description=f"Free text, only ever in this service; null once erased; {WITHHELD}")
    outcome_code: str | None = Field(description=WITHHELD)
    note: str | None = Field(description=f"Free text, only ever in this service; null once erased; {WITHHELD}")
    to_agency_id: str | None = Field(description=WITHHELD)
    text_erased: bool | None = Field(description="The person was erased (person.erased.v1): this row's free text is "
                                                 f"gone for good; its codes remain; {WITHHELD}")
    text_withheld: bool | None = Field(False, description="This row has free text, but your agency, the receiver, "
                                                          "may no longer read it: the person withdrew their consent "
                                                          f"to share with your agency type; {WITHHELD}")


class HoldOut(BaseModel):
    id: str
    case_id: str
    person_id: str
    need_code: str | None = Field(description=WITHHELD)
    referral_id: str
    from_agency_id: str
    to_agency_id: str | None = Field(description=WITHHELD)
    placed_at: datetime
    not_before: datetime | None = Field(description=WITHHELD)
    active: bool
    open_referral_id: str | None = Field(description="The open referral for this person and need; null when none "
                                                     "is open (an active hold without one awaits the coordinator)")
    released_at: datetime | None
    release_reason: str | None = Field(description=WITHHELD)
    released_by_referral_id: str | None = Field(description=WITHHELD)
    outcome_code: str | None = Field(description=WITHHELD)


class Kpis(BaseModel):
    scope: str = Field(description="agency:<id>, or jurisdiction:<cc> for a coordinator")
    total: int
    by_status: dict[str, int]
    median_time_to_accept_s: float | None
    overdue: int
    closed_loop_share: float | None = Field(description="Completed with an outcome / referrals that ended; a rejection "
                                                        "routed onward counts through its successor")


def _is_overdue(ref: ReferralRow, now: datetime) -> bool:
    return ref.status in OPEN_VALUES and ref.due_at is not None and as_utc(ref.due_at) <= now


def _viewer(principal: Principal, ref: ReferralRow) -> firewall.Viewer:
    return firewall.viewer_in(principal, agency_roles(principal, ref))


def _cancel_barred(viewer: firewall.Viewer, ref: ReferralRow) -> bool:
    """A removal authority may not withdraw a protection referral: cancelling one ends the work that keeps a hold
    (or a survivor's care). Decided only on what it may see (a withheld need is a sensitive one), so the refusal
    tells it nothing new."""
    return viewer is firewall.Viewer.ENFORCEMENT and (
        ref.need_code in firewall.SENSITIVE_NEEDS or ref.need_code in HOLD_BEARING_NEEDS)


async def render(session, ref: ReferralRow, principal: Principal) -> ReferralOut:
    """The referral as the caller's agency may see it (enlace_platform.firewall)."""
    viewer = _viewer(principal, ref)
    nxt = (await session.exec(select(ReferralRow.id).where(ReferralRow.previous_referral_id == ref.id))).first()
    actions = [str(a) for a in allowed_actions(Status(ref.status), roles_of(principal, ref),
                                               has_receiver=ref.to_agency_id is not None)]
    if _cancel_barred(viewer, ref):
        actions = [a for a in actions if a != Action.CANCEL]
    record = {**ref.model_dump(exclude={"open_key", "age_band", "languages", "screening_id", "clock_fired_at"}),
              "next_referral_id": nxt, "overdue": _is_overdue(ref, now_utc()), "allowed_actions": actions,
              "hold_active": await active_hold(session, ref.person_id, ref.need_code) is not None}
    return ReferralOut(**firewall.project("referral", record, viewer, need_code=ref.need_code))


def _visible(principal: Principal, direction: str | None):
    mine_to = ReferralRow.to_agency_id == principal.agency_id
    mine_from = ReferralRow.from_agency_id == principal.agency_id
    if principal.agency_type == COORDINATOR:
        in_jurisdiction = ReferralRow.jurisdiction == principal.jurisdiction
        queue = and_(in_jurisdiction, col(ReferralRow.to_agency_id).is_(None))
        escalated = and_(in_jurisdiction, col(ReferralRow.escalation_reason).is_not(None))
        options = {"to": mine_to, "from": mine_from, "queue": queue, "escalated": escalated,
                   "jurisdiction": in_jurisdiction, None: or_(mine_to, mine_from, queue, escalated)}
    else:
        options = {"to": mine_to, "from": mine_from, None: or_(mine_to, mine_from)}
    if direction not in options:
        raise Problem(422, detail=f"direction {direction!r} is not available to your agency; use one of "
                                  f"{sorted(k for k in options if k)}",
                      errors=[{"path": "query/direction", "message": "not available"}])
    if firewall.viewer_for(principal) is firewall.Viewer.ENFORCEMENT:
        # A referral of a sensitive need is not shown at all unless the caller does its protection work.
        shown = or_(col(ReferralRow.need_code).not_in(firewall.SENSITIVE_NEEDS), _protection_part(principal))
        return and_(options[direction], shown)
    return options[direction]


def _protection_part(principal: Principal):
    """Referrals the caller's agency sees whole: those it receives, and its jurisdiction's as coordinator."""
    received = and_(col(ReferralRow.to_agency_id).is_not(None), ReferralRow.to_agency_id == principal.agency_id)
    if principal.agency_type == COORDINATOR:
        return or_(received, ReferralRow.jurisdiction == principal.jurisdiction)
    return received


def _seen(principal: Principal, field: str, condition, *, need_code: str | None = None):
    """A filter on a field the barrier may withhold matches only referrals whose field the caller sees: a
    referral whose field is withheld never matches, whatever its value, so the filter is no oracle."""
    if firewall.viewer_for(principal) is firewall.Viewer.PROTECTION:
        return condition
    if firewall.visible("referral", field, firewall.Viewer.ENFORCEMENT, need_code=need_code):
        return condition
    return and_(condition, _protection_part(principal))


@router.get("/referrals", response_model=ReferralPage, summary="Referrals sent to or from your agency")
async def list_referrals(
    request: Request,
    principal: ReferralReader,
    session: DbSession,
    status: StatusCode | None = None,
    need_code: NeedCode | None = None,
    overdue: bool | None = Query(None, description="true: a running deadline has passed"),
    direction: Literal["to", "from", "queue", "escalated", "jurisdiction"] | None = Query(
        None, description="to / from your agency; coordinator also: queue, escalated, jurisdiction"),
    case_id: IdQuery = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
) -> ReferralPage:
    # Every filter goes through the barrier (_seen): status and case_id are always visible, need_code only when not
    # sensitive, overdue never; direction and paging only name the caller's own part.
    conditions = [_visible(principal, direction)]
    if status:
        conditions.append(_seen(principal, "status", ReferralRow.status == status))
    if need_code:
        conditions.append(_seen(principal, "need_code", ReferralRow.need_code == need_code, need_code=need_code))
    if case_id:
        conditions.append(_seen(principal, "case_id", ReferralRow.case_id == case_id))
    if overdue is not None:
        late = and_(col(ReferralRow.status).in_(OPEN_VALUES), col(ReferralRow.due_at).is_not(None),
                    col(ReferralRow.due_at) <= now_utc())
        conditions.append(_seen(principal, "overdue", late if overdue else ~late))
    total = (await session.exec(select(func.count()).select_from(ReferralRow).where(*conditions))).one()
    rows = (await session.exec(select(ReferralRow).where(*conditions)
                               .order_by(ReferralRow.created_at, ReferralRow.id).offset(offset).limit(limit))).all()
    note_objects(request, "referral", [r.id for r in rows])
    return ReferralPage(items=[await render(session, r, principal) for r in rows], total=total, limit=limit,
                        offset=offset)


@router.post("/referrals", status_code=201, response_model=ReferralOut,
             responses={404: {"model": ProblemDetails, "description": "No such person in that case among those your "
                                                                      "agency may refer: the same answer whether the "
                                                                      "person is unknown here or not yours to refer"},
                        409: {"model": ProblemDetails, "description": "An open referral for this person and need "
                                                                      "exists"}},
             summary="A manual referral by a caseworker of your agency, sent from your agency, for a person whose "
                     "case intake registered: by the case's registering agency, an agency working on an accepted "
                     "referral for the person, or the coordinator of the case's jurisdiction; never across borders")
async def create_referral(body: ManualReferralIn, request: Request, principal: ReferralActor, session: DbSession,
                          idempotency: Idempotency) -> ReferralOut:
    previous = await idempotency.previous_resource(session)
    if previous is not None:
        note_objects(request, "referral", [previous])
        return await render(session, await visible_referral(session, previous, principal), principal)
    if firewall.viewer_for(principal) is firewall.Viewer.ENFORCEMENT and body.need_code in firewall.SENSITIVE_NEEDS:
        # Decided on the request alone: a 409 for an open referral would tell it a sensitive need is in hand.
        raise Problem(403, detail=f"An enforcement agency refers {body.need_code} through a screening at intake, "
                                  "not by hand (docs/security.md, The information barrier).")
    person_id, case_id = str(body.person_id), str(body.case_id)
    case = await referable_person(session, principal, case_id, person_id)
    existing = await open_referral_for(session, person_id, body.need_code)
    if existing is not None:
        raise Problem(409, detail=f"Person already has an open referral for {body.need_code}.",
                      existing_referral_id=existing.id if agency_roles(principal, existing) else None)
    facts = await facts_for(session, case.jurisdiction, body.age_band, body.languages, person_id)
    if body.to_service_id:
        directory = {s.service_id: s for s in await load_directory(session, case.jurisdiction)}
        service = directory.get(body.to_service_id)
        why = "not a service of your jurisdiction" if service is None else eligible_problem(service, body.need_code, facts)
        if why:
            raise Problem(422, detail=f"{body.to_service_id} cannot take this referral: {why}",
                          errors=[{"path": "body/to_service_id", "message": why}])
        decision = route(body.need_code, facts, [service])  # the caseworker's choice, explained
    else:
        decision = await decide_route(session, body.need_code, facts)
    new_id = str(uuid.uuid4())
    idempotency.record(session, resource_id=new_id)
    note_objects(request, "referral", [new_id])
    try:
        ref = await open_referral(
            session, _policy(request), case_id=case_id, person_id=person_id, need_code=body.need_code,
            urgency=body.urgency, facts=facts, from_agency_id=principal.agency_id,
            decision=decision, actor=Actor.of(principal),
            at=now_utc(), referral_id=new_id)
        await session.commit()
    except IntegrityError:  # a concurrent screening or request opened the same (person, need) first
        await session.rollback()
        raise Problem(409, detail=f"Person already has an open referral for {body.need_code}.") from None
    return await render(session, ref, principal)


@router.get("/referrals/{referral_id}", response_model=ReferralOut, summary="One referral, with its routing reasons")
async def read_referral(referral_id: IdPath, principal: ReferralReader, session: DbSession) -> ReferralOut:
    return await render(session, await visible_referral(session, referral_id, principal), principal)


@router.post("/referrals/{referral_id}/actions", response_model=ReferralOut, responses=ACTION_ERRORS,
             summary="Act on a referral: receive, accept, reject, start, hold, resume, complete, fail "
                     "(receiving agency); cancel (sending agency or coordinator); reassign (coordinator)")
async def act_on_referral(referral_id: IdPath, body: ActionIn, request: Request, principal: ReferralActor,
                          session: DbSession) -> ReferralOut:
    command = Command(action=Action(body.action), reason_code=body.reason_code, reason_text=body.reason_text,
                      outcome_code=body.outcome_code, to_service_id=body.to_service_id,
                      expected_version=body.expected_version)
    if command.action == Action.CANCEL:
        seen = await visible_referral(session, referral_id, principal)
        if _cancel_barred(_viewer(principal, seen), seen):
            raise Problem(403, detail="An enforcement agency may not cancel a protection referral; ask the "
                                      "coordinator of its jurisdiction.")
    ref = await act(session, _policy(request), referral_id, principal, command, keyring=_keyring(request))
    await session.commit()
    return await render(session, ref, principal)


@router.get("/referrals/{referral_id}/history", response_model=list[HistoryOut],
            summary="The referral's full, ordered history: who did what, when, and why")
async def referral_history(referral_id: IdPath, request: Request, principal: ReferralReader,
                           session: DbSession) -> list[HistoryOut]:
    ref = await visible_referral(session, referral_id, principal)
    rows = list((await session.exec(select(HistoryRow).where(HistoryRow.referral_id == referral_id)
                                    .order_by(HistoryRow.seq))).all())
    viewer = _viewer(principal, ref)
    if viewer is firewall.Viewer.ENFORCEMENT:
        # Only status changes and what its agency wrote; nobody else's text is even opened.
        own = [firewall.is_own_record(row.action, row.actor_agency_id, principal.agency_id) for row in rows]
        shown = [(row, mine) for row, mine in zip(rows, own, strict=True)
                 if firewall.history_row_visible(row.action, viewer, own=mine)]
        texts = iter(await open_history_text(session, _keyring(request), ref.person_id,
                                             [row for row, mine in shown if mine]))
        return [_history_out(row, next(texts) if mine else HistoryText(None, None, row.text_erased),
                             viewer=viewer, need_code=ref.need_code, own=mine) for row, mine in shown]
    if agency_roles(principal, ref) == {Role.RECEIVER} and withheld_from_receiver(
            ref.need_code, ref.to_agency_type, await withdrawn_agency_types(session, ref.person_id)):
        # Nothing of the person is even opened.
        return [_history_out(row, HistoryText(None, None, row.text_erased, text_withheld=_has_text(row)))
                for row in rows]
    texts = await open_history_text(session, _keyring(request), ref.person_id, rows)
    return [_history_out(row, text) for row, text in zip(rows, texts, strict=True)]


def _has_text(row: HistoryRow) -> bool:
    return row.reason_text is not None or row.note is not None


def _history_out(row: HistoryRow, text: HistoryText, *, viewer: firewall.Viewer = firewall.Viewer.PROTECTION,
                 need_code: str | None = None, own: bool = False) -> HistoryOut:
    record = {**row.model_dump(exclude={"id", "referral_id", "text_sealed"}), "reason_text": text.reason_text,
              "note": text.note, "text_erased": text.text_erased, "text_withheld": text.text_withheld}
    return HistoryOut(**firewall.project("history", record, viewer, need_code=need_code, own=own))


@router.post("/referrals/{referral_id}/notes", status_code=201, response_model=HistoryOut,
             summary="An interim progress note (the text stays here, sealed with the person's key; the event "
                     "carries ids only)")
async def add_referral_note(referral_id: IdPath, body: NoteIn, request: Request, principal: ReferralActor,
                            session: DbSession, idempotency: Idempotency) -> HistoryOut:
    previous = await idempotency.previous_resource(session)
    if previous is not None:  # a retry: the note the key added, not a second one
        ref = await visible_referral(session, referral_id, principal)
        row = (await session.exec(select(HistoryRow).where(HistoryRow.id == previous,
                                                          HistoryRow.referral_id == ref.id))).one()
        [text] = await open_history_text(session, _keyring(request), ref.person_id, [row])
        return _history_out(row, text, viewer=_viewer(principal, ref), need_code=ref.need_code, own=True)
    row = await add_note(session, referral_id, principal, body.text, keyring=_keyring(request))
    idempotency.record(session, resource_id=row.id)
    await session.commit()
    ref = await visible_referral(session, referral_id, principal)
    # The caller's own note: an enforcement agency sees what it wrote, not where the referral stands.
    return _history_out(row, HistoryText(None, body.text, False), viewer=_viewer(principal, ref),
                        need_code=ref.need_code, own=True)


def _hold_received(principal: Principal):
    """The caller's agency does the protection work on the hold: it received a referral of the need (also an onward
    one), or coordinates its jurisdiction."""
    received = select(ReferralRow.id).where(ReferralRow.person_id == HoldRow.person_id,
                                            ReferralRow.need_code == HoldRow.need_code,
                                            ReferralRow.to_agency_id == principal.agency_id).exists()
    received = or_(HoldRow.to_agency_id == principal.agency_id, received)
    if principal.agency_type == COORDINATOR:
        return or_(received, HoldRow.jurisdiction == principal.jurisdiction)
    return received


def _hold_visible(principal: Principal):
    return or_(HoldRow.from_agency_id == principal.agency_id, _hold_received(principal))


def _hold_out(hold: HoldRow, open_referral_id: str | None, viewer: firewall.Viewer) -> HoldOut:
    record = {**hold.model_dump(exclude={"jurisdiction", "active_key"}), "active": hold.released_at is None,
              "open_referral_id": open_referral_id}
    return HoldOut(**firewall.project("hold", record, viewer, need_code=hold.need_code))


@router.get("/holds", response_model=list[HoldOut], summary="Protection holds of your referrals "
                                                           "(coordinator: its jurisdiction)")
async def list_holds(request: Request, principal: ReferralReader, session: DbSession, case_id: IdQuery = None,
                     person_id: IdQuery = None, active: bool | None = None,
                     open_referral: bool | None = Query(None, description="false: holds whose need has no open "
                                                        "referral (e.g. the sender cancelled it)")) -> list[HoldOut]:
    open_ref = aliased(ReferralRow)
    query = select(HoldRow, open_ref.id, _hold_received(principal)) \
        .outerjoin(open_ref, open_ref.open_key == HoldRow.active_key).where(_hold_visible(principal))
    if open_referral is not None:
        query = query.where(open_ref.id.is_not(None) if open_referral else open_ref.id.is_(None))
    if case_id:
        query = query.where(HoldRow.case_id == case_id)
    if person_id:
        query = query.where(HoldRow.person_id == person_id)
    if active is not None:
        query = query.where(col(HoldRow.released_at).is_(None) if active else col(HoldRow.released_at).is_not(None))
    rows = (await session.exec(query.order_by(HoldRow.placed_at))).all()
    note_objects(request, "hold", [hold.id for hold, _, _ in rows])
    # Filters here are on fields always visible (case, person, active, open referral): none is an oracle.
    return [_hold_out(hold, open_id, firewall.Viewer.PROTECTION if received else firewall.viewer_for(principal))
            for hold, open_id, received in rows]


@router.post("/holds/{hold_id}/release", response_model=HoldOut,
             responses={409: {"model": ProblemDetails, "description": "Already released, a referral for the need "
                                                                       "is still open, or the reflection period runs"}},
             summary="Release a hold whose need has no open referral left (coordinator of its jurisdiction)")
async def release_hold(hold_id: IdPath, principal: Coordinator, session: DbSession) -> HoldOut:
    hold = await release_hold_by_coordinator(session, hold_id, principal)
    await session.commit()
    return _hold_out(hold, None, firewall.Viewer.PROTECTION)  # the coordinator sees it all


@router.get("/kpis", response_model=Kpis, summary="Your agency's referral KPIs (coordinator: its jurisdiction)")
async def kpis(principal: KpiReader, session: DbSession) -> Kpis:
    if principal.agency_type == COORDINATOR:
        scope, condition = f"jurisdiction:{principal.jurisdiction}", ReferralRow.jurisdiction == principal.jurisdiction
    else:
        scope = f"agency:{principal.agency_id}"
        condition = or_(ReferralRow.to_agency_id == principal.agency_id,
                        ReferralRow.from_agency_id == principal.agency_id)
    rows = [r for r in (await session.exec(select(ReferralRow).where(condition))).all()
            if firewall.referral_shown(_viewer(principal, r), r.need_code)]  # counts only what it is shown
    succeeded = {r.previous_referral_id for r in rows if r.previous_referral_id}
    now = now_utc()
    by_status = {s.value: 0 for s in Status}
    for r in rows:
        by_status[r.status] += 1

    def seen(r: ReferralRow, field: str) -> bool:  # a figure counts a referral only by what the barrier shows
        return firewall.visible("referral", field, _viewer(principal, r), need_code=r.need_code)
    waits = [(as_utc(r.accepted_at) - as_utc(r.created_at)).total_seconds() for r in rows
             if r.accepted_at and seen(r, "accepted_at")]
    ended = [r for r in rows if r.status in {s.value for s in TERMINAL} and r.id not in succeeded]
    closed = [r for r in ended if r.status == Status.COMPLETED and r.outcome_code]
    return Kpis(scope=scope, total=len(rows), by_status=by_status,
                median_time_to_accept_s=statistics.median(waits) if waits else None,
                overdue=sum(_is_overdue(r, now) and seen(r, "overdue") for r in rows),
                closed_loop_share=len(closed) / len(ended) if ended else None)
