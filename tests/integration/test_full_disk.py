"""A real full disk (issue 13): the services' SQLite files on a small tmpfs that a ballast file fills.

test_consumer_faults.py proves the same with SQLite's max_page_count and always runs; these need a mount
(root or CAP_SYS_ADMIN) and are skipped, with the reason, where that is not allowed.

- A consumer whose database is full holds its records: no dead letters, its partitions pause and retry, and
  once the ballast is gone every event is handled and delivered exactly once.
- An API write answers 503 problem+json with Retry-After, never a 500; what was accepted before stays, and a
  retry with the same Idempotency-Key creates the resource once space is back. Reads of personal data answer
  503 too: the audit record comes before the data, and it cannot be written (/metrics, /healthz answer).
- The outbox relay: rows committed before the disk filled are published once space is back; when the disk
  fills between the send and the record of its acks, the relay keeps the acks and records them later without
  sending again. A relay that stops meanwhile leaves its leases, and its successor sends those rows again
  with the same event ids: at-least-once, which the consumers' inboxes absorb.
"""

import asyncio
import logging
import sqlite3
from collections import Counter

import pytest
from aiokafka import AIOKafkaProducer

from enlace_platform.outbox import OutboxRelay, add_event
from enlace_platform.topics import REFERRAL_PROTECTION_HOLD, REFERRAL_REFERRAL, dlq
from intake.config import IntakeSettings
from intake.domain.events import TOPIC as INTAKE_TOPIC
from intake.entrypoints.app import create_app as create_intake_app
from tests.support.harness import (
    envelopes, eventually, fast_settings, provision_topics, read_topic, running_app, service_database,
    unique_prefix,
)
from tests.support.intake_support import family_group, inm, outbox_rows
from tests.support.notification_support import (
    Notification, SigningReceiver, deliveries, event, referral_data, subscribe,
)
from tests.support.small_filesystem import SmallFilesystem, small_filesystem

pytestmark = pytest.mark.kafka

# Room for a migrated database and its write-ahead log (intake's is ~0.5 MB); the ballast takes the rest.
FILESYSTEM_BYTES = 8 * 2**20
EVENTS = 30
PFPNNA = ("MX-PFPNNA", "child_protection")


@pytest.fixture
def disk():
    with small_filesystem(FILESYSTEM_BYTES) as filesystem:
        try:
            yield filesystem
        finally:
            filesystem.free()


def _total(runtime, metric: str) -> float:
    return sum(sample.value for family in runtime.metrics.registry.collect() for sample in family.samples
               if sample.name == metric)


def _rows(path, sql: str) -> list[tuple]:
    # A plain reader beside the service: reading needs no free space.
    with sqlite3.connect(path) as reader:
        return list(reader.execute(sql))


async def test_a_consumer_on_a_full_disk_holds_its_events_then_delivers_each_once_when_space_returns(
        kafka_bootstrap, dev_issuer_dir, producer, disk):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    notification = Notification(kafka_bootstrap, dev_issuer_dir, disk.path, prefix, producer)
    receiver = SigningReceiver()
    sent = [event("referral.requested.v1", referral_data()) for _ in range(EVENTS)]  # a case each: all partitions
    async with receiver.running(), notification.running(consumer_fault_retry_max_s=1.0) as client:
        runtime = client.runtime
        await subscribe(client, notification, PFPNNA, receiver)
        assert disk.fill() > 0 and disk.available() == 0

        await notification.publish(*sent)

        async def retried_while_full():
            return _total(runtime, "enlace_consumer_transient_faults_total") >= 6

        await eventually(retried_while_full, what="the consumer retrying through the full disk")
        assert _total(runtime, "enlace_consumer_paused_partitions") >= 1
        assert _total(runtime, "enlace_dlq_messages_total") == 0, "a full disk is not poison"
        assert receiver.received == []
        assert (await client.get("/metrics")).status_code == 200, "the scrape only reads"

        disk.free()

        async def all_delivered():
            done = await deliveries(client, notification, PFPNNA, status="delivered")
            return len(done) == EVENTS and len(receiver.received) == EVENTS

        await eventually(all_delivered, timeout=60, what="every event delivered after space came back")
        listed = await deliveries(client, notification, PFPNNA)
        assert _total(runtime, "enlace_consumer_paused_partitions") == 0, "every partition resumed"
        assert _total(runtime, "enlace_dlq_messages_total") == 0

    assert sorted(d["event_id"] for d in listed) == sorted(e.id for e in sent), "each event handled once"
    assert len(set(receiver.ids())) == len(receiver.ids()) == EVENTS, "each webhook sent once"
    assert all(r.verified for r in receiver.received)
    handled = _rows(disk.path / "notification.db", "SELECT message_id FROM processed_messages")
    assert sorted(message_id for (message_id,) in handled) == sorted(e.id for e in sent)
    for topic in (REFERRAL_REFERRAL, REFERRAL_PROTECTION_HOLD):
        assert await read_topic(kafka_bootstrap, dlq(prefix + topic), expected=0) == [], "nothing dead-lettered"


