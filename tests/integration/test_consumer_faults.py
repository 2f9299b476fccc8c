"""The consumer runner tells faults from poison, on the real broker and real SQLite faults.

- A full database (SQLITE_FULL) or a locked one (another writer holds the lock past busy_timeout) is a fault
  outside the records: the partition pauses and retries with backoff for as long as it lasts; nothing is
  dead-lettered, and everything is handled, once, after the fault clears.
- An event of an unknown type or version is dead-lettered with a reason that says so; after an upgrade (a
  handler for it) a redrive handles it. A published type that is simply not for this consumer is skipped,
  and counted.
"""

import asyncio
import sqlite3

import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import event
from sqlmodel import Field, SQLModel

from enlace_ops import operations as ops
from enlace_platform.consumer import ConsumerRunner
from enlace_platform.contracts import EventContracts
from enlace_platform.db import create_tables, make_engine, make_session_factory
from enlace_platform.envelope import Envelope
from enlace_platform.inbox import ProcessedMessage
from enlace_platform.metrics import ServiceMetrics
from enlace_platform.migrations import service_tables
from tests.support.harness import (
    eventually, provision_topics, publish_envelopes, read_topic, unique_prefix,
)

pytestmark = pytest.mark.kafka

TOPIC = "intake.case"
# Big enough to need new pages of the database file: a full database cannot take it.
TEXT = "x" * 3000


class Page(SQLModel, table=True):
    __tablename__ = "test_fault_page"
    event_id: str = Field(primary_key=True)
    text: str


class FaultySqlite:
    """The handler's database, with faults switched on and off per connection checkout: SQLite's own
    max_page_count (a full disk, SQLITE_FULL) and a short busy_timeout (so a held lock is SQLITE_BUSY soon)."""

    def __init__(self, path) -> None:
        self.path = path
        self.full = False
        self.engine = make_engine(f"sqlite+aiosqlite:///{path}")

        @event.listens_for(self.engine.sync_engine, "checkout")
        def _apply_faults(dbapi_conn, _record, _proxy):
            cursor = dbapi_conn.cursor()
            # Lowering max_page_count below the file's size sets it to the size: it can grow no more.
            cursor.execute(f"PRAGMA max_page_count={1 if self.full else 1073741823}")
            cursor.execute("PRAGMA busy_timeout=100")
            cursor.close()

        self.sessions = make_session_factory(self.engine, f"faults{id(self)}")

    async def pages(self) -> list[str]:
        return self._column(f"SELECT event_id FROM {Page.__tablename__}")

    async def inbox(self) -> list[str]:
        return self._column(f"SELECT message_id FROM {ProcessedMessage.__tablename__}")

    def _column(self, sql: str) -> list[str]:
        # A plain reader: with WAL it reads beside a writer that holds the lock.
        with sqlite3.connect(self.path) as reader:
            return [row[0] for row in reader.execute(sql)]


@pytest.fixture
async def database(tmp_path):
    db = FaultySqlite(tmp_path / "faults.db")
    await create_tables(db.engine, service_tables([Page.__table__]))
    try:
        yield db
    finally:
        await db.engine.dispose()


@pytest.fixture
async def dlq_producer(kafka_bootstrap):
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


async def write_page(session, envelope: Envelope) -> None:
    session.add(Page(event_id=envelope.id, text=TEXT))


def _pages_events(n: int) -> list[Envelope]:
    # Several cases, so several partitions pause and recover.
    return [Envelope(type="page.written.v1", source="/test", key=f"case-{i % 4}", data={"n": i}) for i in range(n)]


def _runner(prefix, bootstrap, sessions, producer, metrics, handlers=None, **kw) -> ConsumerRunner:
    return ConsumerRunner(name="test.pages", group_id=prefix + "pages", topics=[prefix + TOPIC],
                          handlers=handlers or {"page.written.v1": write_page}, session_factory=sessions,
                          bootstrap_servers=bootstrap, dlq_producer=producer, service_name="test-svc",
                          metrics=metrics, retry_base_s=0.01, fault_retry_base_s=0.05, fault_retry_max_s=0.5, **kw)


def _sample(metrics: ServiceMetrics, name: str, **labels) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def _faults(metrics: ServiceMetrics) -> float:
    return sum(s.value for m in metrics.registry.collect() if m.name == "enlace_consumer_transient_faults"
               for s in m.samples if s.name.endswith("_total"))


