"""Intake use cases. Each runs in one transaction: the business rows and their events commit together."""

import unicodedata
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from enlace_platform.auth import Principal
from enlace_platform.outbox import add_event
from intake.adapters.orm import (
    CaseRow, ConsentRow, PersonDocumentRow, PersonRow, PersonVersionRow, ProtectionHoldRow, ReferralViewRow,
    RelationshipRow, RemovalOrderRow, ScreeningRow,
)
from intake.domain import consent as consent_rules
from intake.domain import events
from intake.domain.encounter import Relationship, person_facts, treated_as_child
from intake.domain.safeguard import ACTIVE, HoldState, pending_holds, referral_is_open
from intake.domain.screening import PersonFacts, ScreeningAnswers, age_band, current_rules, evaluate, facts_of


class NotFound(Exception):
    pass


class Refused(Exception):
    """The request is valid but the domain says no (e.g. an override for an adult)."""


class RemovalBlocked(Exception):
    def __init__(self, order: RemovalOrderRow, holds: list[ProtectionHoldRow], *,
                 pending: list[str] = (), screening: "ScreeningRow | None" = None) -> None:
        super().__init__(f"{len(holds)} active protection hold(s), {len(pending)} pending")
        self.order, self.holds, self.pending, self.screening = order, holds, list(pending), screening


PERSON_FIELDS = ("given_names", "family_names", "sex", "date_of_birth", "estimated_age", "age_disputed",
                 "nationality", "languages")


def _today() -> date:
    return datetime.now(UTC).date()


