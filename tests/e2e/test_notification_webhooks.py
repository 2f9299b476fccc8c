"""End to end on the real broker: a referral's life, published as the referral service publishes it,
reaches each agency's receiver as signed, verifiable webhooks, through an outage and a slow receiver.

The notification app runs whole (consumer, dispatcher, API). Each agency runs its own receiver, which
verifies every request with the Standard Webhooks reference library and keeps what it got; at the end
each receiver replays what it kept through the library once more, and counts webhook-ids.
"""

import asyncio
import dataclasses
import json
import secrets
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from standardwebhooks.webhooks import Webhook

from enlace_platform.contracts import FORMATS
from enlace_platform.firewall import ENFORCEMENT_EVENT_TYPES
from notification.entrypoints.app import create_app
from tests.support.database_support import on_both_databases
from tests.support.harness import eventually, provision_topics, running_app, unique_prefix
from tests.support.notification_support import (
    SigningReceiver, consumers_assigned, kafka_producer, notification_settings, publish, referral_data, sample_event,
    supervisor,
)

pytestmark = [pytest.mark.kafka, on_both_databases]

REPO = Path(__file__).resolve().parents[2]
WEBHOOK_SCHEMA = Draft202012Validator(
    json.loads((REPO / "contracts/webhooks/webhook-payload.v1.schema.json").read_text(encoding="utf-8")),
    format_checker=FORMATS)

AGENCIES = {
    # agency: (type, the event types it subscribes to)
    "MX-PFPNNA": ("child_protection", ["referral.*", "protection_hold.*"]),
    "MX-INM": ("migration_authority", ["referral.*", "protection_hold.*"]),
    "MX-COORD": ("coordinator", ["referral.overdue.v1", "referral.escalated.v1"]),
}


def traced(envelope):
    """The event as the referral service's relay sends it: with the journey's trace context."""
    trace_id = secrets.token_hex(16)
    return dataclasses.replace(envelope, trace_headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}), \
        trace_id


@pytest.fixture
async def producer(kafka_bootstrap):
    async with kafka_producer(kafka_bootstrap) as p:
        yield p


async def test_a_referrals_life_reaches_every_party_as_verified_webhooks(kafka_bootstrap, dev_issuer_dir, tmp_path,
                                                                        producer, databases):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    settings = notification_settings(tmp_path=tmp_path, bootstrap=kafka_bootstrap, prefix=prefix,
                                     dev_issuer_dir=dev_issuer_dir, delivery_max_attempts=1000, webhook_timeout_s=120,
                                     databases=databases)
    receivers = {agency: SigningReceiver() for agency in AGENCIES}
    headers = {agency: supervisor(dev_issuer_dir, agency, kind) for agency, (kind, _) in AGENCIES.items()}
    pfpnna = receivers["MX-PFPNNA"]
    referral = referral_data()
    sent: list = []

    async def send(*event_types):
        for event_type in event_types:
            envelope, trace_id = traced(sample_event(event_type, referral))
            sent.append((envelope, trace_id))
            await publish(producer, prefix, envelope)

    app = create_app(settings)
    async with running_app(app) as client:
        await consumers_assigned(app.state.runtime)
        for agency, (_, event_types) in AGENCIES.items():
            await receivers[agency].up()
            r = await client.post("/subscriptions", headers=headers[agency],
                                  json={"url": receivers[agency].url, "event_types": event_types})
            assert r.status_code == 201, r.text
            receivers[agency].secrets[agency] = r.json()["secret"]

        async def delivered(agency, count):
            async def check():
                r = await client.get("/deliveries", headers=headers[agency], params={"status": "delivered"})
                return len(r.json()["items"]) >= count
            await eventually(check, timeout=60, what=f"{count} deliveries to {agency}")

        # 1. Routed: the referral is requested and a protection hold placed.
        await send("referral.requested.v1", "protection_hold.placed.v1")
        await delivered("MX-PFPNNA", 2)
        await delivered("MX-INM", 2)

        # 2. Child protection's receiver is down while the referral is accepted and then runs late.
        await pfpnna.down()
        await send("referral.received.v1", "referral.accepted.v1", "referral.overdue.v1", "referral.escalated.v1")
        await delivered("MX-INM", 4)  # an enforcement agency: not the deadline's two (enlace_platform.firewall)
        await delivered("MX-COORD", 2)

        async def retrying():
            r = await client.get("/deliveries", headers=headers["MX-PFPNNA"], params={"status": "pending"})
            return len([d for d in r.json()["items"] if d["attempts"] >= 2]) == 4

        await eventually(retrying, timeout=60, what="child protection's deliveries retrying")
        await pfpnna.up()
        await delivered("MX-PFPNNA", 6)

        # 3. It answers slowly while the case closes; the others are not held up.
        pfpnna.gate = asyncio.Event()
        await send("referral.completed.v1", "protection_hold.released.v1")
        await delivered("MX-INM", 6)
        pfpnna.gate.set()
        await delivered("MX-PFPNNA", 8)

        logs = {}
        for agency in AGENCIES:
            r = await client.get("/deliveries", headers=headers[agency], params={"limit": 500})
            logs[agency] = r.json()["items"]
    for receiver in receivers.values():
        await receiver.down()

    expected_types = {
        "MX-PFPNNA": [e.type for e, _ in sent],
        "MX-INM": [e.type for e, _ in sent if e.type in ENFORCEMENT_EVENT_TYPES],
        "MX-COORD": ["referral.overdue.v1", "referral.escalated.v1"],
    }
    trace_of_event = {e.id: trace_id for e, trace_id in sent}
    for agency, receiver in receivers.items():
        # Each delivery arrived exactly once under its webhook-id, and nothing else arrived.
        assert sorted(receiver.ids()) == sorted(d["id"] for d in logs[agency]), agency
        assert len(set(receiver.ids())) == len(receiver.ids()) == len(expected_types[agency])
        assert all(d["status"] == "delivered" for d in logs[agency])
        bodies = [json.loads(r.body) for r in receiver.received]
        assert sorted(b["type"] for b in bodies) == sorted(expected_types[agency])
        for got, body in zip(receiver.received, bodies):
            # Replayed through the reference library: every signature holds.
            assert Webhook(receiver.secrets[agency]).verify(got.body, got.headers) == body
            assert [e.message for e in WEBHOOK_SCHEMA.iter_errors(body)] == []
            assert body["data"]["referral_id"] == referral["referral_id"]
            assert body["data"]["case_id"] == referral["case_id"]
            assert referral["person_id"] not in got.body.decode() and referral["need_code"] not in got.body.decode()
            # The POST continues the trace of the event that caused it.
            assert got.headers["traceparent"].split("-")[1] == trace_of_event[body["data"]["event_id"]]
    # The outage shows in the log: child protection's deliveries from step 2 needed several attempts.
    retried = [d for d in logs["MX-PFPNNA"] if d["attempts"] > 1]
    assert len(retried) == 4 and {d["event_type"] for d in retried} == {
        "referral.received.v1", "referral.accepted.v1", "referral.overdue.v1", "referral.escalated.v1"}
