"""Intake use cases. Each runs in one transaction: the business rows and their events commit together."""

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import func, or_, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from enlace_platform import firewall
from enlace_platform.access import Permission, check, may
from enlace_platform.audit import answer_status
from enlace_platform.auth import Principal
from enlace_platform.crypto import Erased
from enlace_platform.outbox import add_event
from enlace_platform.timeutil import as_utc
from intake.adapters.orm import (
    CaseRow, ConsentRow, PersonDocumentRow, PersonRow, PersonVersionRow, ProtectionHoldRow, ReferralViewRow,
    RelationshipRow, RemovalOrderRow, ScreeningRow, SearchTokenRow,
)
from intake.adapters.vault import Document, PersonRecord, Vault, open_person_with
from intake.domain import consent as consent_rules
from intake.domain import events
from intake.domain.encounter import Relationship, person_facts, treated_as_child
from intake.domain.safeguard import ACTIVE, HoldState, pending_holds, referral_is_open
from intake.domain.screening import PersonFacts, ScreeningAnswers, age_band, current_rules, evaluate, facts_of


class NotFound(Exception):
    pass


class Refused(Exception):
    """The request is valid but the domain says no (e.g. an override for an adult)."""


class WithdrawalRefused(Exception):
    """An enforcement agency may not record a withdrawal that would cancel protection referrals."""


class Gone(Exception):
    """The person was erased: their data no longer exists in readable form."""

    def __init__(self, person: PersonRow) -> None:
        super().__init__(f"person {person.id} was erased")
        self.person_id, self.erased_at = person.id, person.erased_at


class ErasureBlocked(Exception):
    def __init__(self, holds: list[ProtectionHoldRow], pending: list[str], referrals: list[ReferralViewRow]) -> None:
        super().__init__(f"{len(holds)} active hold(s), {len(pending)} pending, {len(referrals)} open referral(s)")
        self.holds, self.pending, self.referrals = holds, pending, referrals


class RemovalBlocked(Exception):
    def __init__(self, order: RemovalOrderRow, holds: list[ProtectionHoldRow], *,
                 pending: list[str] = (), screening: "ScreeningRow | None" = None) -> None:
        super().__init__(f"{len(holds)} active protection hold(s), {len(pending)} pending")
        self.order, self.holds, self.pending, self.screening = order, holds, list(pending), screening


PERSON_FIELDS = ("given_names", "family_names", "sex", "date_of_birth", "estimated_age", "age_disputed",
                 "nationality", "languages")


def _today() -> date:
    return datetime.now(UTC).date()


def _snapshot(record: PersonRecord) -> dict[str, Any]:
    data = {f: getattr(record, f) for f in PERSON_FIELDS}
    data["date_of_birth"] = record.date_of_birth.isoformat() if record.date_of_birth else None
    data["documents"] = [asdict(d) for d in record.documents]
    return data


# --- encounters ------------------------------------------------------------------------------

@dataclass
class PersonView:
    """A person's row and their opened record; record is None once they are erased."""

    row: PersonRow
    record: PersonRecord | None


def _touch(case: CaseRow, at: datetime | None = None) -> None:
    case.last_activity_at = at or datetime.now(UTC)


async def register_case(session: AsyncSession, vault: Vault, principal: Principal, case: CaseRow,
                        persons: list[tuple[PersonRow, PersonRecord]], *,
                        relationships: Iterable[RelationshipRow] = ()) -> CaseRow:
    """Register an encounter: each person's record is sealed with their own new key."""
    case.agency_id = principal.agency_id
    case.jurisdiction = principal.jurisdiction
    _touch(case)
    session.add(case)
    documents = {}
    for position, (person, record) in enumerate(persons):
        person.case_id = case.id
        person.position = position
        documents[person.id] = await vault.seal_person(session, person, record, new=True)
        session.add(person)
    await session.flush()  # persons exist before their documents and relationships refer to them
    for person, record in persons:
        session.add_all(documents[person.id])
        await vault.index(session, person, record, new=True)
        version = PersonVersionRow(person_id=person.id, version=1, snapshot=None, changed_fields=[],
                                   changed_by=principal.subject, changed_by_agency_id=principal.agency_id)
        await vault.seal_snapshot(session, version, _snapshot(record))
        session.add(version)
    for rel in relationships:
        rel.case_id = case.id
        session.add(rel)
    add_event(session, topic=events.TOPIC, case_id=case.id, event_type=events.CASE_REGISTERED,
              source=events.SOURCE, subject=case.id,
              data={"case_id": case.id, "agency_id": case.agency_id, "jurisdiction": case.jurisdiction,
                    "person_ids": [p.id for p, _ in persons],
                    "encountered_at": case.encountered_at.isoformat()})
    await session.commit()
    return case