def search_key(text: str) -> str:
    """Lower case without accents, so that 'Perez' finds 'Pérez'."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return " ".join("".join(c for c in decomposed if not unicodedata.combining(c)).split())


def _snapshot(person: PersonRow, documents: Iterable[PersonDocumentRow]) -> dict[str, Any]:
    data = {f: getattr(person, f) for f in PERSON_FIELDS}
    data["date_of_birth"] = person.date_of_birth.isoformat() if person.date_of_birth else None
    data["documents"] = [{"type": d.type, "number": d.number, "issuing_country": d.issuing_country}
                         for d in documents]
    return data


def _document_rows(person: PersonRow, documents: list[dict]) -> list[PersonDocumentRow]:
    return [PersonDocumentRow(person_id=person.id, case_id=person.case_id, position=i, **d)
            for i, d in enumerate(documents)]


# --- encounters ------------------------------------------------------------------------------

async def register_case(session: AsyncSession, principal: Principal, case: CaseRow, persons: list[PersonRow], *,
                        documents: dict[str, list[dict]] | None = None,
                        relationships: Iterable[RelationshipRow] = ()) -> CaseRow:
    """Register an encounter. ``documents`` maps a person id to its documents."""
    case.agency_id = principal.agency_id
    case.jurisdiction = principal.jurisdiction
    session.add(case)
    for position, person in enumerate(persons):
        person.case_id = case.id
        person.position = position
        person.search_name = search_key(f"{person.given_names} {person.family_names}")
        session.add(person)
    await session.flush()  # persons exist before their documents and relationships refer to them
    for person in persons:
        docs = _document_rows(person, (documents or {}).get(person.id, []))
        session.add_all(docs)
        session.add(PersonVersionRow(person_id=person.id, version=1, snapshot=_snapshot(person, docs),
                                     changed_fields=[], changed_by=principal.subject,
                                     changed_by_agency_id=principal.agency_id))
    for rel in relationships:
        rel.case_id = case.id
        session.add(rel)
    add_event(session, topic=events.TOPIC, case_id=case.id, event_type=events.CASE_REGISTERED,
              source=events.SOURCE, subject=case.id,
              data={"case_id": case.id, "agency_id": case.agency_id, "jurisdiction": case.jurisdiction,
                    "person_ids": [p.id for p in persons],
                    "encountered_at": case.encountered_at.isoformat()})
    await session.commit()
    return case


async def get_case_for(session: AsyncSession, principal: Principal, case_id: str) -> CaseRow:
    case = await session.get(CaseRow, case_id)
    # Another agency's case is indistinguishable from a missing one.
    if case is None or case.agency_id != principal.agency_id:
        raise NotFound(case_id)
    return case


async def _person_in(session: AsyncSession, case: CaseRow, person_id: str) -> PersonRow:
    person = await session.get(PersonRow, person_id)
    if person is None or person.case_id != case.id:
        raise NotFound(person_id)
    return person


async def persons_of(session: AsyncSession, case_id: str) -> list[PersonRow]:
    query = select(PersonRow).where(PersonRow.case_id == case_id).order_by(PersonRow.position)
    return list((await session.exec(query)).all())


async def documents_of(session: AsyncSession, case_id: str) -> dict[str, list[PersonDocumentRow]]:
    query = select(PersonDocumentRow).where(PersonDocumentRow.case_id == case_id).order_by(PersonDocumentRow.position)
    found: dict[str, list[PersonDocumentRow]] = {}
    for doc in (await session.exec(query)).all():
        found.setdefault(doc.person_id, []).append(doc)
    return found


async def relationships_of(session: AsyncSession, case_id: str) -> list[RelationshipRow]:
    return list((await session.exec(select(RelationshipRow).where(RelationshipRow.case_id == case_id))).all())


async def holds_of(session: AsyncSession, case_id: str) -> list[ProtectionHoldRow]:
    query = select(ProtectionHoldRow).where(ProtectionHoldRow.case_id == case_id).order_by(ProtectionHoldRow.hold_id)
    return list((await session.exec(query)).all())


async def referrals_of(session: AsyncSession, case_id: str) -> list[ReferralViewRow]:
    query = select(ReferralViewRow).where(ReferralViewRow.case_id == case_id).order_by(ReferralViewRow.occurred_at)
    return list((await session.exec(query)).all())


async def search_cases(session: AsyncSession, principal: Principal, *, name: str | None,
                       document_number: str | None, limit: int) -> list[CaseRow]:
    """Only the caller's own cases: another agency's people are not searchable at all."""
    query = select(CaseRow).where(CaseRow.agency_id == principal.agency_id)
    if name:
        person_ids = select(PersonRow.case_id).where(
            col(PersonRow.search_name).contains(search_key(name), autoescape=True))
        query = query.where(col(CaseRow.id).in_(person_ids))
    if document_number:
        doc_cases = select(PersonDocumentRow.case_id).where(
            func.upper(PersonDocumentRow.number) == document_number.strip().upper())
        query = query.where(col(CaseRow.id).in_(doc_cases))
    query = query.order_by(col(CaseRow.encountered_at).desc()).limit(limit)
    return list((await session.exec(query)).all())


async def person_for_reader(session: AsyncSession, principal: Principal, case_id: str,
                            person_id: str) -> tuple[PersonRow, list[PersonDocumentRow]]:
    """The registering agency always; a receiving agency only with an open referral about this person
    addressed to it, and consent (or the child-protection override) for its agency type."""
    case = await session.get(CaseRow, case_id)
    person = await session.get(PersonRow, person_id)
    if case is None or person is None or person.case_id != case.id:
        raise NotFound(person_id)
    if case.agency_id != principal.agency_id and not await _receiver_may_read(session, principal, person):
        raise NotFound(person_id)
    docs = (await documents_of(session, case.id)).get(person.id, [])
    return person, docs


async def _receiver_may_read(session: AsyncSession, principal: Principal, person: PersonRow) -> bool:
    query = select(ReferralViewRow).where(ReferralViewRow.case_id == person.case_id,
                                          ReferralViewRow.person_id == person.id,
                                          ReferralViewRow.to_agency_id == principal.agency_id)
    if not any(referral_is_open(r.status) for r in (await session.exec(query)).all()):
        return False
    return consent_rules.covers(await _active_grants(session, person.id),
                                agency_type=principal.agency_type, purpose="referral")


async def update_person(session: AsyncSession, principal: Principal, case_id: str, person_id: str,
                        changes: dict[str, Any]) -> tuple[PersonRow, list[PersonDocumentRow]]:
    """Apply the changes and keep the previous versions. ``documents`` in changes replaces the list."""
    case = await get_case_for(session, principal, case_id)
    person = await _person_in(session, case, person_id)
    docs = (await documents_of(session, case.id)).get(person.id, [])
    before = _snapshot(person, docs)
    for name, value in changes.items():
        if name != "documents":
            setattr(person, name, value)
    if "documents" in changes:
        for doc in docs:
            await session.delete(doc)
        docs = _document_rows(person, changes["documents"])
        session.add_all(docs)
    after = _snapshot(person, docs)
    changed = sorted(k for k in after if after[k] != before[k])
    if changed:
        person.search_name = search_key(f"{person.given_names} {person.family_names}")
        person.version += 1
        person.updated_at = datetime.now(UTC)
        session.add(person)
        session.add(PersonVersionRow(person_id=person.id, version=person.version, snapshot=after,
                                     changed_fields=changed, changed_by=principal.subject,
                                     changed_by_agency_id=principal.agency_id))
    await session.commit()
    await session.refresh(person)
    return person, docs


async def person_history(session: AsyncSession, principal: Principal, case_id: str,
                         person_id: str) -> list[PersonVersionRow]:
    case = await get_case_for(session, principal, case_id)
    person = await _person_in(session, case, person_id)
    query = select(PersonVersionRow).where(PersonVersionRow.person_id == person.id).order_by(PersonVersionRow.version)
    return list((await session.exec(query)).all())


# --- screening -------------------------------------------------------------------------------

async def facts_for(session: AsyncSession, case: CaseRow, person: PersonRow) -> PersonFacts:
    relationships = [Relationship(r.from_person_id, r.to_person_id, r.kind)
                     for r in await relationships_of(session, case.id)]
    documents = (await documents_of(session, case.id)).get(person.id, [])
    today = _today()
    children = {p.id for p in await persons_of(session, case.id)
                if treated_as_child(p.date_of_birth, p.estimated_age, p.age_disputed, today)}
    return person_facts(person_id=person.id, date_of_birth=person.date_of_birth, estimated_age=person.estimated_age,
                        age_disputed=person.age_disputed, nationality=person.nationality,
                        document_count=len(documents), relationships=relationships, today=today, children=children)


async def record_screening(session: AsyncSession, principal: Principal, case_id: str, person_id: str,
                           answers: ScreeningAnswers, *, screening_id: str | None = None) -> ScreeningRow:
    """A new result every time; the result keeps its rules version, facts and reasons for good."""
    case = await get_case_for(session, principal, case_id)
    person = await _person_in(session, case, person_id)
    facts = await facts_for(session, case, person)
    rule_set = current_rules()
    needs = evaluate(facts, answers, rule_set)
    consent_scope = [{"recipient_agency_type": g.recipient_agency_type, "purpose": g.purpose, "basis": g.basis}
                     for g in consent_rules.scope(await _active_grants(session, person.id))]
    band = age_band(facts)
    screening = ScreeningRow(
        case_id=case.id, person_id=person.id, rules_version=rule_set.version, screened_by=principal.subject,
        answers=answers.as_dict(), facts={k: v for k, v in facts_of(facts, answers).items()
                                          if k not in answers.as_dict()},
        needs=[{"code": n.code, "urgency": n.urgency.value, "reasons": list(n.reasons), "rule_ids": list(n.rule_ids),
                "flags": list(n.flags)} for n in needs],
        age_band=band, consent_scope=consent_scope,
    )
    if screening_id is not None:
        screening.id = screening_id
    session.add(screening)
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
                  "languages": person.languages,
                  "needs": [{"code": n.code, "urgency": n.urgency.value} for n in needs],
                  "consent_scope": consent_scope,
              })
    await session.commit()
    return screening


async def get_screening(session: AsyncSession, principal: Principal, case_id: str, screening_id: str) -> ScreeningRow:
    case = await get_case_for(session, principal, case_id)
    screening = await session.get(ScreeningRow, screening_id)
    if screening is None or screening.case_id != case.id:
        raise NotFound(screening_id)
    return screening


async def list_screenings(session: AsyncSession, principal: Principal, case_id: str,
                          person_id: str | None) -> list[ScreeningRow]:
    case = await get_case_for(session, principal, case_id)
    query = select(ScreeningRow).where(ScreeningRow.case_id == case.id)
    if person_id:
        query = query.where(ScreeningRow.person_id == person_id)
    return list((await session.exec(query.order_by(ScreeningRow.created_at))).all())


# --- consent ---------------------------------------------------------------------------------

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


async def grant_consent(session: AsyncSession, principal: Principal, case_id: str, person_id: str, *,
                        recipient_agency_type: str, purpose: str, basis: str, reason: str | None,
                        consent_id: str | None = None,
                        remember: Callable[[str], None] | None = None) -> tuple[ConsentRow, bool]:
    """Record a consent or a mandatory override; returns (row, created). An identical active one is kept."""
    case = await get_case_for(session, principal, case_id)
    person = await _person_in(session, case, person_id)
    if basis == consent_rules.MANDATORY_OVERRIDE:
        facts = await facts_for(session, case, person)
        try:
            consent_rules.check_override(recipient_agency_type=recipient_agency_type,
                                         treated_as_child=facts.treated_as_child)
        except consent_rules.OverrideNotAllowed as exc:
            raise Refused(str(exc)) from None
    existing = (await session.exec(select(ConsentRow).where(
        ConsentRow.person_id == person.id, ConsentRow.recipient_agency_type == recipient_agency_type,
        ConsentRow.purpose == purpose, ConsentRow.basis == basis, ConsentRow.status == consent_rules.GRANTED,
    ))).first()
    if existing is not None:
        return existing, False
    consent = ConsentRow(case_id=case.id, person_id=person.id, recipient_agency_type=recipient_agency_type,
                         purpose=purpose, basis=basis, reason=reason, recorded_by=principal.subject,
                         recorded_by_agency_id=principal.agency_id)
    if consent_id is not None:
        consent.id = consent_id
    if remember is not None:
        remember(consent.id)
    session.add(consent)
    _consent_changed(session, consent, consent.granted_at)
    await session.commit()
    await session.refresh(consent)
    return consent, True


async def withdraw_consent(session: AsyncSession, principal: Principal, case_id: str, person_id: str,
                           consent_id: str) -> ConsentRow:
    case = await get_case_for(session, principal, case_id)
    consent = await session.get(ConsentRow, consent_id)
    if consent is None or consent.case_id != case.id or consent.person_id != person_id:
        raise NotFound(consent_id)
    if consent.status == consent_rules.WITHDRAWN:
        return consent  # withdrawing twice changes nothing
    consent.status = consent_rules.WITHDRAWN
    consent.withdrawn_at = datetime.now(UTC)
    consent.withdrawn_by = principal.subject
    session.add(consent)
    _consent_changed(session, consent, consent.withdrawn_at)
    await session.commit()
    await session.refresh(consent)
    return consent


async def _row_of_case(session: AsyncSession, principal: Principal, case_id: str, row_class, row_id: str):
    """A row that belongs to one of the caller's cases; anything else is NotFound."""
    case = await get_case_for(session, principal, case_id)
    row = await session.get(row_class, row_id)
    if row is None or row.case_id != case.id:
        raise NotFound(row_id)
    return row


