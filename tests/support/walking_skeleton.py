"""The walking skeleton, shared by the end-to-end test (SQLite) and the PostgreSQL lane: the three services'
apps, and one screening that becomes a referral in referral and a signed webhook from notification."""

from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

from intake.config import IntakeSettings
from intake.entrypoints.app import create_app as intake_app
from notification.config import NotificationSettings
from notification.entrypoints.app import create_app as notification_app
from referral.config import ReferralSettings
from referral.entrypoints.app import create_app as referral_app
from tests.support.harness import TEST_DIRECTORY, WebhookReceiver, bearer, eventually, fast_settings


def three_apps(common: dict, database_urls: dict[str, str] | None = None) -> tuple:
    """intake, referral and notification with fast_settings(**common); each on its database of
    ``database_urls`` (by service name), else of ``databases`` in common, else on its own SQLite file."""
    urls = database_urls or {}

    def settings(cls, **extra):
        return fast_settings(cls, database_url=urls.get(cls.model_fields["service_name"].default), **common, **extra)

    return (intake_app(settings(IntakeSettings)),
            referral_app(settings(ReferralSettings, directory_seed_path=str(TEST_DIRECTORY))),
            notification_app(settings(NotificationSettings)))


async def screening_to_signed_webhook(intake, referral, notification, dev_issuer_dir) -> tuple[dict, dict, dict]:
    """A girl of 15 alone is screened at intake; returns the case, the referral to child protection, and
    the webhook request its subscriber received (verified with the reference library, thin)."""
    inm = bearer(dev_issuer_dir, "MX-INM", "migration_authority")
    pfpnna = bearer(dev_issuer_dir, "MX-PFPNNA", "child_protection", roles=["supervisor"])  # subscribes
    receiver = WebhookReceiver()

    async with receiver.running():
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
        assert [n["code"] for n in r.json()["needs"]] == ["UNACCOMPANIED_CHILD"]

        async def referral_listed():
            res = await referral.get("/referrals", headers=pfpnna, params={"case_id": case["id"]})
            return res.json()["items"]

        [ref] = await eventually(referral_listed, what="the referral to child protection")
        assert ref["to_agency_id"] == "MX-PFPNNA" and ref["from_agency_id"] == "MX-INM"
        assert ref["status"] == "requested" and ref["is_lead"] and ref["routing_reasons"]

        async def webhook_arrived():
            return receiver.requests

        [hook] = await eventually(webhook_arrived, what="the webhook POST")

    # The receiver's side: the reference library accepts the signature; the body is thin.
    payload = Webhook(secret).verify(hook["body"], hook["headers"])
    assert payload["type"] == "referral.requested.v1"
    assert payload["data"]["referral_id"] == ref["id"] and payload["data"]["case_id"] == case["id"]
    assert "Ana" not in hook["body"].decode() and "Prueba" not in hook["body"].decode()
    return case, ref, hook
