"""The audit log: every authenticated request is recorded before its response starts, append-only, read by auditors."""

import sqlite3
from pathlib import Path
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, Request
from sqlalchemy import text

from enlace_platform.access import Allowed, Permission
from enlace_platform.auth import Principal
from enlace_platform.audit import Purpose, note_objects
from enlace_platform.problems import Problem
from enlace_platform.runtime import ServiceRuntime, create_service_app
from enlace_platform.settings import ServiceSettings
from tests.support.harness import bearer, free_port, running_app

SECRET_NAME = "Xochitl Quispe-Audit"


def _router() -> APIRouter:
    router = APIRouter(dependencies=[Purpose("case_management")])

    @router.get("/things/{thing_id}")
    async def read_thing(thing_id: str, principal: Annotated[Principal, Allowed(Permission.READ_CASES)]) -> dict:
        if thing_id == "missing":
            raise Problem(404, detail="No such thing.")
        return {"id": thing_id, "name": SECRET_NAME}

    @router.get("/things")
    async def list_things(request: Request, principal: Annotated[Principal, Allowed(Permission.READ_CASES)]) -> list:
        note_objects(request, "thing", ["t1", "t2"])
        return ["t1", "t2"]

    return router


@pytest.fixture
async def world(tmp_path: Path, dev_issuer_dir: Path):
    settings = ServiceSettings(service_name="audited", database_url=f"sqlite+aiosqlite:///{tmp_path / 'a.db'}",
                               kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",  # nothing listens: API only
                               auth_dev_public_key_path=str(dev_issuer_dir / "public.pem"), log_json=False)
    runtime = ServiceRuntime(settings=settings, tables=[])
    app = create_service_app(title="t", description="t", runtime=runtime, routers=[_router()])
    async with running_app(app) as client:
        yield client, runtime, tmp_path / "a.db"


def _token(dev_issuer_dir, agency_id="MX-INM", agency_type="migration_authority", jurisdiction="MX",
           roles=("caseworker",)):
    return bearer(dev_issuer_dir, agency_id, agency_type, jurisdiction, roles=list(roles))


async def _audit(client, headers, **params) -> list[dict]:
    response = await client.get("/audit", headers=headers, params=params)
    assert response.status_code == 200, response.text
    return response.json()["items"]


async def test_a_read_is_recorded_with_actor_object_purpose_status_and_trace(world, dev_issuer_dir, spans):
    client, _, _ = world
    spans.clear()
    response = await client.get("/things/t1", headers=_token(dev_issuer_dir), params={"q": SECRET_NAME})
    assert response.status_code == 200
    [entry] = await _audit(client, _token(dev_issuer_dir, roles=("auditor",)), object_id="t1")

    server_span = next(s for s in spans.get_finished_spans() if s.attributes.get("http.route") == "/things/{thing_id}")
    assert entry["agency_id"] == "MX-INM" and entry["user_id"] == "mx-inm-user"
    assert entry["roles"] == ["caseworker"] and entry["action"] == "read" and entry["method"] == "GET"
    assert entry["route"] == "/things/{thing_id}" and entry["object_type"] == "thing"
    assert entry["purpose"] == "case_management" and entry["status"] == 200
    assert entry["trace_id"] == format(server_span.context.trace_id, "032x")
    assert SECRET_NAME not in str(entry)  # the query string and the body are never recorded


async def test_refusals_are_recorded_too_but_not_calls_without_a_valid_token(world, dev_issuer_dir):
    client, _, _ = world
    assert (await client.get("/things/missing", headers=_token(dev_issuer_dir))).status_code == 404
    assert (await client.get("/things/t9", headers=_token(dev_issuer_dir, roles=("auditor",)))).status_code == 403
    assert (await client.get("/things/t8")).status_code == 401

    auditor = _token(dev_issuer_dir, roles=("auditor",))
    assert [e["status"] for e in await _audit(client, auditor, object_id="missing")] == [404]
    assert [e["status"] for e in await _audit(client, auditor, object_id="t9")] == [403]
    assert await _audit(client, auditor, object_id="t8") == []


async def test_objects_a_handler_names_get_a_row_each(world, dev_issuer_dir):
    client, _, _ = world
    assert (await client.get("/things", headers=_token(dev_issuer_dir))).status_code == 200
    entries = await _audit(client, _token(dev_issuer_dir, roles=("auditor",)), object_type="thing")
    assert sorted(e["object_id"] for e in entries) == ["t1", "t2"]
    assert len({e["request_id"] for e in entries}) == 1


async def test_auditors_see_their_agency_and_the_coordinators_auditor_its_jurisdiction(world, dev_issuer_dir):
    client, _, _ = world
    await client.get("/things/mx", headers=_token(dev_issuer_dir))
    await client.get("/things/gt", headers=_token(dev_issuer_dir, "GT-IGM", "migration_authority", "GT"))

    def seen(entries):
        return {e["object_id"] for e in entries if e["route"] == "/things/{thing_id}"}

    assert seen(await _audit(client, _token(dev_issuer_dir, roles=("auditor",)))) == {"mx"}
    assert seen(await _audit(client, _token(dev_issuer_dir, "MX-COMAR", "asylum_office", roles=("auditor",)))) == set()
    assert seen(await _audit(client, _token(dev_issuer_dir, "MX-COORD", "coordinator", roles=("auditor",)))) == {"mx"}
    assert seen(await _audit(client, _token(dev_issuer_dir, "GT-COORD", "coordinator", "GT",
                                             roles=("auditor",)))) == {"gt"}


async def test_only_auditors_read_the_log_and_it_pages(world, dev_issuer_dir):
    client, _, _ = world
    for i in range(3):
        await client.get(f"/things/p{i}", headers=_token(dev_issuer_dir))
    for role in ("caseworker", "supervisor", "coordinator"):
        refused = await client.get("/audit", headers=_token(dev_issuer_dir, roles=(role,)))
        assert refused.status_code == 403 and refused.json()["permission"] == "audit:read"
    auditor = _token(dev_issuer_dir, roles=("auditor",))
    first = (await client.get("/audit", headers=auditor, params={"limit": 2, "object_type": "thing"})).json()
    rest = (await client.get("/audit", headers=auditor,
                             params={"limit": 2, "object_type": "thing", "after": first["next_after"]})).json()
    assert [e["object_id"] for e in first["items"] + rest["items"]] == ["p0", "p1", "p2"]
    assert rest["next_after"] is None


async def test_the_log_refuses_update_and_delete(world, dev_issuer_dir):
    client, _, path = world
    await client.get("/things/t1", headers=_token(dev_issuer_dir))
    with sqlite3.connect(path) as db:
        for statement in ("UPDATE audit_log SET agency_id = 'someone-else'", "DELETE FROM audit_log"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                db.execute(statement)
        assert db.execute("SELECT count(*) FROM audit_log WHERE agency_id = 'MX-INM'").fetchone()[0] >= 1


async def test_no_record_no_data(world, dev_issuer_dir):
    """If the record cannot be written, the caller gets a 500 and not the data."""
    client, runtime, _ = world
    async with runtime.engine.begin() as conn:
        await conn.execute(text("DROP TABLE audit_log"))
    # As a server sees it: the app's error becomes a 500 response instead of reaching the client.
    transport = httpx.ASGITransport(app=client._transport.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as server_view:
        response = await server_view.get("/things/t1", headers=_token(dev_issuer_dir))
    assert response.status_code == 500
    assert SECRET_NAME not in response.text
