"""Alembic migrations of one service's own database, run programmatically on its async engine.

Each service keeps its script directory in its package (``<svc>/adapters/migrations/``: ``env.py``,
``script.py.mako`` and ``versions/``); there is no alembic.ini. At start-up :func:`migrate` brings
the database to head:

- an empty database, or one with an ``alembic_version`` table, is upgraded to head;
- a database made by a version from before migrations (by ``create_all``, without
  ``alembic_version``) is adopted: if it has every table and column of the *initial* revision it is
  stamped there and upgraded; otherwise it is refused with :class:`OutdatedSchema`;
- then the models are checked against the database, so a model changed without a migration fails
  at start-up, not at the first query.

Developers write revisions with the CLI (``make migration SERVICE=intake MSG="..."``)::

    python -m enlace_platform.migrations intake revision -m "add audit log"   # autogenerate
    python -m enlace_platform.migrations intake upgrade                        # the service's database
    python -m enlace_platform.migrations intake current
"""

import asyncio
import importlib
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, MetaData, Table, TypeDecorator, create_engine, inspect
from sqlalchemy.ext.asyncio import AsyncEngine

from enlace_platform.audit import AuditRecord
from enlace_platform.db import OutdatedSchema, _missing_columns, make_engine
from enlace_platform.idempotency import IdempotencyRecord
from enlace_platform.inbox import ProcessedMessage
from enlace_platform.outbox import OutboxMessage
from enlace_platform.settings import ServiceSettings

VERSION_TABLE = "alembic_version"
PLATFORM_TABLES = [OutboxMessage.__table__, ProcessedMessage.__table__, IdempotencyRecord.__table__,
                   AuditRecord.__table__]
SERVICES = ("intake", "referral", "notification")


def service_tables(tables: Iterable[Table]) -> list[Table]:
    """A service's tables as ServiceRuntime has them: the platform's (outbox, inbox, idempotency keys, audit log) first."""
    platform = {t.name for t in PLATFORM_TABLES}
    own = [t for t in tables if t.name not in platform]
    return [*PLATFORM_TABLES, *own]


def target_metadata(tables: Iterable[Table]) -> MetaData:
    """A MetaData holding exactly these tables (SQLModel's shared one holds every service's tables)."""
    metadata = MetaData()
    for table in service_tables(tables):
        table.to_metadata(metadata)
    return metadata


# ---------------------------------------------------------------------------------------------------
# env.py: each service's env.py is two lines that call this.

def run_env(context: Any, tables: Iterable[Table]) -> None:
    """The body of a service's ``env.py``: online migrations on the connection the caller passed."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations with `python -m enlace_platform.migrations <service> ...` "
                           "(or enlace_platform.migrations.upgrade_to_head), which pass the connection")
    metadata = target_metadata(tables)
    names = set(metadata.tables)

    def include_object(obj, name, type_, reflected, compare_to) -> bool:
        # Autogenerate sees this service's tables only (and so their columns, indexes and constraints),
        # never another service's or a stray one.
        return type_ != "table" or name in names

    context.configure(
        connection=connection,
        target_metadata=metadata,
        include_object=include_object,
        render_as_batch=True,  # SQLite alters a table by copying it: batch mode does that
        render_item=_render_item,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    # SQLModel's types (AutoString, UTCDateTime) only convert values in Python; in the database they
    # are their plain SQLAlchemy type, so revisions render that one and never import sqlmodel.
    if type_ == "type" and isinstance(obj, TypeDecorator) and type(obj).__module__.startswith("sqlmodel"):
        return f"sa.{obj.impl_instance!r}"
    return False


# ---------------------------------------------------------------------------------------------------
# Programmatic API

def migration_config(script_location: str | Path, connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.attributes["connection"] = connection
    return config


def head_revision(script_location: str | Path) -> str | None:
    return ScriptDirectory.from_config(migration_config(script_location)).get_current_head()


def initial_revision(script_location: str | Path) -> str:
    return ScriptDirectory.from_config(migration_config(script_location)).get_base()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at; None for a database without ``alembic_version``."""
    async with engine.connect() as conn:
        return await conn.run_sync(lambda sync_conn: MigrationContext.configure(sync_conn).get_current_revision())


async def upgrade_to_head(engine: AsyncEngine, script_location: str | Path) -> None:
    """Apply every migration the database lacks, in one transaction."""
    await _in_migration_transaction(engine, lambda conn: command.upgrade(migration_config(script_location, conn), "head"))


async def migrate(engine: AsyncEngine, script_location: str | Path, tables: Iterable[Table]) -> None:
    """Start-up: upgrade to head (adopting a pre-migration database), then check the models against it."""
    tables = service_tables(tables)
    await _in_migration_transaction(engine, lambda conn: _migrate(conn, engine, script_location, tables))


def _migrate(conn: Connection, engine: AsyncEngine, script_location: str | Path, tables: list[Table]) -> None:
    existing = set(inspect(conn).get_table_names())
    if VERSION_TABLE not in existing and existing & {t.name for t in tables}:
        _adopt(conn, engine, script_location)
    command.upgrade(migration_config(script_location, conn), "head")
    missing = _missing_columns(conn, tables)
    if missing:
        raise OutdatedSchema(
            f"the database {engine.url.database} lacks {', '.join(missing[:5])} after migrating to head "
            f"({head_revision(script_location)}): a model changed without a migration; write one with "
            "`make migration SERVICE=<service> MSG=...`")