async def get_case_for(session: AsyncSession, principal: Principal, case_id: str) -> CaseRow:
    case = await session.get(CaseRow, case_id)
    # Another agency's case is indistinguishable from a missing one.
    if case is None or case.agency_id != principal.agency_id:
        raise NotFound(case_id)
    return case


async def _person_in(session: AsyncSession, case: CaseRow, person_id: str, *, erased_ok: bool = False) -> PersonRow:
    person = await session.get(PersonRow, person_id)
    if person is None or person.case_id != case.id:
        raise NotFound(person_id)
    if person.erased_at is not None and not erased_ok:
        raise Gone(person)
    return person


async def person_rows_of(session: AsyncSession, case_id: str) -> list[PersonRow]:
    query = select(PersonRow).where(PersonRow.case_id == case_id).order_by(PersonRow.position)
    return list((await session.exec(query)).all())


async def _documents_of(session: AsyncSession, person_id: str) -> list[PersonDocumentRow]:
    query = select(PersonDocumentRow).where(PersonDocumentRow.person_id == person_id) \
        .order_by(PersonDocumentRow.position)
    return list((await session.exec(query)).all())


async def _documents_of_persons(session: AsyncSession, person_ids: list[str]) -> dict[str, list[PersonDocumentRow]]:
    query = select(PersonDocumentRow).where(col(PersonDocumentRow.person_id).in_(person_ids)) \
        .order_by(PersonDocumentRow.person_id, PersonDocumentRow.position)
    documents: dict[str, list[PersonDocumentRow]] = {p: [] for p in person_ids}
    for row in (await session.exec(query)).all():
        documents[row.person_id].append(row)
    return documents


async def open_person(session: AsyncSession, vault: Vault, person: PersonRow) -> PersonRecord | None:
    """The person's record, or None once they are erased."""
    if person.erased_at is not None:
        return None
    try:
        return await vault.open_person(session, person, await _documents_of(session, person.id))
    except Erased:
        return None  # shredded but erased_at not seen yet: as good as erased


async def persons_of(session: AsyncSession, vault: Vault, case_id: str) -> list[PersonView]:
    """The case's persons, opened: three queries (persons, their documents, their keys) whatever their number."""
    rows = await person_rows_of(session, case_id)
    live = [p.id for p in rows if p.erased_at is None]
    if not live:
        return [PersonView(p, None) for p in rows]
    documents = await _documents_of_persons(session, live)
    openers = await vault.openers(session, live)
    views = []
    for person in rows:
        opener = openers.get(person.id)  # None: erased, or shredded but erased_at not seen yet
        views.append(PersonView(person, None if opener is None else open_person_with(opener, person,
                                                                                      documents[person.id])))
    return views


async def relationships_of(session: AsyncSession, case_id: str) -> list[RelationshipRow]:
    return list((await session.exec(select(RelationshipRow).where(RelationshipRow.case_id == case_id))).all())


# A referral whose sender was not entitled to refer the person (by intake's own records, see handlers.py) is
# kept on record but counts for nothing: no read, no hold that blocks a removal or an erasure, not in the case
# view. Referrals recorded before intake kept senders (sender_entitled None) still hold the person.
def _counts():
    return or_(col(ReferralViewRow.sender_entitled).is_(None), ReferralViewRow.sender_entitled == True)  # noqa: E712


def _hold_counts():
    unentitled = select(ReferralViewRow.referral_id).where(ReferralViewRow.sender_entitled == False)  # noqa: E712
    return or_(col(ProtectionHoldRow.referral_id).is_(None), col(ProtectionHoldRow.referral_id).not_in(unentitled))


