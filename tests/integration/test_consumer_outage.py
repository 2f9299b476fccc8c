"""The consumer runner when its broker goes away (a broker of the test's own, killed and started again):

- stop() returns within a bounded time although the final offset commit and leaving the group cannot
  reach anyone; the offsets not committed are redelivered later and the inbox skips what was done;
- a dead letter the broker never acknowledged does not let its offset be committed: the record is held
  (its partition paused) and dead-lettered once the broker is back.
"""

import asyncio

import pytest
from aiokafka import AIOKafkaProducer
from sqlmodel import Field, SQLModel, select

from enlace_platform.consumer import ConsumerRunner, PoisonMessage
from enlace_platform.envelope import Envelope
from enlace_platform.metrics import ServiceMetrics
from tests.support.broker import DisposableBroker
from tests.support.harness import (
    eventually, provision_topics, publish_envelopes, read_topic, service_database, unique_prefix,
)

pytestmark = pytest.mark.kafka

TOPIC = "intake.case"
# Generous: a liveness bound, well above the runner's own timeouts (1.5 s commit, 1.5 s close, 5 s dead letter).
STOP_BOUND_S = 20


class Mark(SQLModel, table=True):
    __tablename__ = "test_outage_mark"
    event_id: str = Field(primary_key=True)
    n: int


@pytest.fixture
async def sessions(tmp_path):
    async with service_database(tmp_path / "outage.db", [Mark.__table__]) as factory:
        yield factory


async def _marks(sessions) -> list[int]:
    async with sessions() as session:
        return sorted((await session.exec(select(Mark.n))).all())


async def test_stop_is_bounded_while_the_broker_is_down_and_nothing_is_lost(tmp_path, sessions):
    prefix = unique_prefix()
    async with DisposableBroker(tmp_path / "kafka") as broker:
        await provision_topics(broker.bootstrap, prefix)
        # One case, one partition: 0 and 1 are handled, 2 is poison, 3 comes after it.
        events = [Envelope(type="mark.made.v1", source="/test", key="case-1", data={"n": n}) for n in range(4)]
        await publish_envelopes(broker.bootstrap, prefix + TOPIC, events)
        in_hand, go_on = asyncio.Event(), asyncio.Event()

        async def mark(session, envelope):
            n = envelope.data["n"]
            if n == 1 and not go_on.is_set():
                in_hand.set()
                await go_on.wait()  # the broker dies while this record is in hand
            if n == 2:
                raise PoisonMessage("2 is never understood")
            session.add(Mark(event_id=envelope.id, n=n))

        def runner(producer, metrics=None) -> ConsumerRunner:
            return ConsumerRunner(name="test.marks", group_id=prefix + "marks", topics=[prefix + TOPIC],
                                  handlers={"mark.made.v1": mark}, session_factory=sessions,
                                  bootstrap_servers=broker.bootstrap, dlq_producer=producer,
                                  service_name="test-svc", metrics=metrics, retry_base_s=0.01,
                                  fault_retry_base_s=0.2, fault_retry_max_s=1.0)

        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", enable_idempotence=True)
        await producer.start()
        metrics = ServiceMetrics("test-svc")
        first = runner(producer, metrics)
        task = asyncio.create_task(first.run())
        try:
            await eventually(lambda: _flag(in_hand.is_set()), what="a record in hand")
            await broker.kill()
            go_on.set()

            async def poison_held():
                return (metrics.registry.get_sample_value("enlace_consumer_paused_partitions",
                                                          {"consumer": "test.marks"}) or 0) >= 1

            # Its dead letter is never acknowledged: the record is held, the partition paused.
            await eventually(poison_held, what="the poison record held for want of a dead-letter ack")
            assert await _marks(sessions) == [0, 1], "3 waits behind the poison record, in order"
        finally:
            first.stop()
            await asyncio.wait_for(task, STOP_BOUND_S)  # returns although nothing answers
            await _abandon(producer)
        assert metrics.registry.get_sample_value("enlace_dlq_messages_total",
                                                 {"consumer": "test.marks", "topic": prefix + TOPIC}) is None

        await broker.start()
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", enable_idempotence=True)
        await producer.start()
        second = runner(producer)
        task = asyncio.create_task(second.run())
        try:
            # From the last committed offset: what was done is skipped by the inbox, the poison dead-lettered.
            async def poison_dead_lettered():
                return await read_topic(broker.bootstrap, prefix + TOPIC + ".dlq", expected=1, timeout=2)

            dead = await eventually(poison_dead_lettered, timeout=60, what="the poison record dead-lettered")
            await eventually(lambda: _marks_are(sessions, [0, 1, 3]), what="the records after the poison")
        finally:
            second.stop()
            await asyncio.wait_for(task, STOP_BOUND_S)
            await producer.stop()
        # At least once: the unacknowledged send of the first run may have reached the broker after all.
        assert {dict(d.headers)["ce_id"] for d in dead} == {events[2].id.encode()}
        assert await _marks(sessions) == [0, 1, 3], "each record's effect once"


async def _abandon(producer: AIOKafkaProducer) -> None:
    """The producer's stop() waits for the broker to take what it holds (the runtime bounds it in a service)."""
    stopping = asyncio.create_task(producer.stop())
    await asyncio.wait([stopping], timeout=2)
    if not stopping.done():
        stopping.cancel()
        await asyncio.gather(stopping, return_exceptions=True)
        await producer.client.close()


async def _marks_are(sessions, expected: list[int]) -> bool:
    return await _marks(sessions) == expected


async def _flag(value: bool) -> bool:
    return value
