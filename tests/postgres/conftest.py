"""The PostgreSQL lane: one throwaway cluster per session (tests/support/postgres.py), a fresh database per test.

Every test here is marked ``postgres``; if the server binaries are missing the tests fail, never skip."""

import pytest

from tests.integration.conftest import producer  # noqa: F401 - the services' idempotent producer, shared
from tests.support.harness import free_port
from tests.support.postgres import PostgresCluster, PostgresUnavailable, find_bin_dir


def pytest_collection_modifyitems(config, items):
    here = __file__.rsplit("/", 1)[0]
    for item in items:
        if str(item.fspath).startswith(here + "/"):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def postgres_cluster():
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
async def postgres_database(postgres_cluster) -> str:
    """The name of a new, empty database of the session's cluster."""
    return await postgres_cluster.create_database()


@pytest.fixture
def postgres_url(postgres_cluster, postgres_database) -> str:
    """A postgresql+asyncpg:// URL of this test's own empty database."""
    return postgres_cluster.url(postgres_database)