async def holds_of(session: AsyncSession, case_id: str) -> list[ProtectionHoldRow]:
    query = select(ProtectionHoldRow).where(ProtectionHoldRow.case_id == case_id, _hold_counts()) \
        .order_by(ProtectionHoldRow.hold_id)
    return list((await session.exec(query)).all())


async def referrals_of(session: AsyncSession, case_id: str, principal: Principal) -> list[ReferralViewRow]:
    query = select(ReferralViewRow).where(ReferralViewRow.case_id == case_id, _counts()) \
        .order_by(ReferralViewRow.occurred_at)
    return referrals_shown_to(principal, (await session.exec(query)).all())


def referrals_shown_to(principal: Principal, referrals: Iterable[ReferralViewRow]) -> list[ReferralViewRow]:
    """The information barrier: an enforcement agency is told only of the referrals it sent itself, never that
    a protection agency refers the person (a referral recorded before intake kept its sender is withheld too),
    and of no referral of a sensitive need, its own included (firewall.referral_shown). Holds are not filtered:
    a hold is what stops a removal."""
    viewer = firewall.viewer_for(principal)
    if viewer is firewall.Viewer.PROTECTION:
        return list(referrals)
    return [r for r in referrals if r.from_agency_id is not None and r.from_agency_id == principal.agency_id
            and firewall.referral_shown(viewer, r.need_code)]


async def search_cases(session: AsyncSession, vault: Vault, principal: Principal, *, name: str | None,
                       document_number: str | None, limit: int) -> list[CaseRow]:
    """Only the caller's own cases: another agency's people are not searchable at all. Names match by whole
    words (every word given must be one of the person's), document numbers whole: the blind index."""
    query = select(CaseRow).where(CaseRow.agency_id == principal.agency_id)
    wanted: list[set[str]] = []
    if name:
        words = vault.name_tokens(name)
        if not words:
            return []
        wanted.append(set(words))
    if document_number:
        wanted.append({vault.document_token(document_number)})
    for tokens in wanted:
        # One person must hold every token of the term.
        matching = select(SearchTokenRow.person_id).where(col(SearchTokenRow.token).in_(tokens)) \
            .group_by(SearchTokenRow.person_id).having(func.count(func.distinct(SearchTokenRow.token)) == len(tokens))
        query = query.where(col(CaseRow.id).in_(
            select(PersonRow.case_id).where(col(PersonRow.id).in_(matching))))
    query = query.order_by(col(CaseRow.encountered_at).desc()).limit(limit)
    return list((await session.exec(query)).all())


async def person_for_reader(session: AsyncSession, vault: Vault, principal: Principal, case_id: str,
                            person_id: str) -> PersonView:
    """The registering agency always; a receiving agency only with an open referral about this person
    addressed to it from a sender entitled to refer them, and consent (or the child-protection override) for
    its agency type."""
    case = await session.get(CaseRow, case_id)
    person = await session.get(PersonRow, person_id)
    if case is None or person is None or person.case_id != case.id:
        raise NotFound(person_id)
    if case.agency_id != principal.agency_id and not await _receiver_may_read(session, principal, person):
        raise NotFound(person_id)
    record = await open_person(session, vault, person)
    if record is None:
        raise Gone(person)
    return PersonView(person, record)


async def _receiver_may_read(session: AsyncSession, principal: Principal, person: PersonRow) -> bool:
    # Only a referral whose sender intake found entitled to refer the person: not one made up elsewhere.
    query = select(ReferralViewRow).where(ReferralViewRow.case_id == person.case_id,
                                          ReferralViewRow.person_id == person.id,
                                          ReferralViewRow.to_agency_id == principal.agency_id,
                                          ReferralViewRow.sender_entitled == True)  # noqa: E712
    if not any(referral_is_open(r.status) for r in (await session.exec(query)).all()):
        return False
    return consent_rules.covers(await _active_grants(session, person.id),
                                agency_type=principal.agency_type, purpose="referral")


