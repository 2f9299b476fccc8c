"""audit_log is append-only on PostgreSQL: the database itself refuses UPDATE, DELETE and TRUNCATE,
whoever connects (here asyncpg directly, as the table's owner, not through any service code)."""

import asyncpg
import pytest

from enlace_platform.db import make_engine
from enlace_platform.migrations import upgrade_to_head
from tests.integration.test_migrations import SERVICES, service_migrations_and_tables

_ROW = ("INSERT INTO audit_log (request_id, at, agency_id, jurisdiction, user_id, roles, action, method, route, "
        "object_type, object_id, purpose, status) VALUES ('r1', now(), 'MX-INM', 'MX', 'u1', 'caseworker', 'read', "
        "'GET', '/cases/{case_id}', 'case', 'c1', 'case_management', 200)")


@pytest.mark.parametrize("name", SERVICES)
@pytest.mark.parametrize("statement", [
    "UPDATE audit_log SET status = 500",
    "DELETE FROM audit_log",
    "TRUNCATE audit_log",
])
async def test_the_database_refuses_to_change_or_remove_audit_rows(name, statement, postgres_cluster,
                                                                    postgres_database):
    location, _ = service_migrations_and_tables(name)
    engine = make_engine(postgres_cluster.url(postgres_database))
    try:
        await upgrade_to_head(engine, location)
    finally:
        await engine.dispose()

    conn = await asyncpg.connect(postgres_cluster.dsn(postgres_database))
    try:
        await conn.execute(_ROW)
        await conn.execute(_ROW)  # appending is what the table is for
        with pytest.raises(asyncpg.RaiseError, match="audit_log is append-only"):
            await conn.execute(statement)
        assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE status = 200") == 2
    finally:
        await conn.close()