async def test_an_api_write_on_a_full_disk_answers_503_and_succeeds_when_space_returns(
        kafka_bootstrap, dev_issuer_dir, disk):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    settings = fast_settings(IntakeSettings, tmp_path=disk.path, bootstrap=kafka_bootstrap, prefix=prefix,
                             dev_issuer_dir=dev_issuer_dir, outbox_retry_max_s=1.0)
    app = create_intake_app(settings)
    officer = inm(dev_issuer_dir)
    retry_safely = {**officer, "Idempotency-Key": "border-post-7:family-42"}
    async with running_app(app) as client:
        runtime = app.state.runtime
        before = await client.post("/cases", headers=officer, json=family_group())
        assert before.status_code == 201, before.text
        accepted = before.json()["id"]
        assert disk.fill() > 0

        refused = await client.post("/cases", headers=retry_safely, json=family_group())
        assert refused.status_code == 503, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert int(refused.headers["retry-after"]) > 0
        problem = refused.json()
        assert problem["status"] == 503 and problem["title"] == "Service Unavailable"
        assert "Idempotency-Key" in problem["detail"]
        # A read of a case: its audit record comes first and cannot be written, so no data, a 503 to retry.
        read = await client.get(f"/cases/{accepted}", headers=officer)
        assert read.status_code == 503 and "retry-after" in read.headers, read.text
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/healthz")).status_code == 200
        assert (await runtime.readiness())["database"] == "ok", "reading needs no room"

        disk.free()
        created = await client.post("/cases", headers=retry_safely, json=family_group())
        assert created.status_code == 201, created.text
        again = await client.post("/cases", headers=retry_safely, json=family_group())
        assert again.status_code == 201 and again.json()["id"] == created.json()["id"], "the same key: one case"
        read = await client.get(f"/cases/{accepted}", headers=officer)
        assert read.status_code == 200, "accepted before the disk filled, still there"
        listed = await client.get("/cases", headers=officer)
        assert sorted(c["id"] for c in listed.json()) == sorted([accepted, created.json()["id"]])

        async def all_sent():
            return all(row.sent_at is not None for row in await outbox_rows(runtime))

        await eventually(all_sent, what="the outbox drained")
        rows = await outbox_rows(runtime)

    assert {row.aggregateid for row in rows} == {accepted, created.json()["id"]}
    published = envelopes(await read_topic(kafka_bootstrap, prefix + INTAKE_TOPIC, expected=len(rows)))
    assert sorted(e.id for e in published) == sorted(row.id for row in rows), "each event published once"


class DiskFillingProducer:
    """The real producer; its first send fills the disk first. The relay's claim is committed by then, and
    the transaction that records the acks finds no room."""

    def __init__(self, producer: AIOKafkaProducer, disk: SmallFilesystem) -> None:
        self._producer = producer
        self._disk = disk
        self.filled = False

    async def send(self, *args, **kwargs):
        if not self.filled:
            self.filled = self._disk.fill() > 0
        return await self._producer.send(*args, **kwargs)


async def _write_events(sessions, count: int) -> list[str]:
    ids = []
    async with sessions() as session:
        for n in range(count):
            ids.append(add_event(session, topic=INTAKE_TOPIC, case_id=f"case-{n % 5}", event_type="widget.made.v1",
                                 data={"n": n}, source="/test").id)
        await session.commit()
    return ids


def _relay(sessions, producer, prefix, **overrides) -> OutboxRelay:
    options = dict(topic_prefix=prefix, retry_base_s=0.05, retry_max_s=0.5, fallback_poll_s=0.2, send_timeout_s=2.0)
    return OutboxRelay(sessions, producer, **(options | overrides))


def _outbox(disk: SmallFilesystem) -> dict[str, tuple]:
    return {row[0]: row[1:] for row in _rows(disk.path / "svc.db", "SELECT id, sent_at, attempts FROM outbox")}


async def _failed_passes(caplog) -> None:
    async def failing():
        return "outbox relay pass failed" in caplog.text

    await eventually(failing, what="the relay's passes failing on the full disk")


async def _every_row_marked_sent(disk: SmallFilesystem) -> bool:
    return all(sent_at is not None for sent_at, _ in _outbox(disk).values())