async def _through_a_fault(kafka_bootstrap, database, dlq_producer, fault_on, fault_off) -> None:
    """Events arrive while the fault is on; it lasts through several retries; then it clears."""
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    sent = _pages_events(12)
    await publish_envelopes(kafka_bootstrap, prefix + TOPIC, sent)
    metrics = ServiceMetrics("test-svc")
    runner = _runner(prefix, kafka_bootstrap, database.sessions, dlq_producer, metrics)
    await fault_on()
    task = asyncio.create_task(runner.run())
    try:
        async def retried_through_the_fault():
            return _faults(metrics) >= 6

        await eventually(retried_through_the_fault, what="several retries during the fault")
        assert _sample(metrics, "enlace_consumer_paused_partitions", consumer="test.pages") >= 1
        assert await database.pages() == [], "nothing got through while the fault lasted"
        assert _sample(metrics, "enlace_dlq_messages_total", consumer="test.pages", topic=prefix + TOPIC) == 0
        await fault_off()

        async def all_handled():
            return runner.records_seen == len(sent)

        await eventually(all_handled, what="every event handled once the fault cleared")
        assert _sample(metrics, "enlace_consumer_paused_partitions", consumer="test.pages") == 0
    finally:
        runner.stop()
        await task
    assert sorted(await database.pages()) == sorted(e.id for e in sent)
    assert sorted(await database.inbox()) == sorted(e.id for e in sent)
    assert _sample(metrics, "enlace_handler_duration_seconds_count", consumer="test.pages",
                   event_type="page.written.v1", outcome="handled") == len(sent)
    assert await read_topic(kafka_bootstrap, prefix + TOPIC + ".dlq", expected=0) == [], "a fault is not poison"


async def test_a_full_database_pauses_and_retries_without_dead_letters(kafka_bootstrap, database, dlq_producer):
    async def fill():
        database.full = True

    async def free_space():
        database.full = False

    await _through_a_fault(kafka_bootstrap, database, dlq_producer, fill, free_space)


async def test_a_locked_database_pauses_and_retries_without_dead_letters(kafka_bootstrap, database, dlq_producer):
    holder = sqlite3.connect(database.path, isolation_level=None)

    async def lock():
        holder.execute("BEGIN IMMEDIATE")  # another writer that keeps SQLite's write lock

    async def unlock():
        holder.execute("ROLLBACK")

    try:
        await _through_a_fault(kafka_bootstrap, database, dlq_producer, lock, unlock)
    finally:
        holder.close()


async def test_an_unknown_version_is_dead_lettered_with_its_reason_then_redriven_after_an_upgrade(
        kafka_bootstrap, database, dlq_producer):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    contracts = EventContracts()
    # All on one case: one partition, in this order.
    registered = Envelope(type="case.registered.v1", source="/test", key="case-1", data={
        "case_id": "6b2f9a64-3f0e-4a56-9a41-1f3f0c1b2a10", "agency_id": "MX-INM", "jurisdiction": "MX",
        "person_ids": ["0d6c1d0e-8f43-4d4b-a8f5-8a4c3c0f9b21"], "encountered_at": "2026-11-28T10:00:00Z"})
    assert contracts.violations(registered.type, registered.data) == []
    from_the_future = Envelope(type="case.screened.v9", source="/test", key="case-1", data={"shape": "new"})
    unheard_of = Envelope(type="case.teleported.v1", source="/test", key="case-1", data={})
    await publish_envelopes(kafka_bootstrap, prefix + TOPIC, [registered, from_the_future, unheard_of])

    handled: list[str] = []

    async def screened_v1(session, envelope):
        handled.append(envelope.type)

    metrics = ServiceMetrics("test-svc")
    runner = _runner(prefix, kafka_bootstrap, database.sessions, dlq_producer, metrics,
                     handlers={"case.screened.v1": screened_v1}, validate=contracts.check,
                     known_event_types=contracts.event_types)
    task = asyncio.create_task(runner.run())
    try:
        await eventually(lambda: _flag(runner.records_seen >= 3), what="3 records consumed")
    finally:
        runner.stop()
        await task

    assert handled == []
    assert _sample(metrics, "enlace_consumer_skipped_events_total", consumer="test.pages",
                   event_type="case.registered.v1") == 1, "a published type for other consumers is skipped, counted"
    dead = await read_topic(kafka_bootstrap, prefix + TOPIC + ".dlq", expected=2)
    by_id = {dict(r.headers)["ce_id"].decode(): dict(r.headers) for r in dead}
    assert set(by_id) == {from_the_future.id, unheard_of.id}
    for headers in by_id.values():
        assert headers["dlq_exception"] == b"UnknownEventType"
        assert b"unknown event type or version" in headers["dlq_message"]
        assert headers["dlq_attempts"] == b"1"
    assert b"case.screened.v9" in by_id[from_the_future.id]["dlq_message"]

    # The upgrade: a handler for v9. The operator redrives the dead letters; the v9 one is handled now,
    # the other is still unknown and goes back to the dead letters.
    async def screened_v9(session, envelope):
        session.add(Page(event_id=envelope.id, text=envelope.data["shape"]))

    redriven = await ops.redrive(kafka_bootstrap, prefix + TOPIC)
    assert len(redriven) == 2
    upgraded = _runner(prefix, kafka_bootstrap, database.sessions, dlq_producer, metrics,
                       handlers={"case.screened.v1": screened_v1, "case.screened.v9": screened_v9},
                       validate=contracts.check, known_event_types=contracts.event_types)
    task = asyncio.create_task(upgraded.run())
    try:
        await eventually(lambda: _flag(upgraded.records_seen >= 2), what="the redriven records consumed")
    finally:
        upgraded.stop()
        await task
    assert await database.pages() == [from_the_future.id]
    assert sorted(await database.inbox()) == [from_the_future.id]
    dead = await read_topic(kafka_bootstrap, prefix + TOPIC + ".dlq", expected=3)
    assert [dict(r.headers)["ce_id"].decode() for r in dead].count(unheard_of.id) == 2


