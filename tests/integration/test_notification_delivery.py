"""Webhook delivery on the real broker: the notification app consumes referral events published to its
topics and POSTs to real loopback receivers that verify every signature with the reference library."""

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import update
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from notification.adapters.orm import SubscriptionRow
from notification.adapters.webhook_sender import NO_ANSWER
from tests.support.harness import eventually, provision_topics, unique_prefix
from tests.support.notification_support import (
    Notification, SigningReceiver, deliveries, detail, event, referral_data, subscribe, the_delivery,
)

pytestmark = pytest.mark.kafka


@pytest.fixture
async def notification(kafka_bootstrap, dev_issuer_dir, tmp_path, producer):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    return Notification(kafka_bootstrap, dev_issuer_dir, tmp_path, prefix, producer)


PFPNNA = ("MX-PFPNNA", "child_protection")
INM = ("MX-INM", "migration_authority")


async def test_a_receiver_that_was_down_gets_the_event_exactly_once_after_retries(notification):
    receiver = SigningReceiver()
    async with notification.running(delivery_max_attempts=100) as client:
        await subscribe(client, notification, PFPNNA, receiver)
        await notification.publish(event("referral.requested.v1", referral_data()))
        # The receiver is down: attempts fail and are rescheduled.
        failing = await the_delivery(client, notification, PFPNNA, lambda d: d["attempts"] >= 3,
                                     "three failed attempts")
        assert failing["status"] == "pending" and failing["last_status_code"] is None
        async with receiver.running():
            await the_delivery(client, notification, PFPNNA, lambda d: d["status"] == "delivered", "the delivery")
            # A later event, delivered after the first: had the first been sent again, it would be here by now.
            marker = event("referral.accepted.v1", referral_data(status="accepted"))
            await notification.publish(marker)
            await the_delivery(client, notification, PFPNNA,
                               lambda d: d["event_id"] == marker.id and d["status"] == "delivered", "the marker")
        log = await detail(client, notification, PFPNNA, failing["id"])

    assert receiver.ids().count(failing["id"]) == 1, receiver.ids()
    assert len(receiver.received) == 2 and all(r.verified for r in receiver.received)
    attempts = log["attempts_log"]
    assert [a["number"] for a in attempts] == list(range(1, len(attempts) + 1)) and len(attempts) >= 4
    assert all(a["status_code"] is None and a["error"] == NO_ANSWER for a in attempts[:-1])
    assert attempts[-1]["status_code"] == 204 and attempts[-1]["error"] is None
    assert all(a["latency_ms"] >= 0 for a in attempts)


async def test_a_restart_in_the_middle_of_the_retry_schedule_resumes_it(notification):
    receiver = SigningReceiver(status_code=503)
    async with receiver.running():
        async with notification.running(delivery_max_attempts=100) as client:
            await subscribe(client, notification, PFPNNA, receiver)
            await notification.publish(event("referral.requested.v1", referral_data()))
            before = await the_delivery(client, notification, PFPNNA, lambda d: d["attempts"] >= 2,
                                        "two failed attempts")
        # Stopped. The receiver recovers while the service is down; a new app opens the same database.
        attempts_before_restart = len(receiver.received)
        receiver.status_code = 204
        async with notification.running(delivery_max_attempts=100) as client:
            after = await the_delivery(client, notification, PFPNNA, lambda d: d["status"] == "delivered",
                                       "the delivery after the restart")
            everything = await deliveries(client, notification, PFPNNA)

    assert after["id"] == before["id"] and len(everything) == 1, "resumed, not re-created"
    assert after["attempts"] == attempts_before_restart + 1 >= 3, "the count carried on across the restart"
    assert set(receiver.ids()) == {before["id"]}, "the same webhook-id every time"
    assert all(r.verified for r in receiver.received)


