"""Reads the directory for routing (with each service's open referral count), seeds the demo directory, and tells
the other services of each agency change (agency.changed.v1, enlace_platform.agencies)."""

import json
from pathlib import Path

from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from enlace_platform.agencies import AGENCY_CHANGED, Agency, agency_changed_data, default_enforcement
from enlace_platform.outbox import OutboxMessage, add_event
from enlace_platform.topics import REFERRAL_AGENCY
from referral.adapters.orm import AgencyRow, ConsentRow, ReferralRow, ServiceRow
from referral.domain.codes import CONSENT_PURPOSE_REFERRAL
from referral.domain.events import SOURCE
from referral.domain.lifecycle import OPEN
from referral.domain.routing import DirectoryService


_OPEN_STATUSES = [str(s) for s in OPEN]


async def open_counts(session: AsyncSession, service_ids: list[str]) -> dict[str, int]:
    query = (select(ReferralRow.to_service_id, func.count())
             .where(col(ReferralRow.to_service_id).in_(service_ids), col(ReferralRow.status).in_(_OPEN_STATUSES))
             .group_by(ReferralRow.to_service_id))
    return {sid: n for sid, n in (await session.exec(query)).all()}


async def load_directory(session: AsyncSession, jurisdiction: str) -> list[DirectoryService]:
    """The jurisdiction's services with their open referral counts: one query (the counts from the index on
    to_service_id and status)."""
    open_referrals = (select(func.count()).where(ReferralRow.to_service_id == ServiceRow.id,
                                                 col(ReferralRow.status).in_(_OPEN_STATUSES))
                      .correlate(ServiceRow).scalar_subquery())
    rows = (await session.exec(select(ServiceRow, AgencyRow.type, open_referrals).join(AgencyRow)
                               .where(ServiceRow.area == jurisdiction))).all()
    return [to_directory_service(r, agency_type, count) for r, agency_type, count in rows]


def to_directory_service(r: ServiceRow, agency_type: str, open_referrals: int) -> DirectoryService:
    return DirectoryService(service_id=r.id, agency_id=r.agency_id, need_codes=tuple(r.need_codes), area=r.area,
                            age_min=r.age_min, age_max=r.age_max, languages=tuple(r.languages),
                            capacity=r.capacity, active=r.active, agency_type=agency_type,
                            open_referrals=open_referrals)


async def consented_agency_types(session: AsyncSession, person_id: str) -> frozenset[str]:
    rows = (await session.exec(select(ConsentRow.recipient_agency_type).where(
        ConsentRow.person_id == person_id, ConsentRow.purpose == CONSENT_PURPOSE_REFERRAL,
        ConsentRow.granted == True))).all()  # noqa: E712 (SQL expression)
    return frozenset(rows)


async def withdrawn_agency_types(session: AsyncSession, person_id: str) -> frozenset[str]:
    """Agency types the person withdrew their consent to be referred to (and has not given it again)."""
    rows = (await session.exec(select(ConsentRow.recipient_agency_type).where(
        ConsentRow.person_id == person_id, ConsentRow.purpose == CONSENT_PURPOSE_REFERRAL,
        ConsentRow.granted == False))).all()  # noqa: E712 (SQL expression)
    return frozenset(rows)


async def seed_if_empty(session: AsyncSession, seed_path: Path) -> int:
    if (await session.exec(select(AgencyRow.id).limit(1))).first() is not None:
        return 0
    doc = json.loads(seed_path.read_text())
    for agency in doc["agencies"]:
        session.add(AgencyRow(id=agency["id"], name=agency["name"], type=agency["type"],
                              jurisdiction=agency["jurisdiction"],
                              enforcement=bool(agency.get("enforcement", default_enforcement(agency["type"])))))
    await session.flush()
    for agency in doc["agencies"]:
        for svc in agency["services"]:
            session.add(ServiceRow(agency_id=agency["id"], **svc))
    await session.commit()
    return len(doc["agencies"])


# --- the directory's agencies, for the token check of every service ---------------------------------------------

def agency_of(row: AgencyRow) -> Agency:
    return Agency(id=row.id, type=row.type, jurisdiction=row.jurisdiction, enforcement=row.enforcement)


async def load_agencies(session: AsyncSession) -> list[Agency]:
    return [agency_of(r) for r in (await session.exec(select(AgencyRow))).all()]


def stage_agency_changed(session: AsyncSession, row: AgencyRow, *, removed: bool = False) -> None:
    """agency.changed.v1 in the change's transaction (the outbox): the agency's full snapshot, keyed by its id."""
    add_event(session, topic=REFERRAL_AGENCY, case_id=row.id, event_type=AGENCY_CHANGED, source=SOURCE,
              subject=row.id, data=agency_changed_data(agency_id=row.id, name=row.name, agency_type=row.type,
                                                       jurisdiction=row.jurisdiction, enforcement=row.enforcement,
                                                       removed=removed))


async def publish_directory_once(session: AsyncSession) -> int:
    """Every agency's snapshot, unless the directory was ever published (a seeded directory, or one from before
    agency.changed.v1): the other services' copies then start from the directory as it is."""
    if (await session.exec(select(OutboxMessage.id).where(OutboxMessage.type == AGENCY_CHANGED).limit(1))).first():
        return 0
    rows = (await session.exec(select(AgencyRow).order_by(AgencyRow.id))).all()
    for row in rows:
        stage_agency_changed(session, row)
    await session.commit()
    return len(rows)
