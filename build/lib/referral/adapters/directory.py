"""Loads the directory for routing, and seeds the demo directory into an empty database."""

import json
from pathlib import Path

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from referral.adapters.orm import AgencyRow, ServiceRow
from referral.domain.routing import DirectoryService


async def load_directory(session: AsyncSession, jurisdiction: str) -> list[DirectoryService]:
    rows = (await session.exec(select(ServiceRow).where(ServiceRow.area == jurisdiction))).all()
    return [
        DirectoryService(service_id=r.id, agency_id=r.agency_id, need_codes=tuple(r.need_codes), area=r.area,
                         age_min=r.age_min, age_max=r.age_max, languages=tuple(r.languages),
                         capacity=r.capacity, active=r.active)
        for r in rows
    ]


async def seed_if_empty(session: AsyncSession, seed_path: Path) -> int:
    if (await session.exec(select(AgencyRow.id).limit(1))).first() is not None:
        return 0
    doc = json.loads(seed_path.read_text())
    for agency in doc["agencies"]:
        session.add(AgencyRow(id=agency["id"], name=agency["name"], type=agency["type"],
                              jurisdiction=agency["jurisdiction"]))
        for svc in agency["services"]:
            session.add(ServiceRow(agency_id=agency["id"], **svc))
    await session.commit()
    return len(doc["agencies"])
