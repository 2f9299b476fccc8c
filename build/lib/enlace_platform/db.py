"""Async database engine and sessions for one service's own database."""

import asyncio
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import Table, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Session as SyncSession
from sqlmodel.ext.asyncio.session import AsyncSession


def make_engine(url: str) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine.sync_engine, "connect")
    def _sqlite_pragmas(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin_immediate(conn):
        # Take the write lock up front: a read-then-write transaction can otherwise fail with
        # SQLITE_BUSY when another writer committed in between. SQLite has one writer anyway.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def make_session_factory(engine: AsyncEngine, service_name: str) -> async_sessionmaker[AsyncSession]:
    # A Session subclass per service, so commit hooks (outbox wake-up) stay per service
    # even when several services share one process, as they do in tests.
    sync_cls = type(f"{service_name.title()}Session", (SyncSession,), {})
    return async_sessionmaker(engine, class_=AsyncSession, sync_session_class=sync_cls, expire_on_commit=False)


async def create_tables(engine: AsyncEngine, tables: Iterable[Table]) -> None:
    """Create this service's tables only. Schema migrations (Alembic) come with the domain issues."""
    tables = list(tables)
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync_conn: tables[0].metadata.create_all(sync_conn, tables=tables))


async def ping(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


class CommitWaker:
    """Wakes a waiting loop right after a transaction that carried ``flag`` commits.

    Writers call :meth:`mark` on their session; the relay or dispatcher awaits :meth:`wait`.
    Work written by other replicas is still found by the waiter's fallback timeout.
    """

    def __init__(self, session_factory: async_sessionmaker, flag: str) -> None:
        self._session_class = session_factory.kw["sync_session_class"]
        self._flag = flag
        self._event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        event.listen(self._session_class, "after_commit", self._after_commit)
        event.listen(self._session_class, "after_rollback", self._after_rollback)

    @staticmethod
    def mark(session: AsyncSession | OrmSession, flag: str) -> None:
        session.info[flag] = True

    def _after_commit(self, session: OrmSession) -> None:
        if session.info.pop(self._flag, False):
            self.wake()

    def _after_rollback(self, session: OrmSession) -> None:
        session.info.pop(self._flag, None)

    def wake(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._event.set)
        else:
            self._event.set()

    async def wait(self, timeout_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(self._event.wait(), timeout=timeout_s)
        except TimeoutError:
            pass
        self._event.clear()

    def detach(self) -> None:
        if event.contains(self._session_class, "after_commit", self._after_commit):
            event.remove(self._session_class, "after_commit", self._after_commit)
            event.remove(self._session_class, "after_rollback", self._after_rollback)
