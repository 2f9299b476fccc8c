"""A service's copy of the directory (enlace_platform.agencies): seeded once, then following agency.changed.v1."""

import json

from sqlmodel import select

from enlace_platform.agencies import (
    AGENCY_CHANGED, Agency, AgencyRegistry, KnownAgency, agency_changed_data, agency_changed_handler,
    load_known_agencies, seed_agencies, seed_known_agencies,
)
from enlace_platform.consumer import run_after_commit
from enlace_platform.envelope import Envelope
from tests.support.harness import REPO, service_database

DEMO = REPO / "deploy" / "demo" / "agencies.json"


def _changed(agency_id: str, agency_type: str, *, enforcement: bool = False, removed: bool = False) -> Envelope:
    data = agency_changed_data(agency_id=agency_id, name=agency_id, agency_type=agency_type, jurisdiction="MX",
                               enforcement=enforcement, removed=removed)
    return Envelope(type=AGENCY_CHANGED, source="/enlace/referral", key=agency_id, subject=agency_id, data=data)


def test_the_seed_file_gives_each_agency_its_types_enforcement_default_unless_it_says_otherwise(tmp_path):
    seed = tmp_path / "agencies.json"
    seed.write_text(json.dumps({"agencies": [
        {"id": "MX-INM", "type": "migration_authority", "jurisdiction": "MX", "services": []},
        {"id": "MX-POL", "type": "health", "jurisdiction": "MX", "enforcement": True, "services": []},
        {"id": "MX-COORD", "type": "coordinator", "jurisdiction": "MX", "services": []}]}))
    by_id = {a.id: a for a in seed_agencies(seed)}
    assert by_id["MX-INM"].enforcement and by_id["MX-POL"].enforcement and not by_id["MX-COORD"].enforcement
    assert by_id["MX-COORD"].coordinator and not by_id["MX-INM"].coordinator


async def test_seeded_once_then_every_change_and_removal_follows_the_topic(tmp_path):
    registry = AgencyRegistry()
    handle = agency_changed_handler(registry)
    async with service_database(tmp_path / "copy.db", [KnownAgency.__table__]) as sessions:
        async with sessions() as session:
            assert await seed_known_agencies(session, DEMO) == 32
        async with sessions() as session:
            assert await seed_known_agencies(session, DEMO) == 0, "only an empty table is seeded"
            registry.replace(await load_known_agencies(session))
        assert registry.get("MX-COMAR") == Agency("MX-COMAR", "asylum_office", "MX", enforcement=False)

        for envelope in (_changed("MX-NUEVA", "health"), _changed("MX-COMAR", "asylum_office", enforcement=True),
                         _changed("MX-PSI", "psychosocial", removed=True)):
            async with sessions() as session:
                await handle(session, envelope)
                if envelope.key == "MX-NUEVA":
                    assert registry.get("MX-NUEVA") is None, "applied only once committed"
                await session.commit()
                await run_after_commit(session)
        assert registry.get("MX-NUEVA") == Agency("MX-NUEVA", "health", "MX", enforcement=False)
        assert registry.get("MX-COMAR").enforcement and registry.get("MX-PSI") is None
        async with sessions() as session:  # the table says the same, for a restart or another replica
            stored = {r.id: r for r in (await session.exec(select(KnownAgency))).all()}
        assert stored["MX-COMAR"].enforcement and "MX-NUEVA" in stored and "MX-PSI" not in stored


def test_a_registry_swaps_whole_directories():
    registry = AgencyRegistry([Agency("A", "health", "MX", False)])
    registry.put(Agency("B", "coordinator", "MX", False))
    registry.remove("A")
    assert "A" not in registry and registry.get("B").coordinator and len(registry) == 1