async def test_the_outbox_relay_publishes_what_was_committed_before_the_disk_filled(
        kafka_bootstrap, producer, disk, caplog):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    async with service_database(disk.path / "svc.db", []) as sessions:
        ids = await _write_events(sessions, 10)
        disk.fill()
        relay = _relay(sessions, producer, prefix)
        task = asyncio.create_task(relay.run())
        try:
            await _failed_passes(caplog)  # no room to write the leases of a claim
            assert not task.done(), "the relay lives through the full disk"
            assert all(sent_at is None for sent_at, _ in _outbox(disk).values())
            disk.free()

            await eventually(lambda: _every_row_marked_sent(disk), what="the rows sent once space came back")
        finally:
            relay.stop()
            await task
    copies = Counter(e.id for e in envelopes(await read_topic(kafka_bootstrap, prefix + INTAKE_TOPIC,
                                                              expected=len(ids))))
    assert copies == Counter(ids), "each once"


async def test_acks_the_relay_could_not_record_on_a_full_disk_are_recorded_later_without_sending_again(
        kafka_bootstrap, producer, disk, caplog):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    filling = DiskFillingProducer(producer, disk)
    async with service_database(disk.path / "svc.db", []) as sessions:
        ids = await _write_events(sessions, 10)
        relay = _relay(sessions, filling, prefix)
        task = asyncio.create_task(relay.run())
        try:
            published = await read_topic(kafka_bootstrap, prefix + INTAKE_TOPIC, expected=len(ids))
            assert filling.filled and sorted(e.id for e in envelopes(published)) == sorted(ids)
            await _failed_passes(caplog)  # no room to record the acks
            assert all(sent_at is None for sent_at, _ in _outbox(disk).values()), "not recorded: no room"
            disk.free()

            await eventually(lambda: _every_row_marked_sent(disk), what="the acks recorded once space came back")
        finally:
            relay.stop()
            await task
    assert {attempts for _, attempts in _outbox(disk).values()} == {1}, "one attempt each"
    copies = Counter(e.id for e in envelopes(await read_topic(kafka_bootstrap, prefix + INTAKE_TOPIC,
                                                              expected=len(ids))))
    assert copies == Counter(ids), "sent once: the relay kept the acks in memory and recorded them later"


async def test_a_relay_that_stops_before_it_could_record_leaves_its_rows_to_be_sent_again_with_the_same_ids(
        kafka_bootstrap, producer, disk):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    lease_s = 3.0
    async with service_database(disk.path / "svc.db", []) as sessions:
        ids = await _write_events(sessions, 10)
        first = _relay(sessions, DiskFillingProducer(producer, disk), prefix, lease_s=lease_s)
        task = asyncio.create_task(first.run())
        await read_topic(kafka_bootstrap, prefix + INTAKE_TOPIC, expected=len(ids))
        first.stop()  # cannot record its acks nor release its leases: they lapse
        await task
        first.detach()
        disk.free()
        assert all(sent_at is None for sent_at, _ in _outbox(disk).values())

        successor = _relay(sessions, producer, prefix, lease_s=lease_s)
        task = asyncio.create_task(successor.run())
        try:
            async def all_sent():
                return all(sent_at is not None for sent_at, _ in _outbox(disk).values())

            await eventually(all_sent, what="the successor sending the rows once the leases lapsed")
        finally:
            successor.stop()
            await task
    copies = Counter(e.id for e in envelopes(await read_topic(kafka_bootstrap, prefix + INTAKE_TOPIC,
                                                              expected=2 * len(ids))))
    assert set(copies) == set(ids), "no event lost, and no other id: a resend is the same event"
    print(f"\nat-least-once after a relay stopped on a full disk: {sum(copies.values())} records for {len(ids)} events")


async def test_a_service_started_on_a_full_disk_waits_for_space_instead_of_exiting(
        kafka_bootstrap, dev_issuer_dir, disk):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    settings = fast_settings(IntakeSettings, tmp_path=disk.path, bootstrap=kafka_bootstrap, prefix=prefix,
                             dev_issuer_dir=dev_issuer_dir)
    assert disk.fill() > 0, "not even the new database file fits"
    app = create_intake_app(settings)
    warnings: list[str] = []
    watcher = logging.Handler(logging.WARNING)
    watcher.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("enlace_platform.runtime").addHandler(watcher)  # after create_app set up logging
    started = asyncio.Event()
    stop = asyncio.Event()

    async def serve():
        async with running_app(app) as client:
            started.set()
            created = await client.post("/cases", headers=inm(dev_issuer_dir), json=family_group())
            assert created.status_code == 201, created.text
            await stop.wait()

    service = asyncio.create_task(serve())
    try:
        async def waiting_for_the_database():
            return any("database cannot start yet (SQLITE_FULL)" in message for message in warnings)

        await eventually(waiting_for_the_database, what="the start waiting on the full disk")
        assert not started.is_set() and not service.done(), "no exit, and nothing served before the migration"
        disk.free()
        await eventually(lambda: asyncio.sleep(0, started.is_set()), what="the service started once space returned")
    finally:
        stop.set()
        await service
        logging.getLogger("enlace_platform.runtime").removeHandler(watcher)
