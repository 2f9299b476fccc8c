"""Async database engine and sessions for one service's own database."""

import asyncio
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from sqlalchemy import Table, event, insert, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.util import await_only
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.sqlalchemy import __version__ as _sqlalchemy_instrumentation_version
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from opentelemetry.semconv.metrics import MetricInstruments
from sqlalchemy.ext import asyncio as sa_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Session as SyncSession
from sqlmodel.ext.asyncio.session import AsyncSession

# An execution option: the connection's transactions only read (see make_engine's begin hook).
READ_ONLY = "enlace_read_only"


def _trace_sql(engine: AsyncEngine) -> None:
    """A span per SQL statement of this engine (ENLACE_TRACE_SQL): several per request, so off by default.

    The instrumentation's engine tracer, attached to one engine rather than to every engine of the process.
    It declares sqlalchemy < 2.1 but works with its unchanged engine events API.
    """
    name, version = "opentelemetry.instrumentation.sqlalchemy", _sqlalchemy_instrumentation_version
    connections = metrics.get_meter(name, version).create_up_down_counter(
        MetricInstruments.DB_CLIENT_CONNECTIONS_USAGE, unit="connections",
        description="The number of connections that are currently in state described by the state attribute.")
    EngineTracer(trace.get_tracer(name, version), engine.sync_engine, connections)


def make_engine(url: str, *, trace_sql: bool = False) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        engine = sa_asyncio.create_async_engine(url, pool_pre_ping=True, hide_parameters=True)
        if trace_sql:
            _trace_sql(engine)
        return engine
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    # hide_parameters: a database error never logs the values (names, document numbers) it was given.
    engine = sa_asyncio.create_async_engine(url, connect_args={"timeout": 30}, hide_parameters=True)
    if trace_sql:
        _trace_sql(engine)

    @event.listens_for(engine.sync_engine, "connect")
    def _sqlite_pragmas(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA secure_delete=ON")  # deleted rows (erased persons' keys) are overwritten, not freed
        cur.close()

    writers = WriterQueue()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn):
        if conn.get_execution_options().get(READ_ONLY):
            # Deferred: with WAL a reader sees a snapshot beside the writer, never waiting for its lock.
            conn.exec_driver_sql("BEGIN")
            return
        writers.enter(conn.connection.info)
        # Take the write lock up front: a read-then-write transaction can otherwise fail with
        # SQLITE_BUSY when another writer committed in between. SQLite has one writer anyway.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    @event.listens_for(engine.sync_engine, "checkin")
    def _checkin(_dbapi_conn, record):
        if record is not None:
            writers.leave(record.info)

    @event.listens_for(engine.sync_engine, "invalidate")
    def _invalidate(_dbapi_conn, record, _exc):
        writers.leave(record.info)

    return engine


class WriterQueue:
    """This process's writers to one SQLite database take turns in an asyncio queue.

    SQLite has one writer. Without the queue, each transaction waiting for the write lock sleeps in
    SQLite's busy handler (1 ms up to 100 ms a step, in its worker thread) and retries: under a burst
    most of a service's threads slept there, and a waiting writer woke up late. Queued here, the next
    writer starts the moment the last one's connection returns to the pool. Other processes (a tool on
    the same file) still meet the busy timeout. A writer that waits longer than ``timeout_s`` (a code path
    opening a second write session inside the first would wait for ever) fails like SQLite's own busy
    timeout: "database is locked".
    """

    def __init__(self, timeout_s: float = 30.0) -> None:
        self._lock = asyncio.Lock()
        self._timeout_s = timeout_s

    def enter(self, connection_info: dict) -> None:
        if connection_info.get("enlace_writer"):
            return  # this connection already holds its turn (a second transaction before it went back)
        try:
            await_only(asyncio.wait_for(self._lock.acquire(), self._timeout_s))
        except TimeoutError:
            raise OperationalError("BEGIN IMMEDIATE", None, sqlite3.OperationalError("database is locked")) from None
        connection_info["enlace_writer"] = True

    def leave(self, connection_info: dict) -> None:
        if connection_info.pop("enlace_writer", False):
            self._lock.release()


def read_only(engine: AsyncEngine) -> AsyncEngine:
    """The same engine and pool, for work that only reads: on SQLite its transactions begin deferred, so they
    never take (or wait for) the write lock. On PostgreSQL nothing changes."""
    return engine.execution_options(**{READ_ONLY: True})


def make_session_factory(engine: AsyncEngine, service_name: str) -> async_sessionmaker[AsyncSession]:
    # A Session subclass per service, so commit hooks (outbox wake-up) stay per service
    # even when several services share one process, as they do in tests.
    sync_cls = type(f"{service_name.title()}Session", (SyncSession,), {})
    insert_staged_rows_on_commit(sync_cls)
    return async_sessionmaker(engine, class_=AsyncSession, sync_session_class=sync_cls, expire_on_commit=False)


# --- rows inserted by the commit --------------------------------------------------------------------

# A session's info key: the rows its transaction inserts when it commits, per table, in the order staged.
_STAGED_ROWS = "enlace_staged_rows"


def insert_at_commit(session: AsyncSession | OrmSession, table: Table, row: dict) -> None:
    """Have this session's transaction insert ``row`` when it commits, with the other rows staged for
    ``table`` in one Core INSERT: far cheaper than an ORM object per row. The rows commit with the
    transaction's other changes or not at all; a rollback or close drops them. Give every row of a
    table the same keys (one statement), every column's value included (Core applies no model defaults)."""
    sync_session = getattr(session, "sync_session", session)
    if getattr(sync_session, "enlace_read_only", False):
        raise WriteInReadSession("a read session does not write; use the service's write sessions")
    if not sync_session.in_transaction():
        sync_session.begin()  # as session.add() would: the rows belong to this transaction and end with it
    sync_session.info.setdefault(_STAGED_ROWS, {}).setdefault(table, []).append(row)