async def test_an_event_seen_twice_is_delivered_once(notification):
    receiver = SigningReceiver()
    async with receiver.running(), notification.running() as client:
        await subscribe(client, notification, PFPNNA, receiver)
        twice = event("referral.requested.v1", referral_data())
        await notification.publish(twice, twice)
        marker = event("referral.received.v1", referral_data(status="received"))
        await notification.publish(marker)
        await the_delivery(client, notification, PFPNNA,
                           lambda d: d["event_id"] == marker.id and d["status"] == "delivered", "the marker")
        await the_delivery(client, notification, PFPNNA,
                           lambda d: d["event_id"] == twice.id and d["status"] == "delivered", "the event")
        listed = await deliveries(client, notification, PFPNNA)
    assert sorted(d["event_id"] for d in listed) == sorted([twice.id, marker.id])
    assert len(receiver.ids()) == len(set(receiver.ids())) == 2


async def test_a_slow_receiver_does_not_delay_another(notification):
    slow = SigningReceiver(gate=asyncio.Event())  # answers only when the test opens the gate
    fast = SigningReceiver()
    events = [event("referral.requested.v1", referral_data()) for _ in range(5)]
    async with slow.running(), fast.running(), notification.running(
            webhook_timeout_s=120, delivery_concurrency_per_endpoint=2) as client:
        await subscribe(client, notification, INM, slow)  # the sender hears about each referral...
        await subscribe(client, notification, PFPNNA, fast)  # ...and so does the receiving agency
        await notification.publish(*events)

        async def fast_done_while_slow_holds_two():
            # The receiver sees a request before the service records its answer, so wait for both.
            fast_done = await deliveries(client, notification, PFPNNA, status="delivered")
            return len(fast.received) == len(fast_done) == len(events) and len(slow.received) == 2

        await eventually(fast_done_while_slow_holds_two, what="every event delivered to the fast receiver")
        # Evidence, taken while the slow receiver still holds its two requests: not one slow attempt has
        # finished, and only the per-endpoint limit (2) reached the slow endpoint.
        slow_now = await deliveries(client, notification, INM)
        assert len(slow_now) == len(events)
        assert all(d["attempts"] == 0 and d["status"] == "pending" for d in slow_now), slow_now
        assert len(slow.received) == 2, "two in flight per endpoint, the rest waiting"

        slow.gate.set()

        async def slow_got_all():
            return len(await deliveries(client, notification, INM, status="delivered")) == len(events)

        await eventually(slow_got_all, what="the slow receiver catching up")
    assert sorted(slow.ids()) == sorted(d["id"] for d in slow_now)
    assert all(r.verified for r in slow.received + fast.received)


async def test_a_failing_endpoint_gets_two_attempts_in_flight_and_a_healthy_one_its_limit(notification):
    receiver = SigningReceiver(gate=asyncio.Event())  # holds each request until the test opens its gate
    clock = SigningReceiver()  # another agency's receiver: it shows how far the dispatcher has got
    events = [event("referral.requested.v1", referral_data()) for _ in range(6)]
    settings = dict(webhook_timeout_s=120, delivery_concurrency_per_endpoint=4, delivery_retry_base_s=0.05,
                    delivery_retry_max_s=0.2)
    async with receiver.running(), clock.running(), notification.running(**settings) as client:
        await subscribe(client, notification, PFPNNA, receiver)
        await subscribe(client, notification, INM, clock)
        await notification.publish(*events)
        await eventually(lambda: _async(len(receiver.received) == 4), what="the limit in flight to a healthy endpoint")

        # Those four fail (503): the endpoint is failing, and what follows waits at a new gate.
        receiver.status_code = 503
        first_gate, receiver.gate = receiver.gate, asyncio.Event()
        first_gate.set()
        await eventually(lambda: _async(len(receiver.received) == 6), what="two attempts to the failing endpoint")
        marker = event("referral.requested.v1", referral_data())
        await notification.publish(marker)
        await the_delivery(client, notification, INM,
                           lambda d: d["event_id"] == marker.id and d["status"] == "delivered", "the marker")
        assert len(receiver.received) == 6, "two in flight while the endpoint fails, not four"

        # It answers again: the two in flight succeed, and the rest follow at the full limit.
        receiver.status_code = 204
        receiver.gate.set()

        async def all_delivered():  # the marker too: it names this agency as well
            return len(await deliveries(client, notification, PFPNNA, status="delivered")) == len(events) + 1

        await eventually(all_delivered, what="every delivery once the endpoint recovers")
        delivered = await deliveries(client, notification, PFPNNA)
    assert set(receiver.ids()) == {d["id"] for d in delivered}
    assert all(r.verified for r in receiver.received + clock.received)


