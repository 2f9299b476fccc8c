"""The three services served over real HTTP on loopback (uvicorn), on the real broker, each with its own SQLite
database: what the fuzz pass sends its requests to."""

from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import pytest
import uvicorn

from intake.config import IntakeSettings
from intake.entrypoints.app import create_app as intake_app
from notification.entrypoints.app import create_app as notification_app
from referral.config import ReferralSettings
from referral.entrypoints.app import create_app as referral_app
from tests.security.world import DIRECTORY_SEED
from tests.support.harness import fast_settings, free_port, provision_topics, unique_prefix, uvicorn_serving
from tests.support.notification_support import notification_settings


@dataclass
class Served:
    apps: dict[str, object]
    urls: dict[str, str]


@asynccontextmanager
async def serving(app):
    """The app on a free loopback port, lifespan included; yields its base URL."""
    port = free_port()
    async with uvicorn_serving(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                                              access_log=False)):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
async def served(kafka_bootstrap, dev_issuer_dir, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("fuzz")
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    # Token-less and refused requests are part of the pass: the address limit would cut them (by design).
    common = dict(tmp_path=data_dir, bootstrap=kafka_bootstrap, prefix=prefix, dev_issuer_dir=dev_issuer_dir,
                  rate_limit_per_address="1000/second")
    # Notification gets topics of its own that nobody publishes to: whatever URLs the fuzzer subscribes, no event
    # ever makes it deliver a webhook (never an address outside loopback).
    silent_prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, silent_prefix)
    apps = {"intake": intake_app(fast_settings(IntakeSettings, **common)),
            "referral": referral_app(fast_settings(ReferralSettings, directory_seed_path=DIRECTORY_SEED, **common)),
            "notification": notification_app(notification_settings(**{**common, "prefix": silent_prefix}))}
    async with AsyncExitStack() as stack:
        urls = {name: await stack.enter_async_context(serving(app)) for name, app in apps.items()}
        yield Served(apps, urls)