def insert_staged_rows_on_commit(session_class: type[OrmSession]) -> None:
    """Registers, once per session class, the hooks that write and drop :func:`insert_at_commit`'s rows.
    Another before_commit hook may stage rows too, if registered with ``insert=True`` (it runs first)."""
    # Marked on the class itself: event.contains can answer for a collected class whose id() was reused.
    if "_enlace_inserts_staged_rows" in vars(session_class):
        return
    session_class._enlace_inserts_staged_rows = True
    event.listen(session_class, "before_commit", _insert_staged_rows)
    event.listen(session_class, "after_transaction_end", _drop_staged_rows)


def _insert_staged_rows(session: OrmSession) -> None:
    for table, rows in session.info.pop(_STAGED_ROWS, {}).items():
        session.exec(insert(table), params=rows)  # in the transaction now committing


def _drop_staged_rows(session: OrmSession, transaction) -> None:
    if transaction.parent is None:  # the session's transaction ended (committed, rolled back or closed)
        session.info.pop(_STAGED_ROWS, None)


class WriteInReadSession(RuntimeError):
    """A read session was asked to write: the code path must use a write session."""


def _refuse_changes(session: OrmSession, _flush_context, _instances) -> None:
    if session.new or session.dirty or session.deleted:
        raise WriteInReadSession("a read session does not write; use the service's write sessions")


def make_read_session_factory(engine: AsyncEngine, service_name: str) -> async_sessionmaker[AsyncSession]:
    """Sessions for reads (GET requests, /metrics): deferred transactions on SQLite, beside the writer.

    They never flush on their own (no autoflush) and refuse to write, so a read path cannot take the
    write lock by accident; objects changed in memory are simply dropped with the session.
    """
    sync_cls = type(f"{service_name.title()}ReadSession", (SyncSession,), {"enlace_read_only": True})
    event.listen(sync_cls, "before_flush", _refuse_changes)
    return async_sessionmaker(read_only(engine), class_=AsyncSession, sync_session_class=sync_cls,
                              expire_on_commit=False, autoflush=False)


class OutdatedSchema(RuntimeError):
    """The database does not match the service: too old to adopt, or a model changed without a migration."""


async def create_tables(engine: AsyncEngine, tables: Iterable[Table]) -> None:
    """Create these tables where missing, and refuse a database whose tables predate the code.

    For tests and tools with their own tables; services migrate instead (``migrations.migrate``).
    ``create_all`` never alters an existing table, so an old database would otherwise fail later
    with obscure SQL errors: say so at once, plainly.
    """
    tables = list(tables)
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync_conn: tables[0].metadata.create_all(sync_conn, tables=tables))
        missing = await conn.run_sync(lambda sync_conn: _missing_columns(sync_conn, tables))
    if missing:
        raise OutdatedSchema(
            f"the database {engine.url.database} predates this version (missing {', '.join(missing[:5])}); "
            "in development delete it (e.g. .run/<service>.db), in production migrate it")


def _missing_columns(sync_conn, tables: list[Table]) -> list[str]:
    """The tables' columns the database lacks, then the tables it lacks altogether."""
    inspector = inspect(sync_conn)
    existing = set(inspector.get_table_names())
    missing, missing_tables = [], []
    for table in tables:
        if table.name not in existing:
            missing_tables.append(f"table {table.name}")
            continue
        present = {c["name"] for c in inspector.get_columns(table.name)}
        missing += [f"{table.name}.{c.name}" for c in table.columns if c.name not in present]
    return missing + missing_tables


# SQLite's primary result codes for a fault outside the work asked of it: busy, locked, out of memory, I/O
# error, full (the disk, or max_page_count), cannot open, lock protocol.
_SQLITE_UNAVAILABLE = {5, 6, 7, 10, 13, 14, 15}
# PostgreSQL SQLSTATEs (and classes) for the same: connection exception, insufficient resources (disk full,
# out of memory, too many connections), operator intervention (shutdown, cannot connect now), system
# error (I/O), serialization failure, deadlock, lock not available.
_SQLSTATE_UNAVAILABLE_CLASSES = ("08", "53", "57", "58")
_SQLSTATE_UNAVAILABLE = {"40001", "40P01", "55P03"}


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its explicit causes (``__cause__``, a DBAPIError's driver error ``orig``), each once."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        error = stack.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        yield error
        # Explicit causes only: an error raised while handling another (its __context__) is its own.
        stack += [getattr(error, "orig", None), error.__cause__]


def database_fault(exc: BaseException) -> BaseException | None:
    """The error in ``exc`` or its explicit causes saying the database cannot do the work right now (locked,
    full, unreachable), which waiting cures; None when the work itself failed (a constraint, a bug)."""
    for error in causes(exc):
        if isinstance(error, DBAPIError) and error.connection_invalidated:
            return error
        if isinstance(error, sqlite3.Error) and (getattr(error, "sqlite_errorcode", 0) & 0xFF) in _SQLITE_UNAVAILABLE:
            return error
        sqlstate = getattr(error, "sqlstate", None)
        if isinstance(sqlstate, str) and (sqlstate in _SQLSTATE_UNAVAILABLE
                                          or sqlstate.startswith(_SQLSTATE_UNAVAILABLE_CLASSES)):
            return error
    return None


def fault_code(error: BaseException) -> str:
    """The driver's code (SQLITE_FULL, 53100...) or the class name: an error's text can quote values."""
    return getattr(error, "sqlite_errorname", None) or getattr(error, "sqlstate", None) or type(error).__name__


async def ping(engine: AsyncEngine) -> None:
    async with read_only(engine).connect() as conn:
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