async def test_without_update_returning_claims_read_their_rows_back(notification):
    # SQLite before 3.35 has no UPDATE … RETURNING: the dispatcher then reads what it claimed.
    receiver = SigningReceiver()
    events = [event("referral.requested.v1", referral_data()) for _ in range(3)]
    async with receiver.running(), notification.running() as client:
        client.runtime.engine.dialect.update_returning = False
        await subscribe(client, notification, PFPNNA, receiver)
        await notification.publish(*events)

        async def all_delivered():
            return len(await deliveries(client, notification, PFPNNA, status="delivered")) == len(events)

        await eventually(all_delivered, what="every delivery")
    assert len(receiver.ids()) == len(set(receiver.ids())) == len(events)
    assert all(r.verified and r.headers["traceparent"] for r in receiver.received)


async def test_410_disables_the_subscription_and_cancels_what_waits(notification):
    receiver = SigningReceiver(status_code=410, gate=asyncio.Event())
    async with receiver.running(), notification.running(delivery_concurrency_per_endpoint=1) as client:
        sub = await subscribe(client, notification, PFPNNA, receiver)
        await notification.publish(*(event("referral.requested.v1", referral_data()) for _ in range(3)))

        async def three_waiting():
            return len(receiver.received) == 1 and len(await deliveries(client, notification, PFPNNA)) == 3

        await eventually(three_waiting, what="one request in flight, three deliveries")
        receiver.gate.set()  # now the receiver answers 410 Gone

        async def settled():
            found = await deliveries(client, notification, PFPNNA)
            return found if all(d["status"] != "pending" for d in found) else None

        found = await eventually(settled, what="no delivery left pending")
        shown = (await client.get(f"/subscriptions/{sub['id']}", headers=notification.headers(*PFPNNA))).json()
        # Later events no longer reach it.
        other = SigningReceiver()
        async with other.running():
            await subscribe(client, notification, INM, other)
            marker = event("referral.requested.v1", referral_data())
            await notification.publish(marker)
            await eventually(lambda: _async(len(other.received) == 1), what="the marker at another agency")
        after = await deliveries(client, notification, PFPNNA)

    assert sorted(d["status"] for d in found) == ["cancelled", "cancelled", "dead"]
    assert [d["last_status_code"] for d in found if d["status"] == "dead"] == [410]
    assert shown["active"] is False and shown["disabled_reason"] == "gone"
    assert len(receiver.received) == 1
    assert len(after) == 3, "nothing new for a disabled subscription"


async def _async(value):
    return value


async def test_max_attempts_make_it_dead_then_a_manual_redelivery_sends_it_again(notification):
    receiver = SigningReceiver(status_code=500)
    async with receiver.running(), notification.running(delivery_max_attempts=3) as client:
        await subscribe(client, notification, PFPNNA, receiver)
        await notification.publish(event("referral.requested.v1", referral_data()))
        dead = await the_delivery(client, notification, PFPNNA, lambda d: d["status"] == "dead", "a dead delivery")
        assert [d["id"] for d in await deliveries(client, notification, PFPNNA, status="dead")] == [dead["id"]]
        log = await detail(client, notification, PFPNNA, dead["id"])
        assert [(a["number"], a["status_code"]) for a in log["attempts_log"]] == [(1, 500), (2, 500), (3, 500)]

        receiver.status_code = 204
        r = await client.post(f"/deliveries/{dead['id']}/redelivery", headers=notification.headers(*PFPNNA))
        assert r.status_code == 202, r.text
        await the_delivery(client, notification, PFPNNA, lambda d: d["status"] == "delivered", "the redelivery")
        log = await detail(client, notification, PFPNNA, dead["id"])
    assert receiver.ids() == [dead["id"]] * 4, "the same webhook-id, so the receiver can deduplicate"
    assert all(r.verified for r in receiver.received)
    assert [a["status_code"] for a in log["attempts_log"]] == [500, 500, 500, 204]


