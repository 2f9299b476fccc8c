"""All three services on PostgreSQL (each its own database) and the real broker: a screening in intake becomes
a referral in referral and a signed webhook from notification, as in tests/e2e/test_walking_skeleton.py."""

from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook

from intake.config import IntakeSettings
from intake.entrypoints.app import create_app as intake_app
from notification.config import NotificationSettings
from notification.entrypoints.app import create_app as notification_app
from referral.config import ReferralSettings
from referral.entrypoints.app import create_app as referral_app
from tests.support.harness import (
    REPO, WebhookReceiver, bearer, eventually, fast_settings, provision_topics, running_app, unique_prefix,
)

pytestmark = pytest.mark.kafka


async def test_screening_becomes_a_referral_and_a_signed_webhook_on_postgresql(
        kafka_bootstrap, dev_issuer_dir, tmp_path, postgres_cluster):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    common = dict(tmp_path=tmp_path, bootstrap=kafka_bootstrap, prefix=prefix, dev_issuer_dir=dev_issuer_dir)

    async def own_database() -> str:
        return postgres_cluster.url(await postgres_cluster.create_database())

    apps = (
        intake_app(fast_settings(IntakeSettings, database_url=await own_database(), **common)),
        referral_app(fast_settings(ReferralSettings, database_url=await own_database(),
                                   directory_seed_path=str(REPO / "deploy/demo/agencies.json"), **common)),
        notification_app(fast_settings(NotificationSettings, database_url=await own_database(), **common)),
    )
    inm = bearer(dev_issuer_dir, "MX-INM", "migration_authority")
    pfpnna = bearer(dev_issuer_dir, "MX-PFPNNA", "child_protection", roles=["supervisor"])
    receiver = WebhookReceiver()

    async with running_app(apps[0]) as intake, running_app(apps[1]) as referral, \
            running_app(apps[2]) as notification, receiver.running():
        assert all(app.state.runtime.engine.dialect.name == "postgresql" for app in apps)
        r = await notification.post("/subscriptions", headers=pfpnna,
                                    json={"url": receiver.url, "event_types": ["referral.requested.v1"]})
        assert r.status_code == 201, r.text
        secret = r.json()["secret"]

        r = await intake.post("/cases", headers=inm, json={
            "place": "Tapachula", "encountered_at": datetime.now(UTC).isoformat(),
            "persons": [{"given_names": "Ana", "family_names": "Prueba", "sex": "female", "estimated_age": 15,
                         "languages": ["es"]}]})
        assert r.status_code == 201, r.text
        case = r.json()
        r = await intake.post(f"/cases/{case['id']}/screenings", headers=inm, json={
            "person_id": case["persons"][0]["id"], "travelling_with_parent_or_guardian": False})
        assert r.status_code == 201, r.text

        async def referral_listed():
            res = await referral.get("/referrals", headers=pfpnna, params={"case_id": case["id"]})
            return res.json()["items"]

        [ref] = await eventually(referral_listed, what="the referral to child protection")
        assert ref["to_agency_id"] == "MX-PFPNNA" and ref["status"] == "requested"

        async def webhook_arrived():
            return receiver.requests

        [hook] = await eventually(webhook_arrived, what="the webhook POST")

    payload = Webhook(secret).verify(hook["body"], hook["headers"])
    assert payload["type"] == "referral.requested.v1" and payload["data"]["referral_id"] == ref["id"]
