"""One world per session: the three services on the real broker under one topic prefix, seeded once."""

from contextlib import AsyncExitStack

import pytest

from intake.config import IntakeSettings
from intake.entrypoints.app import create_app as intake_app
from notification.entrypoints.app import create_app as notification_app
from referral.config import ReferralSettings
from referral.entrypoints.app import create_app as referral_app
from tests.security.world import DIRECTORY_SEED, Tokens, World, seed
from tests.support.harness import WebhookReceiver, fast_settings, provision_topics, running_app, unique_prefix
from tests.support.notification_support import notification_settings


@pytest.fixture(scope="session")
async def world(kafka_bootstrap, dev_issuer_dir, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("security-world")
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    # The matrix sends hundreds of refused tokens from one address, up to ~100 a second: by design, a flood
    # that the default per-address limit would cut (test_entry_limits checks that it does).
    common = dict(tmp_path=data_dir, bootstrap=kafka_bootstrap, prefix=prefix, dev_issuer_dir=dev_issuer_dir,
                  rate_limit_per_address="1000/second")
    apps = {"intake": intake_app(fast_settings(IntakeSettings, **common)),
            "referral": referral_app(fast_settings(ReferralSettings, directory_seed_path=DIRECTORY_SEED, **common)),
            "notification": notification_app(notification_settings(**common))}
    receiver = WebhookReceiver()
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(receiver.running())
        clients = {name: await stack.enter_async_context(running_app(app)) for name, app in apps.items()}
        built = World(clients=clients, apps=apps, tokens=Tokens(dev_issuer_dir, data_dir), receiver_url=receiver.url,
                      data_dir=data_dir)
        await seed(built)
        yield built
