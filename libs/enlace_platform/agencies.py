"""Agency identity as the directory decides it, in every service.

A token names an agency id; what that agency is (its type, its jurisdiction, whether it coordinates, whether
it is enforcement) is the directory's word, never the token's. The directory lives in the referral service.
It publishes a full snapshot of an agency (``agency.changed.v1``, removal included) on the compacted topic
``referral.agency``, keyed by agency id, whenever one is seeded, created, changed or removed. Intake and
notification keep their own copy (table ``known_agencies``), seeded from the same seed file at their first
start so that no token fails while the topic is read, and kept current by that topic.

Each process holds the directory in an :class:`AgencyRegistry` in memory, which the token check reads: the
replica whose consumer took a change applies it once committed; every replica reloads its table now and then
(``agency_refresh_s``), so a change reaches the replicas whose consumer did not see it, without a restart.
"""

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel import Field, SQLModel, delete, select
from sqlmodel.ext.asyncio.session import AsyncSession

from enlace_platform.consumer import PoisonMessage, after_commit
from enlace_platform.envelope import Envelope
from enlace_platform.firewall import ENFORCEMENT_TYPES

log = logging.getLogger(__name__)

AGENCY_CHANGED = "agency.changed.v1"
COORDINATOR = "coordinator"


def default_enforcement(agency_type: str) -> bool:
    """An agency that decides removals is enforcement unless the directory says otherwise."""
    return agency_type in ENFORCEMENT_TYPES


@dataclass(frozen=True)
class Agency:
    id: str
    type: str
    jurisdiction: str
    enforcement: bool

    @property
    def coordinator(self) -> bool:
        return self.type == COORDINATOR


class AgencyRegistry:
    """The directory's agencies by id, in memory. Each change swaps in a new dict, so a reader (the token check
    runs in a worker thread) sees a whole directory, old or new, never a half-built one."""

    def __init__(self, agencies: Iterable[Agency] = ()) -> None:
        self._by_id: dict[str, Agency] = {a.id: a for a in agencies}

    def get(self, agency_id: str) -> Agency | None:
        return self._by_id.get(agency_id)

    def replace(self, agencies: Iterable[Agency]) -> None:
        self._by_id = {a.id: a for a in agencies}

    def put(self, agency: Agency) -> None:
        self._by_id = {**self._by_id, agency.id: agency}

    def remove(self, agency_id: str) -> None:
        self._by_id = {k: v for k, v in self._by_id.items() if k != agency_id}

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, agency_id: object) -> bool:
        return agency_id in self._by_id


# --- the directory's seed file -----------------------------------------------------------------------------

def seed_agencies(seed_path: Path) -> list[Agency]:
    """The agencies of a directory seed file (deploy/demo/agencies.json): an agency may carry an
    ``enforcement`` mark; without one, its type's default."""
    doc = json.loads(seed_path.read_text())
    return [Agency(id=a["id"], type=a["type"], jurisdiction=a["jurisdiction"],
                   enforcement=bool(a.get("enforcement", default_enforcement(a["type"]))))
            for a in doc["agencies"]]


# --- the event ------------------------------------------------------------------------------------------------

def agency_changed_data(*, agency_id: str, name: str, agency_type: str, jurisdiction: str, enforcement: bool,
                        removed: bool) -> dict[str, Any]:
    """The payload of agency.changed.v1: the agency as it is now (as it was, for a removal)."""
    return {"agency_id": agency_id, "name": name, "type": agency_type, "jurisdiction": jurisdiction,
            "enforcement": enforcement, "coordinator": agency_type == COORDINATOR, "removed": removed}


# --- a service's own copy (intake, notification) ---------------------------------------------------------

class KnownAgency(SQLModel, table=True):
    """An agency of the directory as this service last heard of it (agency.changed.v1)."""
    __tablename__ = "known_agencies"

    id: str = Field(primary_key=True)
    type: str
    jurisdiction: str
    enforcement: bool


def _agency_of(row: KnownAgency) -> Agency:
    return Agency(id=row.id, type=row.type, jurisdiction=row.jurisdiction, enforcement=row.enforcement)


async def load_known_agencies(session: AsyncSession) -> list[Agency]:
    return [_agency_of(r) for r in (await session.exec(select(KnownAgency))).all()]


async def seed_known_agencies(session: AsyncSession, seed_path: Path) -> int:
    """At the first start only (an empty table): the seed file's agencies; the topic then brings every change."""
    if (await session.exec(select(KnownAgency.id).limit(1))).first() is not None:
        return 0
    agencies = seed_agencies(seed_path)
    for agency in agencies:
        session.add(KnownAgency(id=agency.id, type=agency.type, jurisdiction=agency.jurisdiction,
                                enforcement=agency.enforcement))
    await session.commit()
    return len(agencies)


def agency_changed_handler(registry: AgencyRegistry):
    """The consumer handler of agency.changed.v1: the table follows the snapshot, and so does the registry once
    the transaction has committed (a rolled-back change is redelivered, never half applied)."""
    async def on_agency_changed(session: AsyncSession, envelope: Envelope) -> None:
        data = envelope.data
        agency_id = data.get("agency_id")
        if not isinstance(agency_id, str) or not agency_id:
            raise PoisonMessage(f"{envelope.type} payload lacks agency_id")
        if data.get("removed"):
            await session.exec(delete(KnownAgency).where(KnownAgency.id == agency_id))

            async def forget() -> None:
                registry.remove(agency_id)
            after_commit(session, forget)
            return
        agency = Agency(id=agency_id, type=str(data["type"]), jurisdiction=str(data["jurisdiction"]),
                        enforcement=bool(data["enforcement"]))
        await session.merge(KnownAgency(id=agency.id, type=agency.type, jurisdiction=agency.jurisdiction,
                                        enforcement=agency.enforcement))

        async def learn() -> None:
            registry.put(agency)
        after_commit(session, learn)

    return on_agency_changed


def follow_directory(runtime, *, seed_path: str | None, refresh_s: float) -> None:
    """Wires a service that keeps its own copy of the directory: seed at first start and load the registry
    (before the API serves), consume referral.agency, and reload the registry every ``refresh_s``."""
    from enlace_platform.runtime import ConsumerSpec, every  # the runtime imports this module
    from enlace_platform.topics import REFERRAL_AGENCY

    registry: AgencyRegistry = runtime.agencies

    async def reload(rt) -> None:
        async with rt.read_sessions() as session:
            registry.replace(await load_known_agencies(session))

    async def seed_and_load(rt) -> None:
        if seed_path:
            async with rt.sessions() as session:
                seeded = await seed_known_agencies(session, Path(seed_path))
            if seeded:
                log.info("directory copy seeded with %d agencies from the seed file", seeded)
        await reload(rt)

    runtime.on_startup.insert(0, seed_and_load)
    runtime.background.append(every(refresh_s, reload, name="directory-refresh"))
    runtime.consumers.append(ConsumerSpec(name=f"{runtime.settings.service_name}.directory", topics=[REFERRAL_AGENCY],
                                          handlers={AGENCY_CHANGED: agency_changed_handler(registry)}))
