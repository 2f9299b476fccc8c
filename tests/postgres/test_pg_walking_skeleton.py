"""All three services on PostgreSQL (each its own database) and the real broker: a screening in intake becomes
a referral in referral and a signed webhook from notification, as in tests/e2e/test_walking_skeleton.py."""

import pytest

from tests.support.harness import provision_topics, running_app, unique_prefix
from tests.support.walking_skeleton import screening_to_signed_webhook, three_apps

pytestmark = pytest.mark.kafka


async def test_screening_becomes_a_referral_and_a_signed_webhook_on_postgresql(
        kafka_bootstrap, dev_issuer_dir, tmp_path, postgres_cluster):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    urls = {name: postgres_cluster.url(await postgres_cluster.create_database())
            for name in ("intake", "referral", "notification")}
    apps = three_apps(dict(tmp_path=tmp_path, bootstrap=kafka_bootstrap, prefix=prefix, dev_issuer_dir=dev_issuer_dir),
                      urls)
    async with running_app(apps[0]) as intake, running_app(apps[1]) as referral, \
            running_app(apps[2]) as notification:
        assert all(app.state.runtime.engine.dialect.name == "postgresql" for app in apps)
        await screening_to_signed_webhook(intake, referral, notification, dev_issuer_dir)