async def update_person(session: AsyncSession, vault: Vault, principal: Principal, case_id: str, person_id: str,
                        changes: dict[str, Any]) -> PersonView:
    """Apply the changes and keep the previous versions. ``documents`` in changes replaces the list."""
    case = await get_case_for(session, principal, case_id)
    person = await _person_in(session, case, person_id)
    old_docs = await _documents_of(session, person.id)
    record = await vault.open_person(session, person, old_docs)
    before = _snapshot(record)
    for name, value in changes.items():
        if name == "documents":
            value = [Document(**d) for d in value]
        setattr(record, name, value)
    after = _snapshot(record)
    changed = sorted(k for k in after if after[k] != before[k])
    if changed:
        for doc in old_docs:
            await session.delete(doc)
        await session.flush()
        session.add_all(await vault.seal_person(session, person, record))
        await vault.index(session, person, record)
        person.version += 1
        person.updated_at = datetime.now(UTC)
        _touch(case, person.updated_at)
        session.add_all([person, case])
        version = PersonVersionRow(person_id=person.id, version=person.version, snapshot=None,
                                   changed_fields=changed, changed_by=principal.subject,
                                   changed_by_agency_id=principal.agency_id)
        await vault.seal_snapshot(session, version, after)
        session.add(version)
    await session.commit()  # no refresh: every changed column was set here
    return PersonView(person, record)


@dataclass
class VersionView:
    row: PersonVersionRow
    snapshot: dict[str, Any]


async def person_history(session: AsyncSession, vault: Vault, principal: Principal, case_id: str,
                         person_id: str) -> list[VersionView]:
    case = await get_case_for(session, principal, case_id)
    person = await _person_in(session, case, person_id)
    query = select(PersonVersionRow).where(PersonVersionRow.person_id == person.id).order_by(PersonVersionRow.version)
    try:
        return [VersionView(v, await vault.open_snapshot(session, v)) for v in (await session.exec(query)).all()]
    except Erased:
        raise Gone(person) from None


# --- screening -------------------------------------------------------------------------------

async def facts_for(session: AsyncSession, vault: Vault, case: CaseRow, person: PersonRow,
                    record: PersonRecord, *, persons: list[PersonView] | None = None) -> PersonFacts:
    """``persons``: the case's persons when the caller has them already (persons_of)."""
    if persons is None:
        persons = await persons_of(session, vault, case.id)
    # A relationship links two persons of the case, registered with it: a person alone has none to read.
    relationships = [] if len(persons) < 2 else [Relationship(r.from_person_id, r.to_person_id, r.kind)
                                                 for r in await relationships_of(session, case.id)]
    today = _today()
    children = {v.row.id for v in persons if v.record is not None
                and treated_as_child(v.record.date_of_birth, v.record.estimated_age, v.record.age_disputed, today)}
    return person_facts(person_id=person.id, date_of_birth=record.date_of_birth, estimated_age=record.estimated_age,
                        age_disputed=record.age_disputed, nationality=record.nationality,
                        document_count=len(record.documents), relationships=relationships, today=today,
                        children=children)


@dataclass
class ScreeningView:
    """A screening with its sealed parts opened; answers, facts and needs' reasons are None once erased."""

    row: ScreeningRow
    answers: dict[str, Any] | None
    needs: list[dict[str, Any]]


async def _treated_as_child(session: AsyncSession, vault: Vault, person: PersonRow) -> bool:
    """As the screening's facts say (PersonFacts.treated_as_child), from the person's own age fields alone."""
    try:
        date_of_birth, estimated_age = await vault.open_age(session, person)
    except Erased:
        raise Gone(person) from None
    return treated_as_child(date_of_birth, estimated_age, person.age_disputed, _today())


async def _person_with_case(session: AsyncSession, vault: Vault, case: CaseRow,
                            person_id: str) -> tuple[PersonRow, PersonRecord, list[PersonView]]:
    """The person (NotFound, Gone as _person_in), their record and all of the case's persons, opened: the
    case's persons are loaded first, so the person is then found in the session without another query."""
    persons = await persons_of(session, vault, case.id)
    person = await _person_in(session, case, person_id)
    record = next((v.record for v in persons if v.row.id == person.id), None)
    if record is None:
        raise Gone(person)
    return person, record, persons


