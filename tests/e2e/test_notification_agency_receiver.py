"""The checker's scenario, on the real broker: a receiver run as an agency would run one.

Dozens of events of several cases, on both topics (referral.referral and referral.protection_hold),
reach child protection's receiver while it is taken down mid-stream, comes back answering slowly —
at first slower than the sender's timeout, then slow but in time —, and at the end replays everything
it got through the Standard Webhooks reference library. The receiver deduplicates on webhook-id, as
the specification asks of receivers.

What must hold: every request carries a valid signature made at the time of its attempt (so a retry
sent long after the event is not stale); every delivery arrives; no webhook-id is sent again after the
attempt that was answered in time; the only repeats are attempts the sender gave up on (timed out) while
the receiver was still working on them, and the receiver's deduplication absorbs them. Another agency's
receiver gets everything meanwhile, exactly once.
"""

import asyncio
import dataclasses
import json
import time

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from enlace_platform.firewall import ENFORCEMENT_EVENT_TYPES
from notification.entrypoints.app import create_app
from tests.support.database_support import on_both_databases
from tests.support.harness import eventually, provision_topics, running_app
from tests.support.harness import unique_prefix
from tests.support.notification_support import (
    SigningReceiver, consumers_assigned, kafka_producer, notification_settings, publish, referral_data,
    sample_event, supervisor,
)
from starlette.requests import Request
from starlette.responses import Response

pytestmark = [pytest.mark.kafka, on_both_databases]

TIMEOUT_S = 1.0  # the sender's per-request timeout in this test
LIFE = ["referral.requested.v1", "protection_hold.placed.v1", "referral.received.v1", "referral.accepted.v1",
        "referral.note_added.v1", "referral.overdue.v1", "referral.completed.v1", "protection_hold.released.v1"]


@dataclasses.dataclass
class AgencyReceiver(SigningReceiver):
    """Verifies, then deduplicates on webhook-id (a repeat is acknowledged, not processed again).

    ``delays`` are consumed one per request (seconds to wait before answering); when empty, ``delay_s``
    applies. ``arrived_at`` keeps the wall-clock second of each request's arrival."""

    delays: list[float] = dataclasses.field(default_factory=list)
    delay_s: float = 0.0
    processed: list[str] = dataclasses.field(default_factory=list)
    arrived_at: list[float] = dataclasses.field(default_factory=list)

    async def _hook(self, request: Request) -> Response:
        self.arrived_at.append(time.time())
        got = await self.receive(request)
        delay = self.delays.pop(0) if self.delays else self.delay_s
        if delay:
            await asyncio.sleep(delay)
        if not got.verified:
            return Response(status_code=401)
        if got.webhook_id not in self.processed:
            self.processed.append(got.webhook_id)
        return Response(status_code=204)

    async def replay(self) -> list[int]:
        """POSTs every request it got to itself again, byte for byte: what an agency does to re-check its
        intake. Each must still verify, and each is a duplicate by webhook-id."""
        async with httpx.AsyncClient() as client:
            return [(await client.post(self.url, content=r.body, headers={
                k: v for k, v in r.headers.items() if k.startswith("webhook-") or k == "content-type"})).status_code
                for r in list(self.received)]


@pytest.fixture
async def producer(kafka_bootstrap):
    async with kafka_producer(kafka_bootstrap) as p:
        yield p