async def get_consent(session: AsyncSession, principal: Principal, case_id: str, consent_id: str) -> ConsentRow:
    return await _row_of_case(session, principal, case_id, ConsentRow, consent_id)


async def list_consents(session: AsyncSession, principal: Principal, case_id: str, person_id: str) -> list[ConsentRow]:
    case = await get_case_for(session, principal, case_id)
    person = await _person_in(session, case, person_id)
    query = select(ConsentRow).where(ConsentRow.person_id == person.id).order_by(ConsentRow.granted_at)
    return list((await session.exec(query)).all())


# --- removal safeguard -----------------------------------------------------------------------

async def request_removal(session: AsyncSession, principal: Principal, case_id: str, person_id: str, *,
                          destination_country: str, order_id: str | None = None,
                          remember: Callable[[str], None] | None = None) -> RemovalOrderRow:
    """Accepted only while no protection hold on the person is active and none is pending for a hold-bearing need
    of the latest screening; a refused attempt stays on record."""
    case = await get_case_for(session, principal, case_id)
    person = await _person_in(session, case, person_id)
    every_hold = list((await session.exec(select(ProtectionHoldRow).where(
        ProtectionHoldRow.person_id == person.id).order_by(ProtectionHoldRow.hold_id))).all())
    holds = [h for h in every_hold if h.status == ACTIVE]
    latest = (await session.exec(select(ScreeningRow).where(ScreeningRow.person_id == person.id)
                                 .order_by(col(ScreeningRow.created_at).desc()).limit(1))).first()
    pending = [] if latest is None else pending_holds(latest.created_at, [n["code"] for n in latest.needs],
                                                      [_hold_state(h) for h in every_hold])
    refused = bool(holds or pending)
    order = RemovalOrderRow(case_id=case.id, person_id=person.id, destination_country=destination_country,
                            status="refused" if refused else "accepted", blocking_hold_ids=[h.hold_id for h in holds],
                            requested_by=principal.subject, requested_by_agency_id=principal.agency_id)
    if order_id is not None and not refused:
        order.id = order_id
    if remember is not None and not refused:
        remember(order.id)  # a retried accepted order finds it; a refused attempt may be retried
    session.add(order)
    await session.commit()
    await session.refresh(order)
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

