"""Referral event handlers. Each runs inside the consumer's transaction (with its inbox row).

Idempotent beyond the inbox: a screening already routed is skipped, an open referral for the same
person and need is never duplicated, consent changes are upserts, a case's registering agency is recorded
once, and a withdrawal cancels only what is still open.
"""

import logging
from datetime import datetime
from functools import partial

from sqlmodel import delete, select
from sqlmodel.ext.asyncio.session import AsyncSession

from enlace_platform.consumer import PoisonMessage, after_commit
from enlace_platform.crypto import SubjectKey, purge_freed_pages
from enlace_platform.envelope import Envelope
from enlace_platform.runtime import ServiceRuntime
from referral.adapters.orm import CasePersonRow, ConsentRow, HistoryRow, ReferralRow, ScreeningRow
from referral.config import ReferralSettings
from referral.domain import events
from referral.domain.codes import (
    AGE_BANDS, AGENCY_TYPES, CONSENT_BASES, CONSENT_MISSING, CONSENT_PURPOSE_REFERRAL, CONSENT_PURPOSES,
    ERASURE_REASONS, NEED_CODES, URGENCIES,
)
from referral.domain.routing import LEAD_PRIORITY  # noqa: F401 (re-exported: tests/contracts read it here)
from referral.domain.routing import lead_rank
from referral.service_layer.referrals import (
    SYSTEM, Policy, assign_from_queue, cancel_after_consent_withdrawal, decide_route, facts_for, now_utc,
    open_referral, open_referrals_around,
)
from referral.service_layer.sealing import erase_person_text

log = logging.getLogger(__name__)

def _contract_error(event_type: str, exc: Exception) -> PoisonMessage:
    return PoisonMessage(f"{event_type} payload breaks its contract: {exc!r}")


def _consent_entry(entry: dict) -> tuple[str, str, str]:
    agency_type, purpose, basis = entry["recipient_agency_type"], entry["purpose"], entry["basis"]
    if agency_type not in AGENCY_TYPES or purpose not in CONSENT_PURPOSES or basis not in CONSENT_BASES:
        raise ValueError(f"unknown consent scope entry {agency_type}/{purpose}/{basis}")
    return agency_type, purpose, basis


async def _learn_case_persons(session: AsyncSession, case_id: str, person_ids: list[str], registering_agency_id: str,
                              jurisdiction: str) -> None:
    """Who registered the case, and where: the first word stands (intake never moves a person to another case)."""
    for person_id in dict.fromkeys(person_ids):
        if await session.get(CasePersonRow, person_id) is None:
            session.add(CasePersonRow(person_id=person_id, case_id=case_id, registering_agency_id=registering_agency_id,
                                      jurisdiction=jurisdiction))


async def on_case_registered(session: AsyncSession, envelope: Envelope) -> None:
    data = envelope.data
    try:
        case_id, agency_id, jurisdiction = str(data["case_id"]), str(data["agency_id"]), str(data["jurisdiction"])
        person_ids = [str(p) for p in data["person_ids"]]
        if not person_ids or not agency_id or not jurisdiction:
            raise ValueError("a case without persons, agency or jurisdiction")
    except (KeyError, TypeError, ValueError) as exc:
        raise _contract_error(events.CASE_REGISTERED, exc) from exc
    await _learn_case_persons(session, case_id, person_ids, agency_id, jurisdiction)


async def on_case_screened(session: AsyncSession, envelope: Envelope, policy: Policy | None = None) -> None:
    policy = policy or Policy.from_settings(ReferralSettings())
    data = envelope.data
    try:
        case_id, screening_id, person_id = str(data["case_id"]), str(data["screening_id"]), str(data["person_id"])
        jurisdiction, age_band = str(data["jurisdiction"]), data["age_band"]
        languages = [str(lang) for lang in data.get("languages") or ()]
        needs = [(n["code"], n["urgency"]) for n in data["needs"]]
        from_agency = str(data["registering_agency_id"])
        if age_band not in AGE_BANDS:
            raise ValueError(f"unknown age band {age_band!r}")
        unknown = [(c, u) for c, u in needs if c not in NEED_CODES or u not in URGENCIES]
        if unknown:
            raise ValueError(f"unknown need codes or urgencies {unknown}")
        scope = data.get("consent_scope")
        scope = None if scope is None else [_consent_entry(e) for e in scope]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _contract_error(events.CASE_SCREENED, exc) from exc

    # Also for cases registered before referral recorded case.registered.v1.
    await _learn_case_persons(session, case_id, [person_id], from_agency, jurisdiction)
    if await session.get(ScreeningRow, screening_id) is not None:
        return  # this screening was already routed
    session.add(ScreeningRow(screening_id=screening_id, case_id=case_id, person_id=person_id))
    consented = None
    if scope is not None:  # the screening's snapshot of what consents allow replaces what we knew
        await session.exec(delete(ConsentRow).where(ConsentRow.person_id == person_id))
        allowed = {(agency_type, purpose): basis for agency_type, purpose, basis in scope}  # one row per pair
        for (agency_type, purpose), basis in allowed.items():
            session.add(ConsentRow(person_id=person_id, recipient_agency_type=agency_type, purpose=purpose,
                                   basis=basis, granted=True))
        # What routing reads back from those rows, known without reading them.
        consented = frozenset(t for t, purpose in allowed if purpose == CONSENT_PURPOSE_REFERRAL)

    at = now_utc()
    facts = await facts_for(session, jurisdiction, age_band, languages, person_id, consented=consented)
    already_open, case_open_refs = await open_referrals_around(session, case_id, person_id, [c for c, _ in needs])
    new_needs = {}
    for code, urgency in needs:
        if code not in new_needs and code not in already_open:
            new_needs[code] = urgency  # re-screening never duplicates an open referral
    # Most protective first: it takes the lead (if it is the case's most protective) before the others open.
    for code, urgency in sorted(new_needs.items(), key=lambda item: lead_rank(item[0])):
        decision = await decide_route(session, code, facts)
        await open_referral(session, policy, case_id=case_id, person_id=person_id, need_code=code, urgency=urgency,
                            facts=facts, from_agency_id=from_agency, decision=decision, actor=SYSTEM, at=at,
                            screening_id=screening_id, case_open_refs=case_open_refs)