async def record_screening(session: AsyncSession, vault: Vault, principal: Principal, case_id: str, person_id: str,
                           answers: ScreeningAnswers, *, screening_id: str | None = None) -> ScreeningView:
    """A new result every time; the result keeps its rules version, facts and reasons for good."""
    case = await get_case_for(session, principal, case_id)
    person, record, persons = await _person_with_case(session, vault, case, person_id)
    facts = await facts_for(session, vault, case, person, record, persons=persons)
    rule_set = current_rules()
    needs = evaluate(facts, answers, rule_set)
    consent_scope = [{"recipient_agency_type": g.recipient_agency_type, "purpose": g.purpose, "basis": g.basis}
                     for g in consent_rules.scope(await _active_grants(session, person.id))]
    band = age_band(facts)
    screening = ScreeningRow(case_id=case.id, person_id=person.id, rules_version=rule_set.version,
                             screened_by=principal.subject, answers=None, needs=None, age_band=band,
                             consent_scope=consent_scope)
    if screening_id is not None:
        screening.id = screening_id
    needs_out = [{"code": n.code, "urgency": n.urgency.value, "reasons": list(n.reasons), "rule_ids": list(n.rule_ids),
                  "flags": list(n.flags)} for n in needs]
    await vault.seal_screening(session, screening, answers=answers.as_dict(), needs=needs_out,
                               facts={k: v for k, v in facts_of(facts, answers).items() if k not in answers.as_dict()})
    session.add(screening)
    _touch(case, screening.created_at)
    session.add(case)
    add_event(session, topic=events.TOPIC, case_id=case.id, event_type=events.CASE_SCREENED,
              source=events.SOURCE, subject=screening.id,
              data={
                  "case_id": case.id,
                  "screening_id": screening.id,
                  "person_id": person.id,
                  "registering_agency_id": case.agency_id,
                  "jurisdiction": case.jurisdiction,
                  "rules_version": rule_set.version,
                  "age_band": band,
                  "languages": record.languages,
                  "needs": [{"code": n.code, "urgency": n.urgency.value} for n in needs],
                  "consent_scope": consent_scope,
              })
    await session.commit()
    return ScreeningView(screening, answers.as_dict(), needs_out)


async def _screening_view(session: AsyncSession, vault: Vault, row: ScreeningRow) -> ScreeningView:
    try:
        return ScreeningView(row, await vault.open_json(session, row.person_id, "screening.answers", row.answers),
                             await vault.open_json(session, row.person_id, "screening.needs", row.needs))
    except Erased:
        return ScreeningView(row, None, [dict(n) for n in row.need_codes])


async def get_screening(session: AsyncSession, vault: Vault, principal: Principal, case_id: str,
                        screening_id: str) -> ScreeningView:
    case = await get_case_for(session, principal, case_id)
    screening = await session.get(ScreeningRow, screening_id)
    if screening is None or screening.case_id != case.id:
        raise NotFound(screening_id)
    return await _screening_view(session, vault, screening)


async def list_screenings(session: AsyncSession, vault: Vault, principal: Principal, case_id: str,
                          person_id: str | None) -> list[ScreeningView]:
    case = await get_case_for(session, principal, case_id)
    query = select(ScreeningRow).where(ScreeningRow.case_id == case.id)
    if person_id:
        query = query.where(ScreeningRow.person_id == person_id)
    return [await _screening_view(session, vault, s)
            for s in (await session.exec(query.order_by(ScreeningRow.created_at))).all()]


# --- consent ---------------------------------------------------------------------------------

@dataclass
class ConsentView:
    row: ConsentRow
    reason: str | None


async def _consent_view(session: AsyncSession, vault: Vault, row: ConsentRow) -> ConsentView:
    return ConsentView(row, await vault.open_consent_reason(session, row))


async def _active_grants(session: AsyncSession, person_id: str) -> list[consent_rules.ConsentGrant]:
    query = select(ConsentRow).where(ConsentRow.person_id == person_id, ConsentRow.status == consent_rules.GRANTED)
    return [consent_rules.ConsentGrant(c.recipient_agency_type, c.purpose, c.basis)
            for c in (await session.exec(query)).all()]


