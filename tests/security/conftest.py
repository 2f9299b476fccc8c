"""One world per session: the three services on the real broker under one topic prefix, seeded once; and the same
world on PostgreSQL, built only for the tests that ask for it (the access matrix)."""

from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest

from intake.config import IntakeSettings
from intake.entrypoints.app import create_app as intake_app
from notification.entrypoints.app import create_app as notification_app
from referral.config import ReferralSettings
from referral.entrypoints.app import create_app as referral_app
from tests.security.world import DIRECTORY_SEED, Tokens, World, seed
from tests.support.harness import WebhookReceiver, fast_settings, provision_topics, running_app, unique_prefix
from tests.support.notification_support import notification_settings


@asynccontextmanager
async def built_world(kafka_bootstrap: str, dev_issuer_dir: Path, data_dir: Path,
                      database_urls: dict[str, str] | None = None):
    """The seeded world; each service's database is SQLite in data_dir unless ``database_urls`` names one."""
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    # The matrix sends hundreds of refused tokens from one address, up to ~100 a second: by design, a flood
    # that the default per-address limit would cut (test_entry_limits checks that it does).
    tokens = Tokens(dev_issuer_dir, data_dir)
    common = dict(tmp_path=data_dir, bootstrap=kafka_bootstrap, prefix=prefix, dev_issuer_dir=dev_issuer_dir,
                  rate_limit_per_address="1000/second", auth_trusted_issuers=tokens.trusted_issuers())
    url = (database_urls or {}).get
    apps = {"intake": intake_app(fast_settings(IntakeSettings, database_url=url("intake"), **common)),
            "referral": referral_app(fast_settings(ReferralSettings, directory_seed_path=DIRECTORY_SEED,
                                                   database_url=url("referral"), **common)),
            "notification": notification_app(notification_settings(database_url=url("notification"), **common))}
    receiver = WebhookReceiver()
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(receiver.running())
        clients = {name: await stack.enter_async_context(running_app(app)) for name, app in apps.items()}
        built = World(clients=clients, apps=apps, tokens=tokens, receiver_url=receiver.url,
                      data_dir=data_dir)
        for name, client in clients.items():
            built.statuses.attach(name, apps[name], client)
        await seed(built)
        yield built


@pytest.fixture(scope="session")
async def world(kafka_bootstrap, dev_issuer_dir, tmp_path_factory):
    async with built_world(kafka_bootstrap, dev_issuer_dir, tmp_path_factory.mktemp("security-world")) as built:
        yield built


@pytest.fixture(scope="session")
async def postgres_world(kafka_bootstrap, dev_issuer_dir, tmp_path_factory, postgres_cluster):
    """The same world with each service on a PostgreSQL database of its own (test_access_matrix runs on both)."""
    urls = {name: postgres_cluster.url(await postgres_cluster.create_database())
            for name in ("intake", "referral", "notification")}
    async with built_world(kafka_bootstrap, dev_issuer_dir, tmp_path_factory.mktemp("security-world-pg"),
                           urls) as built:
        yield built