async def test_during_a_rotation_both_secrets_verify_and_afterwards_only_the_new(notification):
    receiver = SigningReceiver()
    async with receiver.running(), notification.running(secret_rotation_overlap_s=3600) as client:
        sub = await subscribe(client, notification, PFPNNA, receiver, name="old")
        r = await client.post(f"/subscriptions/{sub['id']}/secret/rotation", headers=notification.headers(*PFPNNA))
        receiver.secrets["new"] = r.json()["secret"]
        first = event("referral.requested.v1", referral_data())
        await notification.publish(first)
        await eventually(lambda: _async(len(receiver.received) == 1), what="the first webhook")

        # The overlap ends (moved into the past rather than waited for).
        async with client.runtime.sessions() as session:
            await session.exec(update(SubscriptionRow).where(SubscriptionRow.id == sub["id"])
                               .values(previous_secret_expires_at=datetime.now(UTC) - timedelta(seconds=1)))
            await session.commit()
        await notification.publish(event("referral.accepted.v1", referral_data(status="accepted")))
        await eventually(lambda: _async(len(receiver.received) == 2), what="the second webhook")

    during, after = receiver.received
    assert during.verified_by == {"old", "new"}
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    assert after.verified_by == {"new"}
    assert len(after.headers["webhook-signature"].split(" ")) == 1


async def test_two_replicas_on_one_database_never_send_the_same_attempt_twice(notification):
    seen: dict[str, int] = {}
    overlaps: list[str] = []
    receiver = SigningReceiver()

    def arrived(got):
        seen[got.webhook_id] = seen.get(got.webhook_id, 0) + 1
        if seen[got.webhook_id] > 1:
            overlaps.append(got.webhook_id)

    receiver.on_receive.append(arrived)
    events = [event("referral.requested.v1", referral_data()) for _ in range(20)]
    async with receiver.running(), notification.running(dispatcher_fallback_poll_s=0.05) as one, \
            notification.running(dispatcher_fallback_poll_s=0.05):
        await subscribe(one, notification, PFPNNA, receiver)
        await notification.publish(*events)

        async def all_delivered():
            return len(await deliveries(one, notification, PFPNNA, status="delivered", limit=500)) == len(events)

        await eventually(all_delivered, what="every delivery")
    assert overlaps == []
    assert len(receiver.ids()) == len(set(receiver.ids())) == len(events)


async def test_a_rotation_during_a_retry_signs_the_next_attempts_with_both_secrets(notification):
    receiver = SigningReceiver(status_code=503, gate=asyncio.Event())
    async with receiver.running(), notification.running(secret_rotation_overlap_s=3600) as client:
        sub = await subscribe(client, notification, PFPNNA, receiver, name="old")
        await notification.publish(event("referral.requested.v1", referral_data()))
        await eventually(lambda: _async(len(receiver.received) == 1), what="the first attempt, held by the receiver")
        # Rotated while that attempt is in flight: it keeps the signature it was sent with.
        r = await client.post(f"/subscriptions/{sub['id']}/secret/rotation", headers=notification.headers(*PFPNNA))
        receiver.secrets["new"] = r.json()["secret"]
        receiver.gate.set()  # ...and it fails (503)
        await eventually(lambda: _async(len(receiver.received) >= 3), what="two retries")
        receiver.status_code = 204
        done = await the_delivery(client, notification, PFPNNA, lambda d: d["status"] == "delivered", "the delivery")

    first, *retries = receiver.received
    assert first.verified_by == {"old"}
    with pytest.raises(WebhookVerificationError):  # signed before the rotation, with the old secret alone
        Webhook(receiver.secrets["new"]).verify(first.body, first.headers)
    assert retries and all(r.verified_by == {"old", "new"} for r in retries)
    assert set(receiver.ids()) == {done["id"]}