def _consent_changed(session: AsyncSession, consent: ConsentRow, changed_at: datetime) -> None:
    add_event(session, topic=events.TOPIC, case_id=consent.case_id, event_type=events.CONSENT_CHANGED,
              source=events.SOURCE, subject=consent.id,
              data={"case_id": consent.case_id, "person_id": consent.person_id, "consent_id": consent.id,
                    "recipient_agency_type": consent.recipient_agency_type, "purpose": consent.purpose,
                    "basis": consent.basis, "status": consent.status, "changed_at": changed_at.isoformat()})


async def grant_consent(session: AsyncSession, vault: Vault, principal: Principal, case_id: str, person_id: str, *,
                        recipient_agency_type: str, purpose: str, basis: str, reason: str | None,
                        consent_id: str | None = None,
                        remember: Callable[[str], None] | None = None) -> tuple[ConsentView, bool]:
    """Record a consent or a mandatory override; returns (view, created). An identical active one is kept."""
    case = await get_case_for(session, principal, case_id)
    person = await _person_in(session, case, person_id)
    if basis == consent_rules.MANDATORY_OVERRIDE:
        try:
            consent_rules.check_override(recipient_agency_type=recipient_agency_type,
                                         treated_as_child=await _treated_as_child(session, vault, person))
        except consent_rules.OverrideNotAllowed as exc:
            raise Refused(str(exc)) from None
    existing = (await session.exec(select(ConsentRow).where(
        ConsentRow.person_id == person.id, ConsentRow.recipient_agency_type == recipient_agency_type,
        ConsentRow.purpose == purpose, ConsentRow.basis == basis, ConsentRow.status == consent_rules.GRANTED,
    ))).first()
    if existing is not None:
        return await _consent_view(session, vault, existing), False
    consent = ConsentRow(case_id=case.id, person_id=person.id, recipient_agency_type=recipient_agency_type,
                         purpose=purpose, basis=basis, recorded_by=principal.subject,
                         recorded_by_agency_id=principal.agency_id)
    await vault.seal_consent_reason(session, consent, reason)
    if consent_id is not None:
        consent.id = consent_id
    if remember is not None:
        remember(consent.id)
    session.add(consent)
    _touch(case, consent.granted_at)
    session.add(case)
    _consent_changed(session, consent, consent.granted_at)
    await session.commit()  # no refresh: every column was set here, and a reload would begin another transaction
    return ConsentView(consent, reason), True


async def _case_for_consents(session: AsyncSession, principal: Principal, case_id: str,
                             registering_agency_needs: Permission) -> CaseRow:
    """A person's consents: the registering agency's (with the permission it always needed), and, since a person
    withdraws through the protection side too, the coordinator's of the case's jurisdiction (its coordinator role,
    as for its other actions). Anyone else: as for a missing case."""
    case = await session.get(CaseRow, case_id)
    if case is None:
        raise NotFound(case_id)
    if case.agency_id == principal.agency_id:
        check(principal, registering_agency_needs)
        return case
    if principal.coordinator and principal.jurisdiction == case.jurisdiction and may(principal, Permission.COORDINATE):
        return case
    raise NotFound(case_id)


async def withdraw_consent(session: AsyncSession, vault: Vault, principal: Principal, case_id: str, person_id: str,
                           consent_id: str) -> ConsentView:
    case = await _case_for_consents(session, principal, case_id, Permission.WRITE_CASES)
    consent = await session.get(ConsentRow, consent_id)
    if consent is None or consent.case_id != case.id or consent.person_id != person_id:
        raise NotFound(consent_id)
    await _person_in(session, case, person_id)
    if firewall.viewer_for(principal) is firewall.Viewer.ENFORCEMENT and not consent_rules.enforcement_may_withdraw(
            recipient_agency_type=consent.recipient_agency_type, purpose=consent.purpose):
        raise WithdrawalRefused(consent.recipient_agency_type)  # before the idempotent answer: always the same
    if consent.status == consent_rules.WITHDRAWN:
        return await _consent_view(session, vault, consent)  # withdrawing twice changes nothing
    consent.status = consent_rules.WITHDRAWN
    consent.withdrawn_at = datetime.now(UTC)
    consent.withdrawn_by = principal.subject
    session.add(consent)
    _touch(case, consent.withdrawn_at)
    session.add(case)
    _consent_changed(session, consent, consent.withdrawn_at)
    view = await _consent_view(session, vault, consent)  # opened now: after the commit it would take a new transaction
    await session.commit()
    return view