def _adopt(conn: Connection, engine: AsyncEngine, script_location: str | Path) -> None:
    """A database made by ``create_all`` before migrations existed: stamp it at the initial revision
    if it has that revision's every table and column (what create_all made then), else refuse it."""
    initial = initial_revision(script_location)
    missing = _missing_columns(conn, _schema_at(script_location, initial))
    if missing:
        raise OutdatedSchema(
            f"the database {engine.url.database} predates migrations and this version "
            f"(missing {', '.join(missing[:5])}), so it cannot be adopted at revision {initial}; "
            "in development delete it (e.g. .run/<service>.db), in production bring it to that "
            "revision's schema by hand first")
    command.stamp(migration_config(script_location, conn), initial)


def _schema_at(script_location: str | Path, revision: str) -> list[Table]:
    """The tables a revision makes, built in a scratch in-memory SQLite database and reflected."""
    scratch = create_engine("sqlite://")
    try:
        with scratch.begin() as conn:
            command.upgrade(migration_config(script_location, conn), revision)
            metadata = MetaData()
            metadata.reflect(conn)
    finally:
        scratch.dispose()
    return [t for name, t in metadata.tables.items() if name != VERSION_TABLE]


_MIGRATION_LOCK = 0x656E6C6163  # "enlac": the advisory lock key migrations take on PostgreSQL


async def _in_migration_transaction(engine: AsyncEngine, work) -> None:
    """Run ``work(sync_connection)`` in one transaction; replicas starting together migrate one after
    the other (SQLite: BEGIN IMMEDIATE; PostgreSQL: a transaction-scoped advisory lock).

    On SQLite, foreign keys are off while migrating: batch mode copies a table, drops the old one
    and renames the copy, which enforcement would refuse (or cascade). They are checked before commit.
    """
    sqlite = engine.dialect.name == "sqlite"
    async with engine.connect() as conn:
        if sqlite:
            await conn.run_sync(_sqlite_foreign_keys, False)  # a no-op inside a transaction: before BEGIN
        try:
            async with conn.begin():
                if engine.dialect.name == "postgresql":
                    await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
                await conn.run_sync(work)
                if sqlite:
                    await conn.run_sync(_check_foreign_keys)
        finally:
            if sqlite:
                await conn.run_sync(_sqlite_foreign_keys, True)


def _sqlite_foreign_keys(conn: Connection, on: bool) -> None:
    # On the DB-API connection: going through SQLAlchemy would begin a transaction first.
    cursor = conn.connection.dbapi_connection.cursor()
    cursor.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")
    cursor.close()


def _check_foreign_keys(conn: Connection) -> None:
    violations = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if violations:
        raise OutdatedSchema(f"migrating left rows whose foreign keys point nowhere: {violations[:5]}")


# ---------------------------------------------------------------------------------------------------
# The developers' CLI

def service_migrations(service: str) -> tuple[ServiceSettings, Path, list[Table]]:
    """A service's settings (from its environment), script directory and tables."""
    if service not in SERVICES:
        raise typer.BadParameter(f"unknown service {service!r}; one of {', '.join(SERVICES)}")
    config = importlib.import_module(f"{service}.config")
    [settings_class] = [v for v in vars(config).values()
                        if isinstance(v, type) and issubclass(v, ServiceSettings) and v is not ServiceSettings]
    orm = importlib.import_module(f"{service}.adapters.orm")
    location = Path(orm.__file__).parent / "migrations"
    return settings_class(), location, list(orm.TABLES)


def _next_revision_id(location: Path) -> str:
    head = head_revision(location)
    return f"{int(head) + 1:04d}" if head and head.isdigit() else "0001"


def autogenerate_revision(location: Path, message: str) -> Path | None:
    """Write versions/<next>_<slug>.py: what the models have that head lacks.

    It compares against a scratch SQLite database migrated to head, not anyone's own database."""
    scratch = create_engine("sqlite://")
    try:
        with scratch.begin() as conn:
            cfg = migration_config(location, conn)
            command.upgrade(cfg, "head")
            script = command.revision(cfg, message=message, autogenerate=True, rev_id=_next_revision_id(location))
    finally:
        scratch.dispose()
    return Path(script.path) if script is not None and not isinstance(script, list) else None


cli = typer.Typer(help="A service's database migrations (Alembic).", no_args_is_help=True)


@cli.callback()
def _service(ctx: typer.Context,
             service: Annotated[str, typer.Argument(help="intake, referral or notification")]) -> None:
    ctx.obj = service_migrations(service)


@cli.command()
def revision(ctx: typer.Context, message: Annotated[str, typer.Option("-m", "--message", help="What changes")]) -> None:
    """Autogenerate a revision from the service's models; read it before committing."""
    _, location, _ = ctx.obj
    path = autogenerate_revision(location, message)
    typer.echo(f"wrote {path}")


@cli.command()
def upgrade(ctx: typer.Context) -> None:
    """Migrate the service's database (its *_DATABASE_URL) to head, as start-up does."""
    settings, location, tables = ctx.obj

    async def run() -> str | None:
        engine = make_engine(settings.database_url)
        try:
            await migrate(engine, location, tables)
            return await current_revision(engine)
        finally:
            await engine.dispose()

    typer.echo(asyncio.run(run()))


@cli.command()
def current(ctx: typer.Context) -> None:
    """Print the revision the service's database is at ("None" before any migration) and the head."""
    settings, location, _ = ctx.obj

    async def run() -> str | None:
        engine = make_engine(settings.database_url)
        try:
            return await current_revision(engine)
        finally:
            await engine.dispose()

    rev = asyncio.run(run())
    head = head_revision(location)
    typer.echo(f"{rev} (head)" if rev == head else f"{rev} (head is {head})")


if __name__ == "__main__":
    cli()