async def _flag(value: bool) -> bool:
    return value


async def test_a_redrive_goes_only_to_the_consumer_whose_dead_letter_it_was(kafka_bootstrap, database, dlq_producer):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    contracts = EventContracts()
    from_the_future = Envelope(type="case.screened.v9", source="/test", key="case-1", data={"shape": "new"})
    await publish_envelopes(kafka_bootstrap, prefix + TOPIC, [from_the_future])
    metrics = ServiceMetrics("test-svc")

    def bystander() -> ConsumerRunner:  # another service's consumer of the topic, never upgraded
        return ConsumerRunner(name="test.other", group_id=prefix + "other", topics=[prefix + TOPIC], handlers={},
                              session_factory=database.sessions, bootstrap_servers=kafka_bootstrap,
                              dlq_producer=dlq_producer, service_name="other-svc", metrics=metrics,
                              retry_base_s=0.01, validate=contracts.check, known_event_types=contracts.event_types)

    async def consume(*runners: ConsumerRunner, records: int) -> None:
        tasks = [asyncio.create_task(r.run()) for r in runners]
        try:
            await eventually(lambda: _flag(all(r.records_seen >= records for r in runners)),
                             what=f"{records} record(s) consumed by each")
        finally:
            for runner in runners:
                runner.stop()
            await asyncio.gather(*tasks)

    pages = _runner(prefix, kafka_bootstrap, database.sessions, dlq_producer, metrics, handlers={},
                    validate=contracts.check, known_event_types=contracts.event_types)
    await consume(pages, bystander(), records=1)
    letters = await ops.read_dead_letters(kafka_bootstrap, prefix + TOPIC)
    assert sorted(d.headers["dlq_consumer"] for d in letters) == ["test.other", "test.pages"], "each its own"

    # test.pages is upgraded; the operator redrives its dead letter only. The bystander must not take the
    # redriven record for a new one and dead-letter it a second time.
    [mine] = [d for d in letters if d.headers["dlq_consumer"] == "test.pages"]
    await ops.redrive(kafka_bootstrap, prefix + TOPIC, partition=mine.partition, offsets=[mine.offset])

    async def screened_v9(session, envelope):
        session.add(Page(event_id=envelope.id, text=envelope.data["shape"]))

    upgraded = _runner(prefix, kafka_bootstrap, database.sessions, dlq_producer, metrics,
                       handlers={"case.screened.v9": screened_v9}, validate=contracts.check,
                       known_event_types=contracts.event_types)
    other = bystander()
    await consume(upgraded, other, records=1)
    assert await database.pages() == [from_the_future.id]
    assert len(await ops.read_dead_letters(kafka_bootstrap, prefix + TOPIC)) == 2, "no new dead letter"