async def _row_of_case(session: AsyncSession, principal: Principal, case_id: str, row_class, row_id: str):
    """A row that belongs to one of the caller's cases; anything else is NotFound."""
    case = await get_case_for(session, principal, case_id)
    row = await session.get(row_class, row_id)
    if row is None or row.case_id != case.id:
        raise NotFound(row_id)
    return row


async def get_consent(session: AsyncSession, vault: Vault, principal: Principal, case_id: str,
                      consent_id: str) -> ConsentView:
    row = await _row_of_case(session, principal, case_id, ConsentRow, consent_id)
    try:
        return await _consent_view(session, vault, row)
    except Erased:
        raise Gone(await session.get(PersonRow, row.person_id)) from None


async def list_consents(session: AsyncSession, vault: Vault, principal: Principal, case_id: str,
                        person_id: str) -> list[ConsentView]:
    case = await _case_for_consents(session, principal, case_id, Permission.READ_CASES)
    person = await _person_in(session, case, person_id)
    query = select(ConsentRow).where(ConsentRow.person_id == person.id).order_by(ConsentRow.granted_at)
    try:
        return [await _consent_view(session, vault, c) for c in (await session.exec(query)).all()]
    except Erased:
        raise Gone(person) from None


# --- removal safeguard -----------------------------------------------------------------------

async def _holds_on(session: AsyncSession, person: PersonRow) -> tuple[list[ProtectionHoldRow], list[str],
                                                                          ScreeningRow | None]:
    """(active holds, hold-bearing needs of the latest screening whose hold has not arrived, that screening)."""
    every_hold = list((await session.exec(select(ProtectionHoldRow).where(
        ProtectionHoldRow.person_id == person.id, _hold_counts()).order_by(ProtectionHoldRow.hold_id))).all())
    holds = [h for h in every_hold if h.status == ACTIVE]
    latest = (await session.exec(select(ScreeningRow).where(ScreeningRow.person_id == person.id)
                                 .order_by(col(ScreeningRow.created_at).desc()).limit(1))).first()
    pending = [] if latest is None else pending_holds(latest.created_at, [n["code"] for n in latest.need_codes],
                                                      [_hold_state(h) for h in every_hold])
    return holds, pending, latest


async def request_removal(session: AsyncSession, principal: Principal, case_id: str, person_id: str, *,
                          destination_country: str, order_id: str | None = None,
                          remember: Callable[[str], None] | None = None) -> RemovalOrderRow:
    """Accepted only while no protection hold on the person is active and none is pending for a hold-bearing need
    of the latest screening; a refused attempt stays on record."""
    case = await get_case_for(session, principal, case_id)
    person = await _person_in(session, case, person_id)
    holds, pending, latest = await _holds_on(session, person)
    refused = bool(holds or pending)
    order = RemovalOrderRow(case_id=case.id, person_id=person.id, destination_country=destination_country,
                            status="refused" if refused else "accepted", blocking_hold_ids=[h.hold_id for h in holds],
                            requested_by=principal.subject, requested_by_agency_id=principal.agency_id)
    if order_id is not None and not refused:
        order.id = order_id
    if remember is not None and not refused:
        remember(order.id)  # a retried accepted order finds it; a refused attempt may be retried
    session.add(order)
    _touch(case, order.requested_at)
    session.add(case)
    if refused:
        answer_status(session, 409)  # the refused attempt's audit row, written with it, says what the caller got
    await session.commit()  # no refresh: every column of the order was set here
    if refused:
        raise RemovalBlocked(order, holds, pending=pending, screening=latest if pending else None)
    return order


