"""Intake's API on PostgreSQL (the real app and a real PostgreSQL database, no broker: events wait in the
outbox): register a family, search by name, read a person, erase one (the key row is gone, from a pg_dump
too, and the API then answers 410), and every request left its audit rows."""

import asyncpg
from sqlmodel import select

from enlace_platform.audit import AuditRecord
from enlace_platform.crypto import SubjectKey
from intake.config import IntakeSettings
from intake.entrypoints.app import create_app
from tests.support.harness import fast_settings, running_app
from tests.support.intake_support import UNREACHABLE_BROKER, family_group, inm, inm_supervisor, outbox_rows


async def test_register_search_read_erase_and_audit_on_postgresql(tmp_path, dev_issuer_dir, postgres_cluster,
                                                                  postgres_database):
    settings = fast_settings(IntakeSettings, tmp_path=tmp_path, bootstrap=UNREACHABLE_BROKER, prefix="",
                             dev_issuer_dir=dev_issuer_dir, database_url=postgres_cluster.url(postgres_database))
    officer, supervisor = inm(dev_issuer_dir), inm_supervisor(dev_issuer_dir)
    app = create_app(settings)
    async with running_app(app) as client:
        runtime = app.state.runtime
        r = await client.post("/cases", headers=officer, json=family_group())
        assert r.status_code == 201, r.text
        case = r.json()
        adult = case["persons"][3]
        base = f"/cases/{case['id']}/persons/{adult['id']}"

        found = (await client.post("/cases/search", headers=officer, json={"name": "Ramón Díaz"})).json()
        assert [c["id"] for c in found] == [case["id"]]
        assert (await client.post("/cases/search", headers=officer, json={"document_number": "GT-99-1234"})).json()
        person = (await client.get(base, headers=officer)).json()
        assert (person["given_names"], person["family_names"]) == ("Ramón", "Díaz")

        async with runtime.sessions() as session:
            wrapped_key = (await session.get(SubjectKey, adult["id"])).wrapped_key
        assert wrapped_key.hex().encode() in postgres_cluster.dump(postgres_database), "a dump holds the live key"

        r = await client.post(f"{base}/erasure", headers=supervisor, json={"reason_code": "ERASURE_REQUEST"})
        assert r.status_code == 200, r.text
        r = await client.get(base, headers=officer)
        assert r.status_code == 410 and r.json()["type"].endswith("/erased")
        assert (await client.post("/cases/search", headers=officer, json={"name": "Ramón"})).json() == []
        assert len(await outbox_rows(runtime, "person.erased.v1")) == 1

        async with runtime.sessions() as session:
            assert await session.get(SubjectKey, adult["id"]) is None
            keys_left = len((await session.exec(select(SubjectKey))).all())
            audit = (await session.exec(select(AuditRecord))).all()
        assert keys_left == len(case["persons"]) - 1, "only that person's key is shredded"

    assert wrapped_key.hex().encode() not in postgres_cluster.dump(postgres_database)
    assert wrapped_key not in await _tuples(postgres_cluster.dsn(postgres_database), "subject_keys"), \
        "the shred's VACUUM removed the dead tuple: no tuple of the table holds the key, live or dead"

    by_route = {(a.method, a.route, a.object_type, a.object_id, a.status) for a in audit}
    assert ("POST", "/cases", "case", case["id"], 201) in by_route
    assert ("POST", "/cases/search", "case", case["id"], 200) in by_route
    assert ("GET", "/cases/{case_id}/persons/{person_id}", "person", adult["id"], 200) in by_route
    assert ("POST", "/cases/{case_id}/persons/{person_id}/erasure", "person", adult["id"], 200) in by_route
    assert ("GET", "/cases/{case_id}/persons/{person_id}", "person", adult["id"], 410) in by_route
    assert all(a.agency_id == "MX-INM" and a.seq is not None for a in audit)


async def _tuples(dsn: str, table: str) -> bytes:
    """The data of every tuple in a table's pages, live or dead, as pageinspect reads it from the pages.

    Not the pages' free space: VACUUM frees a dead tuple's space without zeroing it (docs/operations.md)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
        pages = await conn.fetchval(f"SELECT pg_relation_size('{table}') / current_setting('block_size')::int")
        rows = [await conn.fetch(f"SELECT t_data FROM heap_page_items(get_raw_page('{table}', {n}))")
                for n in range(pages)]
        return b"".join(r["t_data"] or b"" for page in rows for r in page)
    finally:
        await conn.close()
