"""On SQLite, reads never take the write lock: read sessions begin deferred (WAL readers run beside the writer),
write sessions take the lock up front. GET requests, /metrics and /readyz read; the other methods write."""

import sqlite3
from pathlib import Path
from typing import Annotated

import pytest
from fastapi import APIRouter
from sqlalchemy import text
from sqlmodel import Field, SQLModel

from enlace_platform.access import Allowed, Permission
from enlace_platform.auth import Principal
from enlace_platform.audit import Purpose
from enlace_platform.db import WriteInReadSession, make_engine, make_read_session_factory, make_session_factory
from enlace_platform.runtime import DbSession, ReadSession, ServiceRuntime, create_service_app
from enlace_platform.settings import ServiceSettings
from tests.support.harness import bearer, free_port, running_app, directory_for_tests


class Scribble(SQLModel, table=True):
    __tablename__ = "read_session_test_scribbles"

    id: str = Field(primary_key=True)


def write_lock_is_free(path: Path) -> bool:
    """Whether another connection could start writing right now (it does not wait: timeout 0)."""
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError as exc:
        assert "locked" in str(exc)
        return False
    finally:
        other.close()


@pytest.fixture
async def database(tmp_path: Path):
    path = tmp_path / "s.db"
    engine = make_engine(f"sqlite+aiosqlite:///{path}")
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE notes (body TEXT)"))
        await conn.execute(text("INSERT INTO notes VALUES ('first')"))
    try:
        yield engine, path
    finally:
        await engine.dispose()


async def test_a_read_session_leaves_the_write_lock_free_and_a_write_session_holds_it(database):
    engine, path = database
    async with make_read_session_factory(engine, "s")() as session:
        assert (await session.exec(text("SELECT body FROM notes"))).all() == [("first",)]
        assert write_lock_is_free(path), "a reader inside its transaction"
    async with make_session_factory(engine, "s")() as session:
        await session.exec(text("SELECT body FROM notes"))
        assert not write_lock_is_free(path), "a writer takes the lock when it begins"
        await session.commit()
    assert write_lock_is_free(path)


async def test_a_read_sees_committed_data_while_another_connection_holds_the_write_lock(database):
    engine, path = database
    writer = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("INSERT INTO notes VALUES ('not yet committed')")
        async with make_read_session_factory(engine, "s")() as session:
            assert (await session.exec(text("SELECT body FROM notes"))).all() == [("first",)]
    finally:
        writer.execute("ROLLBACK")
        writer.close()


async def test_a_read_session_refuses_to_write(database):
    engine, _ = database
    async with make_read_session_factory(engine, "s")() as session:
        session.add(Scribble(id="never"))
        with pytest.raises(WriteInReadSession):
            await session.commit()


# --- through the app ------------------------------------------------------------------------------

def _router(path: Path, seen: dict) -> APIRouter:
    router = APIRouter(dependencies=[Purpose("case_management")])

    @router.get("/notes")
    async def read_notes(principal: Annotated[Principal, Allowed(Permission.READ_CASES)], session: DbSession) -> list:
        rows = (await session.exec(text("SELECT body FROM notes"))).all()
        seen["GET"] = write_lock_is_free(path)
        return [row[0] for row in rows]

    @router.post("/notes", status_code=201)
    async def add_note(principal: Annotated[Principal, Allowed(Permission.WRITE_CASES)], session: DbSession) -> dict:
        await session.exec(text("INSERT INTO notes VALUES ('second')"))
        seen["POST"] = write_lock_is_free(path)
        await session.commit()
        return {}

    @router.post("/notes/search")
    async def search_notes(principal: Annotated[Principal, Allowed(Permission.READ_CASES)],
                           session: ReadSession) -> list:
        rows = (await session.exec(text("SELECT body FROM notes"))).all()
        seen["POST search"] = write_lock_is_free(path)
        return [row[0] for row in rows]

    return router


@pytest.fixture
async def app_and_db(tmp_path: Path, dev_issuer_dir: Path):
    path = tmp_path / "a.db"
    settings = ServiceSettings(service_name="reader", database_url=f"sqlite+aiosqlite:///{path}",
                               kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",  # nothing listens: API only
                               auth_dev_public_key_path=str(dev_issuer_dir / "public.pem"), log_json=False)
    runtime = ServiceRuntime(settings=settings, tables=[], agencies=directory_for_tests())
    seen: dict[str, bool] = {}
    app = create_service_app(title="t", description="t", runtime=runtime, routers=[_router(path, seen)])
    async with running_app(app) as client:
        async with runtime.engine.begin() as conn:
            await conn.execute(text("CREATE TABLE notes (body TEXT)"))
        yield client, path, seen


async def test_get_requests_and_read_session_routes_read_without_the_write_lock_and_others_write(app_and_db, dev_issuer_dir):
    client, _, seen = app_and_db
    caseworker = bearer(dev_issuer_dir, "MX-INM", "migration_authority")
    assert (await client.post("/notes", headers=caseworker)).status_code == 201
    assert (await client.get("/notes", headers=caseworker)).json() == ["second"]
    assert (await client.post("/notes/search", headers=caseworker)).json() == ["second"]
    assert seen == {"POST": False, "GET": True, "POST search": True}


async def test_metrics_and_readiness_answer_while_another_connection_holds_the_write_lock(app_and_db):
    client, path, _ = app_and_db
    writer = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        assert (await client.get("/metrics")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.json()["checks"]["database"] == "ok"  # Kafka is not there: 503 all the same
    finally:
        writer.execute("ROLLBACK")
        writer.close()
