"""The outbox relay on PostgreSQL with two replicas (two relays, two engines) on ONE database and the real
broker: FOR UPDATE SKIP LOCKED splits the rows between them, every event is published exactly once, and
a case's events keep their order even when its earlier event is held by the other relay."""

import asyncio
from collections import defaultdict

import pytest
from sqlmodel import select

from enlace_platform.db import create_tables, make_engine, make_session_factory
from enlace_platform.migrations import service_tables
from enlace_platform.outbox import OutboxMessage, OutboxRelay, add_event
from tests.support.harness import envelopes, eventually, provision_topics, read_topic, unique_prefix

pytestmark = pytest.mark.kafka

TOPIC = "intake.case"
CASES = [f"case-{n}" for n in range(8)]
EVENTS_PER_CASE = 5


class _GatedProducer:
    """The real producer, but every send waits until the gate opens: the relay holds its row locks meanwhile."""

    def __init__(self, real, gate: asyncio.Event) -> None:
        self._real, self._gate = real, gate
        self.entered = asyncio.Event()

    async def send(self, *args, **kwargs):
        self.entered.set()
        await self._gate.wait()
        return await self._real.send(*args, **kwargs)


async def _unsent(sessions) -> list[OutboxMessage]:
    async with sessions() as session:
        return list((await session.exec(select(OutboxMessage).where(OutboxMessage.sent_at.is_(None)))).all())


async def _two_replicas(kafka_bootstrap, postgres_url):
    """Fresh topics, and two engines (two replicas) on the one PostgreSQL database, with its outbox table."""
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    replicas = [make_engine(postgres_url), make_engine(postgres_url)]
    await create_tables(replicas[0], service_tables([]))
    return prefix, replicas, [make_session_factory(e, f"replica{i}") for i, e in enumerate(replicas)]


async def test_two_relays_on_one_database_publish_every_event_once_in_case_order(
        kafka_bootstrap, producer, postgres_url):
    prefix, replicas, (first_sessions, second_sessions) = await _two_replicas(kafka_bootstrap, postgres_url)
    order: dict[str, list[str]] = defaultdict(list)
    async with first_sessions() as session:
        for n in range(EVENTS_PER_CASE):  # interleaved: every batch holds part of every case
            for case in CASES:
                order[case].append(add_event(session, topic=TOPIC, case_id=case, event_type="widget.made.v1",
                                             data={"n": n}, source="/test").id)
        await session.commit()
    total = len(CASES) * EVENTS_PER_CASE

    gate = asyncio.Event()
    gated = _GatedProducer(producer, gate)
    first = OutboxRelay(first_sessions, gated, topic_prefix=prefix, batch_size=len(CASES) * 2)
    second = OutboxRelay(second_sessions, producer, topic_prefix=prefix, batch_size=total)
    try:
        # The first relay locks the first two events of every case and stalls in the middle of sending them.
        stalled = asyncio.create_task(first.publish_batch())
        await asyncio.wait_for(gated.entered.wait(), timeout=30)
        # The second relay does not wait for those locks (SKIP LOCKED), and sends none of the later events:
        # each would overtake its case's earlier event, which the first relay still holds.
        assert await asyncio.wait_for(second.publish_batch(), timeout=30) == 0
        assert len(await _unsent(second_sessions)) == total

        gate.set()
        assert await stalled == len(CASES) * 2

        async def drained():
            await asyncio.gather(first.publish_batch(), second.publish_batch())
            return not await _unsent(first_sessions)

        await eventually(drained, what="both relays drained the outbox")
    finally:
        gate.set()
        first.detach()
        second.detach()
        for engine in replicas:
            await engine.dispose()

    published = envelopes(await read_topic(kafka_bootstrap, prefix + TOPIC, expected=total))
    assert sorted(e.id for e in published) == sorted(i for ids in order.values() for i in ids), "each exactly once"
    for case, ids in order.items():
        assert [e.id for e in published if e.key == case] == ids, f"{case}'s events in the order written"


async def test_the_second_relay_takes_the_rows_the_first_has_locked_no_case_shared(
        kafka_bootstrap, producer, postgres_url):
    """Different cases: while one relay holds its batch, the other publishes the rest at once."""
    prefix, replicas, (first_sessions, second_sessions) = await _two_replicas(kafka_bootstrap, postgres_url)
    async with first_sessions() as session:
        ids = [add_event(session, topic=TOPIC, case_id=f"case-{n}", event_type="widget.made.v1", data={"n": n},
                         source="/test").id for n in range(10)]
        await session.commit()

    gate = asyncio.Event()
    gated = _GatedProducer(producer, gate)
    first = OutboxRelay(first_sessions, gated, topic_prefix=prefix, batch_size=4)
    second = OutboxRelay(second_sessions, producer, topic_prefix=prefix, batch_size=100)
    try:
        stalled = asyncio.create_task(first.publish_batch())
        await asyncio.wait_for(gated.entered.wait(), timeout=30)
        assert await asyncio.wait_for(second.publish_batch(), timeout=30) == 6, "the six rows not locked"
        gate.set()
        assert await stalled == 4
        assert await second.publish_batch() == 0 and await first.publish_batch() == 0
    finally:
        gate.set()
        first.detach()
        second.detach()
        for engine in replicas:
            await engine.dispose()
    published = envelopes(await read_topic(kafka_bootstrap, prefix + TOPIC, expected=10))
    assert sorted(e.id for e in published) == sorted(ids)
