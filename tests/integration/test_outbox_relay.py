"""The transactional outbox on the real broker."""

import asyncio

import pytest
from aiokafka import AIOKafkaProducer
from sqlmodel import Field, SQLModel, select

from enlace_platform.consumer import ConsumerRunner
from enlace_platform.inbox import ProcessedMessage
from enlace_platform.outbox import OutboxMessage, OutboxRelay, add_event
from tests.support.harness import (
    envelopes, eventually, provision_topics, read_topic, service_database, unique_prefix,
)

pytestmark = pytest.mark.kafka

TOPIC = "intake.case"


class Widget(SQLModel, table=True):
    """A stand-in business row written in the same transaction as its event."""

    __tablename__ = "test_widget"
    id: str = Field(primary_key=True)


class Effect(SQLModel, table=True):
    """What a consumer's handler writes; counting it shows how often the handler really ran."""

    __tablename__ = "test_effect"
    event_id: str = Field(primary_key=True)
    widget_id: str


@pytest.fixture
async def sessions(tmp_path):
    async with service_database(tmp_path / "svc.db", [Widget.__table__, Effect.__table__]) as factory:
        yield factory


async def _commit_widget(sessions, widget_id: str) -> str:
    async with sessions() as session:
        session.add(Widget(id=widget_id))
        row = add_event(session, topic=TOPIC, case_id=f"case-{widget_id}", event_type="widget.made.v1",
                        data={"widget_id": widget_id}, source="/test")
        await session.commit()
        return row.id


async def test_event_survives_relay_death_between_send_and_mark_and_is_handled_once(
        kafka_bootstrap, sessions, producer, monkeypatch):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    event_id = await _commit_widget(sessions, "w1")

    dying = OutboxRelay(sessions, producer, topic_prefix=prefix)

    def die(rows, results):
        raise RuntimeError("relay process died after the broker acked, before marking")

    monkeypatch.setattr(dying, "_mark", die)
    with pytest.raises(RuntimeError):
        await dying.publish_batch()
    dying.detach()
    async with sessions() as session:
        row = await session.get(OutboxMessage, event_id)
        assert row.sent_at is None, "a row must not count as sent unless marked after the ack"

    restarted = OutboxRelay(sessions, producer, topic_prefix=prefix)
    assert await restarted.publish_batch() == 1
    assert await restarted.publish_batch() == 0, "a marked row is not sent again"
    restarted.detach()

    records = await read_topic(kafka_bootstrap, prefix + TOPIC, expected=2)
    assert [e.id for e in envelopes(records)] == [event_id, event_id], "at-least-once: the broker holds both copies"

    async def make_effect(session, envelope):
        session.add(Effect(event_id=envelope.id, widget_id=envelope.data["widget_id"]))

    runner = ConsumerRunner(name="test.effects", group_id=prefix + "effects", topics=[prefix + TOPIC],
                            handlers={"widget.made.v1": make_effect}, session_factory=sessions,
                            bootstrap_servers=kafka_bootstrap, dlq_producer=producer, service_name="test")
    task = asyncio.create_task(runner.run())
    try:
        await eventually(lambda: _seen(runner, 2), what="both copies consumed")
    finally:
        runner.stop()
        await task
    async with sessions() as session:
        effects = (await session.exec(select(Effect))).all()
        inbox = (await session.exec(select(ProcessedMessage))).all()
    assert [(e.event_id, e.widget_id) for e in effects] == [(event_id, "w1")]
    assert [(m.consumer, m.message_id) for m in inbox] == [("test.effects", event_id)]


async def _seen(runner, n):
    return runner.records_seen >= n


async def test_commit_wakes_the_relay_without_waiting_for_the_poll(kafka_bootstrap, sessions, producer):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    # The fallback poll is an hour: only the commit hook can get the event out within the test.
    relay = OutboxRelay(sessions, producer, topic_prefix=prefix, fallback_poll_s=3600)
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.sleep(0.2)  # let the relay finish its first (empty) pass and start waiting
        event_id = await _commit_widget(sessions, "w2")
        records = await read_topic(kafka_bootstrap, prefix + TOPIC, expected=1)
        assert [e.id for e in envelopes(records)] == [event_id]
    finally:
        relay.stop()
        await task
        relay.detach()


class _FlakyProducer:
    """Wraps the real producer; the first `failures` sends are refused as if the broker were down."""

    def __init__(self, real: AIOKafkaProducer, failures: int) -> None:
        self._real, self._failures = real, failures

    async def send(self, *args, **kwargs):
        if self._failures > 0:
            self._failures -= 1
            raise ConnectionError("broker unreachable (simulated)")
        return await self._real.send(*args, **kwargs)


async def test_rows_that_failed_to_publish_are_retried_in_case_order(kafka_bootstrap, sessions, producer):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    async with sessions() as session:
        first = add_event(session, topic=TOPIC, case_id="case-A", event_type="widget.made.v1",
                          data={"widget_id": "a1"}, source="/test")
        second = add_event(session, topic=TOPIC, case_id="case-A", event_type="widget.made.v1",
                           data={"widget_id": "a2"}, source="/test")
        await session.commit()

    relay = OutboxRelay(sessions, _FlakyProducer(producer, failures=1), topic_prefix=prefix, retry_base_s=0.2)
    await relay.publish_batch()
    async with sessions() as session:
        failed = await session.get(OutboxMessage, first.id)
        assert failed.sent_at is None and failed.attempts == 1 and "unreachable" in failed.last_error
        assert failed.next_attempt_at is not None
    # Until case-A's first event is out, its second one waits: per-case order holds.
    await eventually(lambda: _published(relay), what="retry after backoff")
    relay.detach()
    records = await read_topic(kafka_bootstrap, prefix + TOPIC, expected=2)
    sent_ids = [e.id for e in envelopes(records)]
    assert sent_ids.index(first.id) < sent_ids.index(second.id)
    async with sessions() as session:
        rows = (await session.exec(select(OutboxMessage))).all()
    assert all(r.sent_at is not None for r in rows)


async def _published(relay):
    await relay.publish_batch()
    async with relay._sessions() as session:
        return not (await session.exec(select(OutboxMessage).where(OutboxMessage.sent_at.is_(None)))).all()
