"""The walking skeleton on the real broker: screening → referral → signed webhook, as one trace."""

import json
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


@pytest.fixture
async def system(kafka_bootstrap, dev_issuer_dir, tmp_path):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    common = dict(tmp_path=tmp_path, bootstrap=kafka_bootstrap, prefix=prefix, dev_issuer_dir=dev_issuer_dir)
    apps = (
        intake_app(fast_settings(IntakeSettings, **common)),
        referral_app(fast_settings(ReferralSettings, directory_seed_path=str(REPO / "deploy/demo/agencies.json"),
                                   **common)),
        notification_app(fast_settings(NotificationSettings, **common)),
    )
    async with running_app(apps[0]) as intake, running_app(apps[1]) as referral, \
            running_app(apps[2]) as notification:
        yield intake, referral, notification


async def test_screening_becomes_a_referral_and_a_signed_webhook_in_one_trace(system, dev_issuer_dir, spans):
    intake, referral, notification = system
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

    # One trace from the screening POST to the webhook POST, across all three services.
    webhook_trace_id = hook["headers"]["traceparent"].split("-")[1]
    finished = [s for s in spans.get_finished_spans() if format(s.context.trace_id, "032x") == webhook_trace_id]
    names = {s.name for s in finished}
    assert any(s.name.startswith("POST /cases/{case_id}/screenings") and s.kind.name == "SERVER" for s in finished), names
    services = {s.attributes.get("enlace.service") for s in finished if s.kind.name == "CONSUMER"}
    # Intake consumes referral events too; its span joins the trace whenever it has handled them by now.
    assert {"referral", "notification"} <= services <= {"intake", "referral", "notification"}, names
    assert any(s.kind.name == "CLIENT" and s.attributes.get("http.request.method", s.attributes.get("http.method"))
               == "POST" for s in finished), names
    assert any(s.name.endswith("intake.case publish") for s in finished), names
    assert any(s.name.endswith("referral.referral publish") for s in finished), names


async def test_api_rejects_missing_and_bad_tokens_with_problem_json(system):
    intake, referral, notification = system
    for client, path in ((intake, "/cases/x"), (referral, "/referrals"), (notification, "/subscriptions")):
        r = await client.get(path)
        assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
        assert r.headers["www-authenticate"].startswith("Bearer")
        r = await client.get(path, headers={"authorization": "Bearer not-a-jwt"})
        assert r.status_code == 401 and r.json()["title"] == "Unauthorized"


async def test_health_and_readiness(system):
    for client in system:
        assert (await client.get("/healthz")).json()["status"] == "ok"

        async def ready():
            res = await client.get("/readyz")
            return res.status_code == 200 and res.json()["checks"] == {"database": "ok", "kafka": "ok"}

        await eventually(ready, what="readiness")


async def test_bad_input_gets_a_422_problem_naming_the_field(system, dev_issuer_dir):
    intake, _, _ = system
    inm = bearer(dev_issuer_dir, "MX-INM", "migration_authority")
    r = await intake.post("/cases", headers=inm, json={
        "place": "Tapachula", "encountered_at": datetime.now(UTC).isoformat(),
        "persons": [{"given_names": "A", "family_names": "B", "sex": "robot", "estimated_age": 30}]})
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert "body/persons/0/sex" in [e["path"] for e in r.json()["errors"]]


async def test_another_agency_cannot_read_a_case_or_referral(system, dev_issuer_dir):
    intake, referral, _ = system
    inm = bearer(dev_issuer_dir, "MX-INM", "migration_authority")
    other = bearer(dev_issuer_dir, "GT-IGM", "migration_authority", jurisdiction="GT")
    r = await intake.post("/cases", headers=inm, json={
        "place": "Tapachula", "encountered_at": datetime.now(UTC).isoformat(),
        "persons": [{"given_names": "A", "family_names": "B", "sex": "male", "estimated_age": 30}]})
    case_id = r.json()["id"]
    assert (await intake.get(f"/cases/{case_id}", headers=inm)).status_code == 200
    r = await intake.get(f"/cases/{case_id}", headers=other)
    assert r.status_code == 404 and json.loads(r.text)["status"] == 404


async def test_subscriptions_belong_to_their_agency(system, dev_issuer_dir):
    _, _, notification = system
    # Supervisors manage subscriptions (docs/security.md): what is tested here is the agency boundary.
    pfpnna = bearer(dev_issuer_dir, "MX-PFPNNA", "child_protection", roles=["supervisor"])
    comar = bearer(dev_issuer_dir, "MX-COMAR", "asylum_office", roles=["supervisor"])
    r = await notification.post("/subscriptions", headers=pfpnna,
                                json={"url": "http://127.0.0.1:9/hooks", "event_types": ["referral.requested.v1"]})
    sub_id = r.json()["id"]
    assert r.json()["secret"].startswith("whsec_")
    assert [s["id"] for s in (await notification.get("/subscriptions", headers=comar)).json()] == []
    assert "secret" not in (await notification.get("/subscriptions", headers=pfpnna)).json()[0]
    assert (await notification.delete(f"/subscriptions/{sub_id}", headers=comar)).status_code == 404
    assert (await notification.get(f"/subscriptions/{sub_id}/deliveries", headers=comar)).status_code == 404
    assert (await notification.delete(f"/subscriptions/{sub_id}", headers=pfpnna)).status_code == 204
    [sub] = (await notification.get("/subscriptions", headers=pfpnna)).json()
    assert sub["active"] is False
    r = await notification.post("/subscriptions", headers=pfpnna,
                                json={"url": "http://127.0.0.1:9/hooks", "event_types": ["referral.exploded.v9"]})
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