def _hold_state(row: ProtectionHoldRow) -> HoldState:
    return HoldState(**{k: getattr(row, k) for k in HoldState.__dataclass_fields__})


async def get_removal_order(session: AsyncSession, principal: Principal, case_id: str, order_id: str) -> RemovalOrderRow:
    return await _row_of_case(session, principal, case_id, RemovalOrderRow, order_id)


def scope_of_rows(rows: Iterable[ConsentRow]) -> list[dict[str, str]]:
    grants = [consent_rules.ConsentGrant(c.recipient_agency_type, c.purpose, c.basis)
              for c in rows if c.status == consent_rules.GRANTED]
    return [{"recipient_agency_type": g.recipient_agency_type, "purpose": g.purpose, "basis": g.basis}
            for g in consent_rules.scope(grants)]


# --- erasure ---------------------------------------------------------------------------------

async def erasure_blockers(session: AsyncSession, person: PersonRow) -> ErasureBlocked | None:
    """What forbids erasing the person now: holds (active or pending) and open referrals."""
    holds, pending, _ = await _holds_on(session, person)
    referrals = [r for r in (await session.exec(select(ReferralViewRow).where(
        ReferralViewRow.person_id == person.id, _counts()).order_by(ReferralViewRow.referral_id))).all()
        if referral_is_open(r.status)]
    if holds or pending or referrals:
        return ErasureBlocked(holds, pending, referrals)
    return None


async def _erase(session: AsyncSession, vault: Vault, case: CaseRow, person: PersonRow, reason_code: str) -> bool:
    """Shred the person's key and drop their search rows, and publish person.erased.v1, in one transaction.
    The conditional update claims the person: of two replicas erasing at once, one wins. Commits."""
    erased_at = datetime.now(UTC)
    claimed = await session.exec(update(PersonRow).where(PersonRow.id == person.id, col(PersonRow.erased_at).is_(None))
                                 .values(erased_at=erased_at))
    if claimed.rowcount != 1:
        await session.rollback()
        return False
    await vault.keyring.shred(session, person.id)
    await vault.unindex(session, person.id)
    add_event(session, topic=events.TOPIC, case_id=case.id, event_type=events.PERSON_ERASED, source=events.SOURCE,
              subject=person.id, data={"case_id": case.id, "person_id": person.id, "reason_code": reason_code,
                                       "erased_at": erased_at.isoformat()})
    await session.commit()
    return True


async def erase_person(session: AsyncSession, vault: Vault, principal: Principal, case_id: str,
                       person_id: str) -> PersonRow:
    """Erase on request (the registering agency only). Erasing twice gives the same result."""
    case = await get_case_for(session, principal, case_id)
    person = await _person_in(session, case, person_id, erased_ok=True)
    if person.erased_at is None:
        blocked = await erasure_blockers(session, person)
        if blocked is not None:
            raise blocked
        await _erase(session, vault, case, person, events.ERASURE_REQUEST)
    await session.refresh(person)
    return person


async def expired_persons(session: AsyncSession, older_than: datetime, limit: int = 100) -> list[tuple[str, str]]:
    """(case_id, person_id) of persons not yet erased whose case was last active before ``older_than``."""
    query = select(PersonRow.case_id, PersonRow.id).join(CaseRow, col(CaseRow.id) == PersonRow.case_id).where(
        col(PersonRow.erased_at).is_(None), CaseRow.last_activity_at < older_than).order_by(
        CaseRow.last_activity_at).limit(limit)
    return [tuple(r) for r in (await session.exec(query)).all()]


async def erase_expired(session: AsyncSession, vault: Vault, case_id: str, person_id: str,
                        older_than: datetime) -> bool:
    """Retention: erase one person if their case is still inactive and nothing blocks it. Commits."""
    case = await session.get(CaseRow, case_id)
    person = await session.get(PersonRow, person_id)
    if case is None or person is None or person.erased_at is not None or as_utc(case.last_activity_at) >= older_than:
        return False
    if await erasure_blockers(session, person) is not None:
        return False
    return await _erase(session, vault, case, person, events.RETENTION_EXPIRED)
