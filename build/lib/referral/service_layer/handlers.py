"""Referral event handlers. Each runs inside the consumer's transaction (with its inbox row)."""

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from enlace_platform.consumer import PoisonMessage
from enlace_platform.envelope import Envelope
from enlace_platform.outbox import add_event
from referral.adapters.directory import load_directory
from referral.adapters.orm import ReferralRow
from referral.domain import events
from referral.domain.routing import NEED_CODES, URGENCIES, CaseFacts, age_range, route

# Lead order: the need whose agency should coordinate the others, most protective first.
LEAD_PRIORITY = ["UNACCOMPANIED_CHILD", "SEPARATED_CHILD", "TRAFFICKING_PRESUMED", "INTERNATIONAL_PROTECTION"]


def _lead_rank(code: str) -> int:
    return LEAD_PRIORITY.index(code) if code in LEAD_PRIORITY else len(LEAD_PRIORITY)


async def on_case_screened(session: AsyncSession, envelope: Envelope) -> None:
    data = envelope.data
    try:
        case_id, screening_id = data["case_id"], data["screening_id"]
        facts = CaseFacts(jurisdiction=data["jurisdiction"], age_band=data["age_band"],
                          languages=tuple(data.get("languages") or ()))
        needs = [(n["code"], n["urgency"]) for n in data["needs"]]
        age_range(facts.age_band)
        unknown = [(c, u) for c, u in needs if c not in NEED_CODES or u not in URGENCIES]
        if unknown:
            raise ValueError(f"unknown need codes or urgencies {unknown}")
        from_agency = data["registering_agency_id"]
        person_id = data["person_id"]
    except (KeyError, TypeError, ValueError) as exc:
        raise PoisonMessage(f"case.screened.v1 payload breaks its contract: {exc!r}") from exc

    existing = (await session.exec(select(ReferralRow).where(ReferralRow.screening_id == screening_id))).all()
    if existing:
        return  # this screening was already routed
    directory = await load_directory(session, facts.jurisdiction)
    lead_code = min((code for code, _ in needs), key=_lead_rank, default=None)
    for code, urgency in dict(needs).items():  # one referral per need code
        decision = route(code, facts, directory)
        referral = ReferralRow(
            case_id=case_id, screening_id=screening_id, person_id=person_id, need_code=code, urgency=urgency,
            from_agency_id=from_agency,
            to_agency_id=decision.service.agency_id if decision.service else None,
            to_service_id=decision.service.service_id if decision.service else None,
            is_lead=code == lead_code, routing_reasons=list(decision.reasons),
        )
        session.add(referral)
        add_event(session, topic=events.TOPIC, case_id=case_id, event_type=events.REFERRAL_REQUESTED,
                  source=events.SOURCE, subject=referral.id,
                  data={"referral_id": referral.id, "case_id": case_id, "person_id": person_id,
                        "need_code": code, "urgency": urgency, "status": referral.status,
                        "is_lead": referral.is_lead, "from_agency_id": from_agency,
                        "to_agency_id": referral.to_agency_id, "to_service_id": referral.to_service_id})
