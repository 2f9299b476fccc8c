"""Each service's Alembic migrations on a real PostgreSQL server: an empty database goes to head, head is
exactly the models, downgrade to base and back works, and replicas starting together migrate once."""

import asyncio
import os
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from enlace_platform.db import make_engine
from enlace_platform.migrations import (
    current_revision, head_revision, migration_config, service_tables, upgrade_to_head,
)
from tests.integration.test_migrations import REPO, SERVICES, schema_diff, service_migrations_and_tables


async def _table_names(engine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


@pytest.mark.parametrize("name", SERVICES)
async def test_head_is_exactly_the_models(name, postgres_url):
    location, tables = service_migrations_and_tables(name)
    engine = make_engine(postgres_url)
    try:
        await upgrade_to_head(engine, location)
        assert await current_revision(engine) == head_revision(location)
        assert await schema_diff(engine, tables) == []
        assert await _table_names(engine) == {t.name for t in service_tables(tables)} | {"alembic_version"}
    finally:
        await engine.dispose()


async def _step_down(engine, location) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: command.downgrade(migration_config(location, c), "-1"))


@pytest.mark.parametrize("name", SERVICES)
async def test_every_reversible_revision_downgrades_and_head_is_reached_again(name, postgres_cluster):
    """Down one revision at a time from head to base. An irreversible revision (it says so with
    NotImplementedError) is passed by starting a fresh database at the revision below it."""
    location, tables = service_migrations_and_tables(name)
    script = ScriptDirectory.from_config(migration_config(location))
    engines = []

    async def fresh_database_at(revision: str):
        engine = make_engine(postgres_cluster.url(await postgres_cluster.create_database()))
        engines.append(engine)
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(migration_config(location, c), revision))
        return engine

    try:
        engine = await fresh_database_at("head")
        irreversible = []
        while (revision := await current_revision(engine)) is not None:
            try:
                await _step_down(engine, location)
            except NotImplementedError:
                irreversible.append(revision)
                below = script.get_revision(revision).down_revision
                if below is None:
                    break
                engine = await fresh_database_at(below)
        assert await current_revision(engine) is None
        assert await _table_names(engine) == {"alembic_version"}, "base: every table dropped"

        await upgrade_to_head(engine, location)
        assert await schema_diff(engine, tables) == []
        assert set(irreversible) <= {"0003"}, "only the sealing revisions are irreversible"
    finally:
        for engine in engines:
            await engine.dispose()


async def test_replicas_starting_together_migrate_once(postgres_url):
    """Three processes (replicas) migrate one empty database at once with the CLI start-up uses: one
    migrates, the others wait for its advisory lock and then find the database at head."""
    location, tables = service_migrations_and_tables("intake")
    env = {**os.environ, "INTAKE_DATABASE_URL": postgres_url}
    replicas = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "enlace_platform.migrations", "intake", "upgrade", env=env, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE) for _ in range(3)]
    outputs = await asyncio.wait_for(asyncio.gather(*(r.communicate() for r in replicas)), timeout=120)
    for replica, (out, err) in zip(replicas, outputs, strict=True):
        assert replica.returncode == 0, err.decode()
        assert out.decode().strip() == head_revision(location)
    engine = make_engine(postgres_url)
    try:
        assert await schema_diff(engine, tables) == []
    finally:
        await engine.dispose()
