"""Refuses to start on a database whose notification tables predate the code.

create_all never alters an existing table, so a database left by an older version (e.g. the walking
skeleton's .run/notification.db) would fail later with obscure SQL errors. Until migrations exist, say
so at startup, plainly.
"""

from sqlalchemy import inspect

from enlace_platform.runtime import ServiceRuntime
from notification.adapters.orm import TABLES


class OutdatedSchema(RuntimeError):
    pass


def _missing_columns(sync_conn) -> list[str]:
    inspector = inspect(sync_conn)
    missing = []
    for table in TABLES:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        missing += [f"{table.name}.{c.name}" for c in table.columns if c.name not in present]
    return missing


async def check_schema(runtime: ServiceRuntime) -> None:
    async with runtime.engine.connect() as conn:
        missing = await conn.run_sync(_missing_columns)
    if missing:
        raise OutdatedSchema(
            f"the notification database predates this version (missing {', '.join(missing[:5])}); "
            "in development delete it (e.g. .run/notification.db), in production migrate it")
