"""The walking skeleton on the real broker: screening → referral → signed webhook, as one trace; each service on
SQLite, then each on a PostgreSQL database of its own. The API checks after it run on SQLite: on PostgreSQL the
access matrix (tests/security/test_access_matrix.py) tries every route, health and readiness included."""

import json
from datetime import UTC, datetime

import pytest

from tests.support.database_support import on_both_databases
from tests.support.harness import bearer, eventually, provision_topics, running_app, unique_prefix
from tests.support.walking_skeleton import screening_to_signed_webhook, three_apps

pytestmark = pytest.mark.kafka


@pytest.fixture
async def system(kafka_bootstrap, dev_issuer_dir, tmp_path, databases):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    apps = three_apps(dict(tmp_path=tmp_path, bootstrap=kafka_bootstrap, prefix=prefix, dev_issuer_dir=dev_issuer_dir,
                           databases=databases))
    assert {app.state.runtime.engine.dialect.name for app in apps} == {databases.backend}
    async with running_app(apps[0]) as intake, running_app(apps[1]) as referral, \
            running_app(apps[2]) as notification:
        yield intake, referral, notification


@on_both_databases
async def test_screening_becomes_a_referral_and_a_signed_webhook_in_one_trace(system, dev_issuer_dir, spans):
    _, _, hook = await screening_to_signed_webhook(*system, dev_issuer_dir)

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
