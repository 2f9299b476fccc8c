"""Which errors are faults outside a record (the consumer pauses and retries) and which are not (a bug is
retried a few times, poison is dead-lettered): real errors from the real drivers, no broker needed."""

import sqlite3

import httpx
import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from enlace_platform.consumer import PoisonMessage, is_transient
from enlace_platform.db import make_engine
from tests.support.harness import free_port


async def _error_of(engine, sql: str, setup: tuple[str, ...] = ()) -> Exception:
    try:
        async with engine.begin() as conn:
            for statement in setup:
                await conn.execute(text(statement))
            await conn.execute(text(sql))
    except (SQLAlchemyError, OSError) as exc:  # asyncpg's connection errors are not wrapped
        return exc
    finally:
        await engine.dispose()
    raise AssertionError(f"{sql} did not fail")


async def test_a_locked_sqlite_database_is_transient(tmp_path):
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    try:
        engine = make_engine(f"sqlite+aiosqlite:///{path}")
        error = await _error_of(engine, "INSERT INTO t VALUES (1)", setup=("PRAGMA busy_timeout=50",))
    finally:
        holder.close()
    assert "database is locked" in str(error)
    assert is_transient(error)


async def test_a_full_sqlite_database_is_transient(tmp_path):
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'full.db'}")
    error = await _error_of(engine, "INSERT INTO t VALUES (randomblob(100000))",
                            setup=("CREATE TABLE t (x)", "PRAGMA max_page_count=1"))
    assert "database or disk is full" in str(error)
    assert is_transient(error)


async def test_an_unreachable_postgresql_is_transient():
    engine = make_engine(f"postgresql+asyncpg://enlace:x@127.0.0.1:{free_port()}/enlace")
    assert is_transient(await _error_of(engine, "SELECT 1"))


@pytest.mark.parametrize("sql, setup", [
    ("SELEC 1", ()),  # a bug in our SQL
    ("SELECT * FROM no_such_table", ()),
    ("INSERT INTO t VALUES (1)", ("CREATE TABLE t (x PRIMARY KEY)", "INSERT INTO t VALUES (1)")),  # integrity
])
async def test_errors_in_the_statement_or_the_data_are_not(tmp_path, sql, setup):
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'bugs.db'}")
    assert not is_transient(await _error_of(engine, sql, setup))


def test_broker_and_downstream_faults_are_transient_and_poison_or_bugs_are_not():
    assert is_transient(KafkaConnectionError("broker gone"))
    assert is_transient(TimeoutError())
    assert is_transient(httpx.ReadTimeout("slow receiver"))
    assert is_transient(ConnectionRefusedError())
    assert not is_transient(MessageSizeTooLargeError())
    assert not is_transient(PoisonMessage("never"))
    assert not is_transient(KeyError("a bug"))
    try:
        try:
            raise OSError("disk")
        except OSError:
            raise ValueError("handled it, then failed for reasons of its own")  # noqa: B904 (on purpose)
    except ValueError as exc:
        assert not is_transient(exc), "only explicit causes count"