async def test_one_of_two_replicas_restarts_mid_schedule_and_the_other_carries_on(notification):
    receiver = SigningReceiver(status_code=503, gate=asyncio.Event())
    events = [event("referral.requested.v1", referral_data()) for _ in range(6)]
    fast = dict(dispatcher_fallback_poll_s=0.05, webhook_timeout_s=2.0)
    async with receiver.running(), notification.running(**fast) as two:
        sub = await subscribe(two, notification, PFPNNA, receiver)
        async with notification.running(**fast) as one:
            await notification.publish(*events)
            await eventually(lambda: _async(len(receiver.received) >= 2), what="attempts held by the receiver")
            # Replica one stops now, with attempts in flight that the receiver holds past the timeout.
        receiver.gate.set()
        await the_delivery(two, notification, PFPNNA, lambda d: d["attempts"] >= 3, "retries after the stop")
        # Replica one comes back while the receiver still fails, then the receiver recovers.
        async with notification.running(**fast):
            receiver.status_code = 204

            async def all_delivered():
                found = await deliveries(two, notification, PFPNNA, subscription_id=sub["id"])
                return len(found) == len(events) and all(d["status"] == "delivered" for d in found)

            await eventually(all_delivered, timeout=60, what="every delivery")
            logs = [await detail(two, notification, PFPNNA, d["id"]) for d in
                    await deliveries(two, notification, PFPNNA)]

    for log in logs:
        attempts = log["attempts_log"]
        assert [a["status_code"] for a in attempts][-1] == 204
        assert [a["status_code"] for a in attempts].count(204) == 1
        assert [a["number"] for a in attempts] == list(range(1, len(attempts) + 1))
        # Every attempt that reached the receiver is in the log, and none came after the success. (An attempt
        # the receiver held past the timeout reached it, but its log entry reads like a refused connection.)
        answered = len([a for a in attempts if a["status_code"] is not None])
        assert answered <= receiver.ids().count(log["id"]) <= len(attempts)
    assert all(r.verified for r in receiver.received)


async def test_a_token_in_the_webhook_url_stays_out_of_logs_and_traces(notification, capsys, spans):
    # The service's log handler writes its lines (INFO and up) to stdout.
    receiver = SigningReceiver()
    token = "T0001-B0001-capability-9f8e7d"
    async with receiver.running(), notification.running(trace_sql=True) as client:  # SQL spans checked too
        r = await client.post("/subscriptions", headers=notification.headers(*PFPNNA),
                              json={"url": f"{receiver.url}?token={token}", "event_types": ["referral.*"]})
        receiver.secrets["s"] = r.json()["secret"]
        await notification.publish(event("referral.requested.v1", referral_data()))
        await the_delivery(client, notification, PFPNNA, lambda d: d["status"] == "delivered", "the delivery")
    assert len(receiver.received) == 1 and receiver.received[0].verified
    assert token not in capsys.readouterr().out
    posts = [s for s in spans.get_finished_spans() if s.attributes and
             any(str(v).startswith(f"http://127.0.0.1:{receiver.port}") for v in s.attributes.values())]
    assert posts, "the webhook POST is traced"
    leaks = [(s.name, k, v) for s in spans.get_finished_spans() for k, v in (s.attributes or {}).items()
             if token in str(v)]
    assert leaks == []


async def test_the_dispatcher_refuses_a_name_resolving_to_loopback_when_it_connects(notification):
    receiver = SigningReceiver()
    async with receiver.running():
        # Registered while loopback was allowed (the URL check knows "localhost"; a DNS name it cannot judge).
        async with notification.running(webhook_allow_loopback=True) as client:
            r = await client.post("/subscriptions", headers=notification.headers(*PFPNNA), json={
                "url": f"http://localhost:{receiver.port}/hooks", "event_types": ["referral.*"]})
            assert r.status_code == 201, r.text
        async with notification.running(webhook_allow_loopback=False) as client:
            await notification.publish(event("referral.requested.v1", referral_data()))
            failing = await the_delivery(client, notification, PFPNNA, lambda d: d["attempts"] >= 2, "refused attempts")
            log = await detail(client, notification, PFPNNA, failing["id"])
    assert receiver.received == []
    assert all((a["status_code"], a["error"]) == (None, NO_ANSWER) for a in log["attempts_log"])
