"""Intake use cases. Each runs in one transaction: the business rows and their events commit together."""

from dataclasses import asdict
from datetime import UTC, date, datetime

from sqlmodel.ext.asyncio.session import AsyncSession

from enlace_platform.auth import Principal
from enlace_platform.outbox import add_event
from intake.adapters.orm import CaseRow, PersonRow, ScreeningRow
from intake.domain import events
from intake.domain.screening import RULES_VERSION, PersonFacts, ScreeningAnswers, age_band, evaluate


class NotFound(Exception):
    pass


def age_in_years(person: PersonRow, today: date | None = None) -> int | None:
    if person.date_of_birth is None:
        return person.estimated_age
    today = today or datetime.now(UTC).date()
    dob = person.date_of_birth
    return today.year - dob.year - ((today.month, today.day) < (dob.month, dob.day))


async def register_case(session: AsyncSession, principal: Principal, case: CaseRow, persons: list[PersonRow]) -> CaseRow:
    case.agency_id = principal.agency_id
    case.jurisdiction = principal.jurisdiction
    session.add(case)
    for person in persons:
        person.case_id = case.id
        session.add(person)
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


async def record_screening(session: AsyncSession, principal: Principal, case_id: str, person_id: str,
                           answers: ScreeningAnswers) -> ScreeningRow:
    case = await get_case_for(session, principal, case_id)
    person = await session.get(PersonRow, person_id)
    if person is None or person.case_id != case.id:
        raise NotFound(person_id)
    facts = PersonFacts(age_years=age_in_years(person), age_disputed=person.age_disputed)
    needs = evaluate(facts, answers)
    screening = ScreeningRow(
        case_id=case.id, person_id=person.id, rules_version=RULES_VERSION, screened_by=principal.subject,
        answers={k: list(v) if isinstance(v, tuple) else v for k, v in asdict(answers).items()},
        needs=[{"code": n.code, "urgency": n.urgency.value, "reasons": list(n.reasons)} for n in needs],
    )
    session.add(screening)
    add_event(session, topic=events.TOPIC, case_id=case.id, event_type=events.CASE_SCREENED,
              source=events.SOURCE, subject=screening.id,
              data={
                  "case_id": case.id,
                  "screening_id": screening.id,
                  "person_id": person.id,
                  "registering_agency_id": case.agency_id,
                  "jurisdiction": case.jurisdiction,
                  "rules_version": RULES_VERSION,
                  "age_band": age_band(facts),
                  "languages": person.languages,
                  "needs": [{"code": n.code, "urgency": n.urgency.value} for n in needs],
              })
    await session.commit()
    return screening