async def on_consent_changed(session: AsyncSession, envelope: Envelope, policy: Policy | None = None) -> None:
    policy = policy or Policy.from_settings(ReferralSettings())
    data = envelope.data
    try:
        person_id = str(data["person_id"])
        agency_type, purpose, basis = _consent_entry(data)
        status = data["status"]
        if status not in ("granted", "withdrawn"):
            raise ValueError(f"unknown consent status {status!r}")
        changed_at = datetime.fromisoformat(str(data["changed_at"]).replace("Z", "+00:00"))
    except (KeyError, TypeError, ValueError) as exc:
        raise _contract_error(events.CONSENT_CHANGED, exc) from exc

    row = await session.get(ConsentRow, (person_id, agency_type, purpose))
    if row is None:
        row = ConsentRow(person_id=person_id, recipient_agency_type=agency_type, purpose=purpose, basis=basis,
                         granted=status == "granted", updated_at=changed_at)
        session.add(row)
    else:
        row.basis, row.granted, row.updated_at = basis, status == "granted", changed_at
    await session.flush()
    if purpose != CONSENT_PURPOSE_REFERRAL:
        return
    if status == "granted":
        await _route_referrals_waiting_for_consent(session, policy, person_id)
    else:  # routing no longer offers this type (the row above), and what was sent there is cancelled
        await cancel_after_consent_withdrawal(session, person_id, agency_type)


async def _route_referrals_waiting_for_consent(session: AsyncSession, policy: Policy, person_id: str) -> None:
    waiting = (await session.exec(select(ReferralRow).where(
        ReferralRow.person_id == person_id, ReferralRow.escalation_reason == CONSENT_MISSING,
        ReferralRow.to_agency_id == None, ReferralRow.status == "requested"))).all()  # noqa: E711
    at = now_utc()
    for ref in waiting:
        facts = await facts_for(session, ref.jurisdiction, ref.age_band, ref.languages, person_id)
        decision = await decide_route(session, ref.need_code, facts)
        if decision.service is not None:
            await assign_from_queue(session, policy, ref, decision, at)


async def on_person_erased(session: AsyncSession, envelope: Envelope, runtime: ServiceRuntime) -> None:
    """Intake erased the person: destroy our key for them too, so the free text of their referrals' history
    is gone (ids and codes stay: the referrals go on). The write-ahead log can only be purged of the destroyed
    key once the consumer's transaction commits: after_commit (one purge for a batch of erasures). The same
    event again finds nothing left to destroy."""
    data = envelope.data
    try:
        person_id, _ = str(data["person_id"]), str(data["case_id"])
        if data["reason_code"] not in ERASURE_REASONS:
            raise ValueError(f"unknown erasure reason {data['reason_code']!r}")
        datetime.fromisoformat(str(data["erased_at"]).replace("Z", "+00:00"))
    except (KeyError, TypeError, ValueError) as exc:
        raise _contract_error(events.PERSON_ERASED, exc) from exc
    erased = await erase_person_text(session, runtime.keyring, person_id)
    after_commit(session, partial(purge_freed_pages, runtime.engine,
                                  tables=(SubjectKey.__tablename__, HistoryRow.__tablename__)),
                 key="purge-freed-pages")
    log.info("person erased: the free text of %d history rows destroyed", erased)


def consumer_handlers(policy: Policy, runtime: ServiceRuntime) -> dict:
    return {events.CASE_REGISTERED: on_case_registered,
            events.CASE_SCREENED: partial(on_case_screened, policy=policy),
            events.CONSENT_CHANGED: partial(on_consent_changed, policy=policy),
            events.PERSON_ERASED: partial(on_person_erased, runtime=runtime)}