async def test_an_agency_receiver_taken_down_slow_and_replaying_loses_nothing_and_gets_no_repeat_after_success(
        kafka_bootstrap, dev_issuer_dir, tmp_path, producer, databases):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    settings = notification_settings(tmp_path=tmp_path, bootstrap=kafka_bootstrap, prefix=prefix,
                                     dev_issuer_dir=dev_issuer_dir, delivery_max_attempts=10_000,
                                     webhook_timeout_s=TIMEOUT_S, databases=databases)
    pfpnna, inm = AgencyReceiver(), AgencyReceiver()
    headers = {"MX-PFPNNA": supervisor(dev_issuer_dir, "MX-PFPNNA", "child_protection"),
               "MX-INM": supervisor(dev_issuer_dir, "MX-INM", "migration_authority")}
    referrals = [referral_data() for _ in range(4)]
    # Each case's life in order, the cases interleaved: 32 events, both topics.
    events = [sample_event(event_type, referral) for event_type in LIFE for referral in referrals]
    batches = events[:8], events[8:20], events[20:]
    # The migration authority is enforcement: it hears of status and holds only (enlace_platform.firewall).
    heard = {"MX-PFPNNA": events, "MX-INM": [e for e in events if e.type in ENFORCEMENT_EVENT_TYPES]}

    app = create_app(settings)
    async with running_app(app) as client:
        await consumers_assigned(app.state.runtime)
        for agency, receiver in (("MX-PFPNNA", pfpnna), ("MX-INM", inm)):
            await receiver.up()
            r = await client.post("/subscriptions", headers=headers[agency], json={
                "url": receiver.url, "event_types": ["referral.*", "protection_hold.*"]})
            assert r.status_code == 201, r.text
            receiver.secrets[agency] = r.json()["secret"]

        async def log(agency, **params) -> list[dict]:
            r = await client.get("/deliveries", headers=headers[agency], params={"limit": 500, **params})
            assert r.status_code == 200, r.text
            return r.json()["items"]

        async def delivered(agency, count):
            async def check():
                return len(await log(agency, status="delivered")) >= count
            await eventually(check, timeout=120, what=f"{count} deliveries to {agency}")

        # Up: the first batch arrives.
        await publish(producer, prefix, *batches[0])
        await delivered("MX-PFPNNA", len(batches[0]))

        # Taken down mid-stream: the second batch fails and is rescheduled; the other agency is not held up.
        await pfpnna.down()
        await publish(producer, prefix, *batches[1])
        await delivered("MX-INM", len([e for e in heard["MX-INM"] if e in batches[0] or e in batches[1]]))

        async def all_retrying():
            waiting = await log("MX-PFPNNA", status="pending")
            return len(waiting) == len(batches[1]) and all(d["attempts"] >= 2 for d in waiting)

        await eventually(all_retrying, timeout=60, what="the second batch retrying")

        # Back up, slow: the first three requests take longer than the sender waits, the rest are slow but in
        # time. The third batch is published meanwhile.
        pfpnna.delays = [TIMEOUT_S * 2.5] * 3
        pfpnna.delay_s = TIMEOUT_S / 5
        back_up_at = int(time.time())
        seen_before_outage = len(pfpnna.received)
        await pfpnna.up()
        await publish(producer, prefix, *batches[2])
        await delivered("MX-PFPNNA", len(events))
        await delivered("MX-INM", len(heard["MX-INM"]))
        logs = {agency: await log(agency) for agency in headers}
        details = {}
        for d in logs["MX-PFPNNA"]:
            r = await client.get(f"/deliveries/{d['id']}", headers=headers["MX-PFPNNA"])
            details[d["id"]] = r.json()["attempts_log"]

        # The agency replays what it got: each request still verifies, and each is a duplicate by webhook-id.
        pfpnna.delay_s = 0
        for receiver in (pfpnna, inm):
            processed = list(receiver.processed)
            replayed = await receiver.replay()
            assert set(replayed) == {204}, replayed
            assert receiver.processed == processed, "a replay is recognised by its webhook-id"
    await pfpnna.down()
    await inm.down()

    # Nothing lost: one delivery per event and agency, all delivered, each processed once by the receiver.
    for agency, receiver in (("MX-PFPNNA", pfpnna), ("MX-INM", inm)):
        assert len(logs[agency]) == len(heard[agency]) and all(d["status"] == "delivered" for d in logs[agency])
        assert sorted(receiver.processed) == sorted(d["id"] for d in logs[agency]), agency
        event_ids = sorted(json.loads(r.body)["data"]["event_id"] for r in receiver.received
                           if r.webhook_id in set(receiver.processed))
        assert set(event_ids) == {e.id for e in heard[agency]}, agency
        # Every request, replays included, carried a valid signature by this agency's secret.
        assert all(r.verified_by == {agency} for r in receiver.received), agency
        # Replayed once more now through the reference library: the signatures hold.
        for r in receiver.received:
            assert Webhook(receiver.secrets[agency]).verify(r.body, r.headers)["data"]["event_id"]

    # The fast agency never saw a repeat.
    assert len(inm.received) == 2 * len(heard["MX-INM"])  # the originals and the agency's own replay
    assert len(set(inm.ids())) == len(heard["MX-INM"])

    # Child protection: each webhook-id reached it once per attempt that reached it, and never after the
    # attempt it answered in time. The only repeats are attempts the sender timed out on while the receiver
    # was still slow; the receiver's deduplication absorbed them. (The log records timeouts and refusals alike,
    # so it bounds the repeats: each is an attempt without an HTTP answer.)
    originals = pfpnna.received[:len(pfpnna.received) // 2]
    repeats = 0
    for delivery_id, attempts in details.items():
        statuses = [a["status_code"] for a in attempts]
        assert statuses[-1] == 204 and statuses.count(204) == 1, (delivery_id, attempts)
        unanswered = statuses.count(None)
        arrivals = [r for r in originals if r.webhook_id == delivery_id]
        assert 1 <= len(arrivals) <= 1 + unanswered, (delivery_id, attempts, len(arrivals))
        repeats += len(arrivals) - 1
    assert repeats >= 1, "the slow start made the sender give up on at least one attempt"
    assert len(originals) == len(events) + repeats

    # The signature's timestamp is that of the attempt: what was retried after the outage is fresh, not
    # stamped when the event happened or at the first failed attempt.
    for r, arrived in zip(originals[seen_before_outage:], pfpnna.arrived_at[seen_before_outage:]):
        assert back_up_at <= int(r.headers["webhook-timestamp"]) <= arrived + 1
