"""The audit log: every authenticated request is recorded before its response starts, append-only, read by auditors;
a write's record is written by the write's own transaction."""

import sqlite3
from pathlib import Path
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, Request
from sqlalchemy import text
from sqlmodel import Field, SQLModel

from enlace_platform.access import Allowed, Permission
from enlace_platform.auth import Principal
from enlace_platform.audit import Purpose, answer_status, note_objects
from enlace_platform.problems import Problem
from enlace_platform.runtime import DbSession, ServiceRuntime, create_service_app
from enlace_platform.settings import ServiceSettings
from tests.support.harness import bearer, free_port, running_app, directory_for_tests

SECRET_NAME = "Xochitl Quispe-Audit"


class Jotting(SQLModel, table=True):
    __tablename__ = "audit_test_jottings"

    id: str = Field(primary_key=True)


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

    @router.post("/things/{thing_id}/jottings", status_code=201)
    async def jot(thing_id: str, request: Request, principal: Annotated[Principal, Allowed(Permission.WRITE_CASES)],
                  session: DbSession, jotting_id: str, outcome: str = "created", receipt: str | None = None) -> dict:
        """Writes a jotting; ``outcome``: created, refused (kept on record, answered 409) or failed (a 500
        after the commit). A ``receipt`` is named after the commit."""
        note_objects(request, "jotting", [jotting_id])
        session.add(Jotting(id=jotting_id))
        if outcome == "refused":
            answer_status(session, 409)
        await session.commit()
        if outcome == "refused":
            raise Problem(409, detail="Refused, and the attempt kept on record.")
        if outcome == "failed":
            raise RuntimeError("after the commit")
        if receipt is not None:
            note_objects(request, "receipt", [receipt])
        return {"id": jotting_id}

    return router


@pytest.fixture
async def world(tmp_path: Path, dev_issuer_dir: Path):
    settings = ServiceSettings(service_name="audited", database_url=f"sqlite+aiosqlite:///{tmp_path / 'a.db'}",
                               kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",  # nothing listens: API only
                               auth_dev_public_key_path=str(dev_issuer_dir / "public.pem"), log_json=False)
    runtime = ServiceRuntime(settings=settings, tables=[Jotting.__table__], agencies=directory_for_tests())
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


def _jottings(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [row[0] for row in db.execute("SELECT id FROM audit_test_jottings")]


def _write_transactions(runtime) -> list[int]:
    """Counts the commits of the runtime's write sessions from now on."""
    from sqlalchemy import event

    commits = []
    event.listen(runtime.sessions.kw["sync_session_class"], "after_commit", lambda session: commits.append(1))
    return commits


async def test_a_write_is_recorded_by_its_own_transaction(world, dev_issuer_dir):
    client, runtime, _ = world
    commits = _write_transactions(runtime)
    response = await client.post("/things/t1/jottings", headers=_token(dev_issuer_dir), params={"jotting_id": "j1"})
    assert response.status_code == 201
    assert len(commits) == 1, "the change and its audit rows in one transaction; nothing more before the response"
    entries = [e for e in await _audit(client, _token(dev_issuer_dir, roles=("auditor",)))
               if e["route"] == "/things/{thing_id}/jottings"]
    assert [(e["object_type"], e["object_id"], e["status"], e["action"]) for e in entries] == [
        ("thing", "t1", 201, "write"), ("jotting", "j1", 201, "write")]


async def test_a_write_whose_record_cannot_be_written_does_not_happen(world, dev_issuer_dir):
    client, runtime, path = world
    async with runtime.engine.begin() as conn:
        await conn.execute(text("DROP TABLE audit_log"))
    transport = httpx.ASGITransport(app=client._transport.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as server_view:
        response = await server_view.post("/things/t1/jottings", headers=_token(dev_issuer_dir),
                                          params={"jotting_id": "unrecorded"})
    assert response.status_code == 500
    assert _jottings(path) == [], "the change rolled back with its record"


async def test_objects_named_after_the_commit_and_a_failure_after_it_are_recorded_too(world, dev_issuer_dir):
    client, _, path = world
    assert (await client.post("/things/t2/jottings", headers=_token(dev_issuer_dir),
                              params={"jotting_id": "j2", "receipt": "receipt-j2"})).status_code == 201
    transport = httpx.ASGITransport(app=client._transport.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as server_view:
        failed = await server_view.post("/things/t3/jottings", headers=_token(dev_issuer_dir),
                                        params={"jotting_id": "j3", "outcome": "failed"})
    assert failed.status_code == 500 and sorted(_jottings(path)) == ["j2", "j3"]

    auditor = _token(dev_issuer_dir, roles=("auditor",))
    named_later = await _audit(client, auditor, object_id="receipt-j2")
    assert [(e["object_type"], e["status"]) for e in named_later] == [("receipt", 201)]
    [written] = await _audit(client, auditor, object_id="j2")
    assert named_later[0]["request_id"] == written["request_id"]
    # The write committed (its record says so), then the caller got a 500: both are on record.
    assert sorted(e["status"] for e in await _audit(client, auditor, object_id="j3")) == [201, 500]


async def test_a_refusal_kept_on_record_carries_the_status_the_caller_got(world, dev_issuer_dir):
    client, _, path = world
    response = await client.post("/things/t4/jottings", headers=_token(dev_issuer_dir),
                                 params={"jotting_id": "j4", "outcome": "refused"})
    assert response.status_code == 409 and _jottings(path) == ["j4"]
    auditor = _token(dev_issuer_dir, roles=("auditor",))
    assert [e["status"] for e in await _audit(client, auditor, object_id="j4")] == [409]
    assert [e["status"] for e in await _audit(client, auditor, object_id="t4")] == [409]


async def test_a_write_refused_before_any_commit_is_recorded_by_the_middleware(world, dev_issuer_dir):
    client, _, path = world
    refused = await client.post("/things/t5/jottings", headers=_token(dev_issuer_dir, roles=("auditor",)),
                                params={"jotting_id": "j5"})
    assert refused.status_code == 403 and _jottings(path) == []
    [entry] = await _audit(client, _token(dev_issuer_dir, roles=("auditor",)), object_id="t5")
    assert (entry["status"], entry["action"], entry["method"]) == (403, "write", "POST")
