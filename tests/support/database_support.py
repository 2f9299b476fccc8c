"""Where a test's services keep their data: SQLite files (the embedded default, as `make up` runs them) or
PostgreSQL, a fresh database per service on the session's throwaway cluster (tests/support/postgres.py).

A test takes the ``databases`` fixture and gives each service ``databases.url(name)`` (or passes ``databases=``
to harness.fast_settings, which asks for the service's own): SQLite, unless the test is marked
``@on_both_databases`` (or its module's ``pytestmark`` says so), which runs it once on each, the PostgreSQL run
marked ``postgres``. The cluster starts when the first test asks for it, once per session; a run that needs no
PostgreSQL never starts it. tests/conftest.py registers these fixtures for the whole suite.
"""

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest

from tests.support.harness import database_bytes, free_port
from tests.support.postgres import PostgresCluster, PostgresUnavailable, find_bin_dir

SQLITE, POSTGRESQL = "sqlite", "postgresql"
BACKENDS = [SQLITE, pytest.param(POSTGRESQL, marks=pytest.mark.postgres)]
on_both_databases = pytest.mark.parametrize("databases", BACKENDS, indirect=True)


class Databases:
    """One test's databases, one per service name, made the first time it is asked for (the same URL after,
    so two replicas of a service share theirs)."""

    def __init__(self, backend: str, data_dir: Path, cluster: PostgresCluster | None = None) -> None:
        self.backend, self._data_dir, self._cluster = backend, data_dir, cluster
        self._urls: dict[str, str] = {}

    def url(self, service: str) -> str:
        if service not in self._urls:
            if self._cluster is None:
                self._urls[service] = f"sqlite+aiosqlite:///{self._data_dir / f'{service}.db'}"
            else:
                # From sync code too (settings are built outside the event loop's reach): its own loop, in a thread.
                with ThreadPoolExecutor(1) as thread:
                    name = thread.submit(asyncio.run, self._cluster.create_database()).result()
                self._urls[service] = self._cluster.url(name)
        return self._urls[service]

    async def disk_image(self, url: str) -> bytes:
        """The database's bytes as an image of the disk holds them. SQLite: its file and write-ahead log.
        PostgreSQL: this database's files after a checkpoint (the cluster's write-ahead log is left out: every
        test's database shares it, and it keeps each insert until recycled, docs/operations.md)."""
        if self._cluster is None:
            return database_bytes(url)
        conn = await asyncpg.connect(self._cluster.dsn())
        try:
            await conn.execute("CHECKPOINT")  # the shared buffers' dirty pages reach the files
            oid = await conn.fetchval("SELECT oid FROM pg_database WHERE datname = $1", _database_name(url))
        finally:
            await conn.close()
        folder = self._cluster.data / "base" / str(oid)
        return b"".join(path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file())

    async def backup(self, url: str) -> bytes:
        """The database as a backup of it holds it. SQLite: a copy of its file and log, where deleted bytes are
        overwritten in place (secure_delete, and the checkpoint after an erasure). PostgreSQL: a pg_dump; its
        files may keep deleted bytes in a vacuumed page's free space until reused (docs/operations.md)."""
        if self._cluster is None:
            return database_bytes(url)
        return self._cluster.dump(_database_name(url))


def _database_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


@pytest.fixture(scope="session")
def postgres_cluster():
    """The session's throwaway PostgreSQL cluster; missing server binaries fail the test, never skip it."""
    try:
        cluster = PostgresCluster(find_bin_dir(), free_port())
        cluster.start()
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def databases(request, tmp_path) -> Databases:
    """SQLite files in the test's tmp_path, or (parametrised ``postgresql``) fresh PostgreSQL databases."""
    backend = getattr(request, "param", SQLITE)
    if backend == SQLITE:
        return Databases(SQLITE, tmp_path)
    return Databases(backend, tmp_path, request.getfixturevalue("postgres_cluster"))
