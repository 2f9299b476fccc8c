"""The PostgreSQL lane: the session's throwaway cluster (tests/support/database_support.py, shared with every test
that runs on both databases), a fresh database per test.

Every test here is marked ``postgres``; if the server binaries are missing the tests fail, never skip."""

import pytest

from tests.integration.conftest import producer  # noqa: F401 - the services' idempotent producer, shared


def pytest_collection_modifyitems(config, items):
    here = __file__.rsplit("/", 1)[0]
    for item in items:
        if str(item.fspath).startswith(here + "/"):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture
async def postgres_database(postgres_cluster) -> str:
    """The name of a new, empty database of the session's cluster."""
    return await postgres_cluster.create_database()


@pytest.fixture
def postgres_url(postgres_cluster, postgres_database) -> str:
    """A postgresql+asyncpg:// URL of this test's own empty database."""
    return postgres_cluster.url(postgres_database)
