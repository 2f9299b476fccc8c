"""The subscriptions and delivery log API, in-process, without a broker (deliveries are written by the
real event handler; the dispatcher only runs once Kafka is up, so here they stay as written)."""

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import select

from enlace_platform.envelope import Envelope
from notification.adapters.orm import DeliveryAttemptRow, DeliveryRow, SubscriptionRow
from notification.entrypoints.app import create_app
from notification.service_layer.handlers import make_referral_event_handler
from tests.support.database_support import on_both_databases
from tests.support.harness import bearer, free_port, running_app
from tests.support.notification_support import (
    event, hold_data, notification_settings, referral_data, stored_secrets, supervisor,
)


@pytest.fixture
def settings(tmp_path, dev_issuer_dir, databases):
    # Nobody listens on this broker port: the API works without Kafka.
    return notification_settings(tmp_path=tmp_path, bootstrap=f"127.0.0.1:{free_port()}", prefix="api.",
                                 dev_issuer_dir=dev_issuer_dir, webhook_allow_loopback=False,
                                 smtp_host="127.0.0.1", secret_rotation_overlap_s=3600, databases=databases)


@pytest.fixture
async def api(settings):
    app = create_app(settings)
    async with running_app(app) as client:
        client.runtime = app.state.runtime
        yield client


@pytest.fixture
def pfpnna(dev_issuer_dir):
    return supervisor(dev_issuer_dir, "MX-PFPNNA", "child_protection")


@pytest.fixture
def comar(dev_issuer_dir):
    return supervisor(dev_issuer_dir, "MX-COMAR", "asylum_office")


HOOK = "https://hooks.pfpnna.example/enlace"


async def _subscribe(api, headers, **body):
    r = await api.post("/subscriptions", headers=headers, json={"url": HOOK, "event_types": ["referral.*"], **body})
    assert r.status_code == 201, r.text
    return r.json()


async def _handle(api, settings, envelope: Envelope) -> None:
    handler = make_referral_event_handler(settings, api.runtime.agencies)
    async with api.runtime.sessions() as session:
        await handler(session, envelope)
        await session.commit()


async def _deliveries(api) -> list[DeliveryRow]:
    async with api.runtime.sessions() as session:
        return list((await session.exec(select(DeliveryRow).order_by(DeliveryRow.created_at))).all())


# --- subscriptions -----------------------------------------------------------------------------------

async def test_create_shows_the_secret_once(api, pfpnna):
    created = await _subscribe(api, pfpnna, event_types=["referral.requested.v1", "protection_hold.*"],
                               email="guardia@pfpnna.example")
    assert created["secret"].startswith("whsec_")
    assert created["agency_id"] == "MX-PFPNNA" and created["active"] is True
    assert created["event_types"] == ["referral.requested.v1", "protection_hold.*"]
    assert created["email"] == "guardia@pfpnna.example"
    listed = (await api.get("/subscriptions", headers=pfpnna)).json()
    one = (await api.get(f"/subscriptions/{created['id']}", headers=pfpnna)).json()
    assert [s["id"] for s in listed] == [created["id"]] and one["id"] == created["id"]
    for shown in (*listed, one):
        assert "secret" not in shown and created["secret"] not in str(shown)


async def test_another_agency_sees_nothing_and_gets_404(api, pfpnna, comar, settings):
    sub = await _subscribe(api, pfpnna)
    await _handle(api, settings, event("referral.requested.v1", referral_data()))
    [delivery] = await _deliveries(api)
    assert (await api.get("/subscriptions", headers=comar)).json() == []
    assert (await api.get("/deliveries", headers=comar)).json() == {"items": []}
    for method, path in (("GET", f"/subscriptions/{sub['id']}"), ("DELETE", f"/subscriptions/{sub['id']}"),
                         ("POST", f"/subscriptions/{sub['id']}/secret/rotation"),
                         ("GET", f"/subscriptions/{sub['id']}/deliveries"),
                         ("GET", f"/deliveries/{delivery.id}"), ("POST", f"/deliveries/{delivery.id}/redelivery"),
                         ("GET", "/subscriptions/sub_nope"), ("GET", "/deliveries/msg_nope")):
        r = await api.request(method, path, headers=comar)
        assert r.status_code == 404, (method, path, r.text)
        assert r.headers["content-type"] == "application/problem+json"
    assert (await api.get(f"/subscriptions/{sub['id']}", headers=pfpnna)).status_code == 200


@pytest.mark.parametrize(("body", "path"), [
    ({"url": HOOK, "event_types": ["referral.exploded.v9"]}, "body/event_types/0"),
    ({"url": HOOK, "event_types": ["referral.requested.v1", "*"]}, "body/event_types/1"),
    ({"url": HOOK, "event_types": ["case.screened.v1"]}, "body/event_types/0"),
    ({"url": HOOK, "event_types": []}, "body/event_types"),
    ({"url": "ftp://hooks.example/x", "event_types": ["referral.*"]}, "body/url"),
    ({"url": "http://127.0.0.1:9/hooks", "event_types": ["referral.*"]}, "body/url"),  # loopback off here
    ({"url": HOOK, "event_types": ["referral.*"], "email": "not-an-address"}, "body/email"),
])
async def test_invalid_subscriptions_get_a_422_naming_the_field(api, pfpnna, body, path):
    r = await api.post("/subscriptions", headers=pfpnna, json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert path in [e["path"] for e in r.json()["errors"]]
    assert (await api.get("/subscriptions", headers=pfpnna)).json() == []


async def test_idempotency_key_makes_a_retried_create_safe(api, pfpnna):
    headers = {**pfpnna, "Idempotency-Key": "create-1"}
    body = {"url": HOOK, "event_types": ["referral.*"]}
    first = await api.post("/subscriptions", headers=headers, json=body)
    again = await api.post("/subscriptions", headers=headers, json=body)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert len((await api.get("/subscriptions", headers=pfpnna)).json()) == 1
    other = await api.post("/subscriptions", headers=headers, json={**body, "event_types": ["protection_hold.*"]})
    assert other.status_code == 422


async def test_rotation_returns_a_new_secret_and_an_overlap(api, pfpnna):
    sub = await _subscribe(api, pfpnna)
    before = datetime.now(UTC)
    r = await api.post(f"/subscriptions/{sub['id']}/secret/rotation", headers=pfpnna)
    assert r.status_code == 200, r.text
    rotated = r.json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != sub["secret"]
    until = datetime.fromisoformat(rotated["previous_secret_expires_at"])
    assert before + timedelta(seconds=3600) <= until <= datetime.now(UTC) + timedelta(seconds=3600)
    shown = (await api.get(f"/subscriptions/{sub['id']}", headers=pfpnna)).json()
    assert shown["previous_secret_expires_at"] is not None and "secret" not in shown
    assert await stored_secrets(api.runtime, sub["id"]) == (rotated["secret"], sub["secret"])


async def test_a_retried_rotation_rotates_once(api, pfpnna):
    sub = await _subscribe(api, pfpnna)
    headers = {**pfpnna, "Idempotency-Key": "rotate-1"}
    first = (await api.post(f"/subscriptions/{sub['id']}/secret/rotation", headers=headers)).json()
    again = (await api.post(f"/subscriptions/{sub['id']}/secret/rotation", headers=headers)).json()
    assert again == first
    assert await stored_secrets(api.runtime, sub["id"]) == (first["secret"], sub["secret"]), \
        "the original secret still signs during the overlap"


async def test_delete_disables_and_cancels_what_was_waiting(api, pfpnna, settings):
    sub = await _subscribe(api, pfpnna)
    await _handle(api, settings, event("referral.requested.v1", referral_data()))
    assert (await api.delete(f"/subscriptions/{sub['id']}", headers=pfpnna)).status_code == 204
    shown = (await api.get(f"/subscriptions/{sub['id']}", headers=pfpnna)).json()
    assert shown["active"] is False and shown["disabled_reason"] == "deleted"
    [delivery] = (await api.get("/deliveries", headers=pfpnna)).json()["items"]
    assert delivery["status"] == "cancelled" and delivery["next_attempt_at"] is None
    await _handle(api, settings, event("referral.requested.v1", referral_data()))
    assert len(await _deliveries(api)) == 1, "a disabled subscription gets nothing new"
    r = await api.post(f"/deliveries/{delivery['id']}/redelivery", headers=pfpnna)
    assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"


# --- who gets a delivery -------------------------------------------------------------------------------

async def test_each_named_party_with_a_matching_subscription_gets_one_delivery(api, settings, dev_issuer_dir):
    agencies = {"MX-INM": "migration_authority", "MX-PFPNNA": "child_protection", "MX-COORD": "coordinator",
                "MX-COMAR": "asylum_office"}
    subs = {a: await _subscribe(api, supervisor(dev_issuer_dir, a, t)) for a, t in agencies.items()}
    narrow = await _subscribe(api, supervisor(dev_issuer_dir, "MX-PFPNNA", "child_protection"),
                              event_types=["referral.accepted.v1"])
    data = referral_data()
    await _handle(api, settings, event("referral.requested.v1", data))
    by_sub = {d.subscription_id for d in await _deliveries(api)}
    # COMAR is not named by the event; the narrow subscription did not choose the type.
    assert by_sub == {subs["MX-INM"]["id"], subs["MX-PFPNNA"]["id"], subs["MX-COORD"]["id"]}
    assert narrow["id"] not in by_sub
    hold = hold_data(data)
    await _handle(api, settings, event("protection_hold.placed.v1", hold))
    assert len(await _deliveries(api)) == 3, "nobody chose protection_hold.* here"


async def test_an_event_seen_twice_makes_no_second_delivery(api, pfpnna, settings):
    await _subscribe(api, pfpnna, email="guardia@pfpnna.example")
    envelope = event("referral.requested.v1", referral_data())
    await _handle(api, settings, envelope)
    # Straight to the handler again, past the consumer's inbox: the delivery ids are per (event, subscription).
    await _handle(api, settings, envelope)
    deliveries = await _deliveries(api)
    assert sorted(d.channel for d in deliveries) == ["email", "webhook"]
    assert len({d.id for d in deliveries}) == 2


async def test_email_deliveries_go_to_the_receiver_or_the_coordinator(api, settings, dev_issuer_dir):
    inm = await _subscribe(api, supervisor(dev_issuer_dir, "MX-INM", "migration_authority"), email="inm@example.org")
    pfpnna = await _subscribe(api, supervisor(dev_issuer_dir, "MX-PFPNNA", "child_protection"), email="dif@example.org")
    coord = await _subscribe(api, supervisor(dev_issuer_dir, "MX-COORD", "coordinator"), email="coord@example.org")

    async def emailed(envelope):
        before = {d.id for d in await _deliveries(api)}
        await _handle(api, settings, envelope)
        return {d.subscription_id for d in await _deliveries(api) if d.id not in before and d.channel == "email"}

    assert await emailed(event("referral.requested.v1", referral_data())) == {pfpnna["id"]}
    assert await emailed(event("referral.requested.v1", referral_data(to_agency_id=None))) == {coord["id"]}
    overdue = referral_data(status="requested", reason_code="ACCEPT_DEADLINE")
    assert await emailed(event("referral.overdue.v1", overdue)) == {pfpnna["id"], coord["id"]}
    assert await emailed(event("referral.accepted.v1", referral_data(status="accepted"))) == set()
    # A queued referral assigned once consent arrives (or handed on by the coordinator) is new for its receiver.
    assert await emailed(event("referral.reassigned.v1", referral_data(actor_agency_id="MX-COORD"))) == {pfpnna["id"]}
    assert inm["id"]  # the sender gets webhooks, never these e-mails


# --- delivery log ------------------------------------------------------------------------------------

async def test_delivery_log_lists_filters_and_shows_attempts(api, pfpnna, settings):
    sub = await _subscribe(api, pfpnna)
    for _ in range(3):
        await _handle(api, settings, event("referral.requested.v1", referral_data()))
    rows = await _deliveries(api)
    async with api.runtime.sessions() as session:
        dead = await session.get(DeliveryRow, rows[0].id)
        dead.status, dead.attempts, dead.last_status_code = "dead", 2, 503
        for n, (code, error) in enumerate([(None, "ConnectError: refused"), (503, None)], start=1):
            session.add(DeliveryAttemptRow(delivery_id=dead.id, number=n, status_code=code, latency_ms=12.5,
                                           error=error))
        session.add(dead)
        await session.commit()

    everything = (await api.get("/deliveries", headers=pfpnna)).json()["items"]
    assert len(everything) == 3
    assert all(d["subscription_id"] == sub["id"] and d["channel"] == "webhook" for d in everything)
    [only_dead] = (await api.get("/deliveries", headers=pfpnna, params={"status": "dead"})).json()["items"]
    assert only_dead["id"] == dead.id and only_dead["next_attempt_at"] is None
    assert len((await api.get("/deliveries", headers=pfpnna, params={"status": "pending"})).json()["items"]) == 2
    assert len((await api.get("/deliveries", headers=pfpnna, params={"limit": 1})).json()["items"]) == 1
    r = await api.get("/deliveries", headers=pfpnna, params={"status": "lost"})
    assert r.status_code == 422 and "query/status" in [e["path"] for e in r.json()["errors"]]

    detail = (await api.get(f"/deliveries/{dead.id}", headers=pfpnna)).json()
    assert [(a["number"], a["status_code"], a["latency_ms"], a["error"]) for a in detail["attempts_log"]] == [
        (1, None, 12.5, "ConnectError: refused"), (2, 503, 12.5, None)]

    r = await api.post(f"/deliveries/{dead.id}/redelivery", headers=pfpnna)
    assert r.status_code == 202, r.text
    assert r.json()["id"] == dead.id and r.json()["status"] == "pending"
    async with api.runtime.sessions() as session:
        again = await session.get(DeliveryRow, dead.id)
        assert again.cycle_attempts == 0 and again.attempts == 2, "a fresh schedule; the log keeps its history"


async def test_redelivery_of_an_attempt_in_flight_is_refused(api, pfpnna, settings):
    await _subscribe(api, pfpnna)
    await _handle(api, settings, event("referral.requested.v1", referral_data()))
    [row] = await _deliveries(api)
    async with api.runtime.sessions() as session:
        row = await session.get(DeliveryRow, row.id)
        row.lease_token, row.lease_expires_at = "someone", datetime.now(UTC) + timedelta(minutes=1)
        session.add(row)
        await session.commit()
    r = await api.post(f"/deliveries/{row.id}/redelivery", headers=pfpnna)
    assert r.status_code == 409, r.text


async def test_a_contract_breaking_event_is_poison(api, settings):
    from enlace_platform.consumer import PoisonMessage

    bad = event("referral.requested.v1", referral_data())
    bad.data.pop("referral_id")
    with pytest.raises(PoisonMessage):
        await _handle(api, settings, bad)
    hold = event("protection_hold.placed.v1", hold_data(referral_data()))
    hold.data.pop("hold_id")
    with pytest.raises(PoisonMessage):
        await _handle(api, settings, hold)



async def test_metrics_count_deliveries_by_channel_and_status(api, pfpnna, settings):
    await _subscribe(api, pfpnna, email="guardia@pfpnna.example")
    await _handle(api, settings, event("referral.requested.v1", referral_data()))
    text = (await api.get("/metrics")).text
    assert 'enlace_notification_deliveries{channel="webhook",status="pending"} 1.0' in text
    assert 'enlace_notification_deliveries{channel="email",status="pending"} 1.0' in text
    assert 'enlace_notification_deliveries{channel="webhook",status="dead"} 0.0' in text
    assert "enlace_notification_oldest_pending_age_seconds" in text


async def test_a_database_from_an_older_version_is_refused_plainly(settings, tmp_path):
    import sqlite3

    from enlace_platform.db import OutdatedSchema

    db = sqlite3.connect(tmp_path / "notification.db")  # the walking skeleton's table, without the new columns
    db.execute("CREATE TABLE notification_subscription (id VARCHAR PRIMARY KEY, agency_id VARCHAR, url VARCHAR, "
               "event_types JSON, secret VARCHAR, email VARCHAR, active BOOLEAN, created_at DATETIME)")
    db.commit()
    db.close()
    with pytest.raises(OutdatedSchema, match="notification_subscription.previous_secret"):
        async with running_app(create_app(settings)):
            pass


@on_both_databases  # two replicas' claims really overlap on PostgreSQL
async def test_one_lease_per_attempt_across_dispatchers(api, pfpnna, settings):
    from notification.adapters.webhook_sender import SendResult
    from notification.domain.delivery import Outcome
    from notification.service_layer.dispatcher import Dispatcher

    await _subscribe(api, pfpnna)
    await _handle(api, settings, event("referral.requested.v1", referral_data()))
    [row] = await _deliveries(api)
    # Two replicas on one database (each with its own engine, as separate processes would have).
    other = create_app(settings).state.runtime
    one, two = Dispatcher(api.runtime, settings), Dispatcher(other, settings)
    try:
        now = datetime.now(UTC)
        tokens = await asyncio.gather(*(d.claim(row.id, now) for d in (one, two, one, two)))
        assert len([t for t in tokens if t]) == 1, tokens
        [first] = [t for t in tokens if t]
        # The holder dies; once its lease has expired, another replica takes the attempt over...
        assert await two.claim(row.id, now + timedelta(seconds=1)) is None, "the lease still holds"
        later = now + timedelta(hours=1)
        second = await two.claim(row.id, later)
        assert second and second != first
        # ...and the late result of the first holder is logged but decides nothing.
        await one.record(row.id, first, SendResult(204, 5.0, None), Outcome.OK)
        async with api.runtime.sessions() as session:
            current = await session.get(DeliveryRow, row.id)
            assert (current.status, current.lease_token, current.attempts) == ("pending", second, 1)
        await two.record(row.id, second, SendResult(204, 5.0, None), Outcome.OK)
        detail = (await api.get(f"/deliveries/{row.id}", headers=pfpnna)).json()
        assert detail["status"] == "delivered" and len(detail["attempts_log"]) == 2
    finally:
        await other.engine.dispose()


async def test_patch_changes_a_subscription_and_re_enables_it(api, pfpnna, comar, settings):
    sub = await _subscribe(api, pfpnna, email="guardia@pfpnna.example")
    url = f"/subscriptions/{sub['id']}"
    r = await api.patch(url, headers=pfpnna, json={"url": "https://new.pfpnna.example/hooks",
                                                   "event_types": ["protection_hold.*"], "email": None})
    assert r.status_code == 200, r.text
    assert (r.json()["url"], r.json()["event_types"], r.json()["email"]) == (
        "https://new.pfpnna.example/hooks", ["protection_hold.*"], None)
    assert "secret" not in r.json()
    for body, path in (({"event_types": ["referral.nope.v1"]}, "body/event_types/0"),
                       ({"url": "http://10.1.2.3/hooks"}, "body/url"), ({"url": None}, "body/url"),
                       ({"active": False}, "body/active")):
        r = await api.patch(url, headers=pfpnna, json=body)
        assert r.status_code == 422 and path in [e["path"] for e in r.json()["errors"]], (body, r.text)
    assert (await api.patch(url, headers=comar, json={"active": True})).status_code == 404

    await api.delete(url, headers=pfpnna)
    r = await api.patch(url, headers=pfpnna, json={"active": True})
    assert r.status_code == 200 and r.json()["active"] is True and r.json()["disabled_reason"] is None
    data = referral_data()
    await _handle(api, settings, event("protection_hold.placed.v1", hold_data(data)))
    [delivery] = await _deliveries(api)
    assert delivery.event_type == "protection_hold.placed.v1" and delivery.channel == "webhook"


async def test_disabling_spares_an_attempt_in_flight_and_cancels_it_if_it_fails(api, pfpnna, settings):
    from notification.adapters.webhook_sender import SendResult
    from notification.domain.delivery import Outcome
    from notification.service_layer.dispatcher import Dispatcher

    sub = await _subscribe(api, pfpnna)
    for _ in range(3):
        await _handle(api, settings, event("referral.requested.v1", referral_data()))
    first, second, third = await _deliveries(api)
    dispatcher = Dispatcher(api.runtime, settings)
    now = datetime.now(UTC)
    token_1, token_2 = await dispatcher.claim(first.id, now), await dispatcher.claim(second.id, now)
    assert (await api.delete(f"/subscriptions/{sub['id']}", headers=pfpnna)).status_code == 204
    statuses = {d.id: d.status for d in await _deliveries(api)}
    assert statuses == {first.id: "pending", second.id: "pending", third.id: "cancelled"}
    # The two attempts in flight finish: one got through, one failed.
    await dispatcher.record(first.id, token_1, SendResult(204, 3.0, None), Outcome.OK)
    await dispatcher.record(second.id, token_2, SendResult(503, 3.0, None), Outcome.TRANSIENT)
    statuses = {d.id: d.status for d in await _deliveries(api)}
    assert statuses == {first.id: "delivered", second.id: "cancelled", third.id: "cancelled"}


async def test_an_orphaned_delivery_of_a_disabled_subscription_is_cancelled_not_kept(api, pfpnna, settings):
    from notification.service_layer.dispatcher import Dispatcher

    sub = await _subscribe(api, pfpnna)
    await _handle(api, settings, event("referral.requested.v1", referral_data()))
    [row] = await _deliveries(api)
    dispatcher = Dispatcher(api.runtime, settings)
    assert await dispatcher.claim(row.id, datetime.now(UTC))  # ...and then its holder dies
    await api.delete(f"/subscriptions/{sub['id']}", headers=pfpnna)
    async with api.runtime.sessions() as session:  # its lease runs out
        stale = await session.get(DeliveryRow, row.id)
        stale.lease_expires_at = datetime.now(UTC) - timedelta(seconds=1)
        session.add(stale)
        await session.commit()
    await dispatcher.start_due()
    [row] = await _deliveries(api)
    assert row.status == "cancelled" and row.attempts == 0


async def test_outcomes_recorded_together_decide_as_they_would_one_by_one(api, pfpnna, settings):
    """A dispatch pass records every attempt that finished since the last one in one transaction, in order."""
    from notification.adapters.webhook_sender import SendResult
    from notification.domain.delivery import Outcome
    from notification.service_layer.dispatcher import Dispatcher, Finished

    sub = await _subscribe(api, pfpnna)
    for _ in range(5):
        await _handle(api, settings, event("referral.requested.v1", referral_data()))
    late, retried, gone, after_gone, waiting = await _deliveries(api)
    dispatcher = Dispatcher(api.runtime, settings)
    now = datetime.now(UTC)
    tokens = {d.id: await dispatcher.claim(d.id, now) for d in (late, retried, gone, after_gone)}
    # The lease on ``late`` ran out and another dispatcher took the attempt over.
    taken_over = await dispatcher.claim(late.id, now + timedelta(hours=1))
    at = datetime.now(UTC)

    def finished(delivery, token, status_code, outcome):
        return Finished(delivery.id, token, SendResult(status_code, 2.0, None), outcome, at)

    await dispatcher.record_all([
        finished(late, tokens[late.id], 204, Outcome.OK),  # counted, decides nothing
        finished(retried, tokens[retried.id], 503, Outcome.TRANSIENT),  # rescheduled, then cancelled by the 410
        finished(gone, tokens[gone.id], 410, Outcome.GONE),
        finished(after_gone, tokens[after_gone.id], 503, Outcome.TRANSIENT),  # its subscription is gone by now
        finished(late, taken_over, 204, Outcome.OK),  # the holder's outcome decides
    ])

    rows = {d.id: d for d in await _deliveries(api)}
    assert [(rows[d.id].status, rows[d.id].attempts) for d in (late, retried, gone, after_gone, waiting)] == [
        ("delivered", 2), ("cancelled", 1), ("dead", 1), ("cancelled", 1), ("cancelled", 0)]
    assert rows[gone.id].last_error == "410 Gone: the subscription was disabled"
    assert rows[after_gone.id].last_error == rows[retried.id].last_error == "subscription disabled: gone"
    assert all(row.lease_token is None and row.lease_expires_at is None for row in rows.values())
    log = (await api.get(f"/deliveries/{late.id}", headers=pfpnna)).json()["attempts_log"]
    assert [(a["number"], a["status_code"]) for a in log] == [(1, 204), (2, 204)]
    shown = (await api.get(f"/subscriptions/{sub['id']}", headers=pfpnna)).json()
    assert shown["active"] is False and shown["disabled_reason"] == "gone"
