"""The transactional outbox on the real broker: claim, send, record; leases, backoff and per-case order."""

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError, OutOfOrderSequenceNumber
from sqlmodel import Field, SQLModel, select, update

from enlace_platform.consumer import ConsumerRunner
from enlace_platform.inbox import ProcessedMessage
from enlace_platform.outbox import OutboxMessage, OutboxRelay, add_event
from enlace_platform.producer import RenewableProducer
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


async def _commit_widget(sessions, widget_id: str, case_id: str | None = None) -> str:
    async with sessions() as session:
        session.add(Widget(id=widget_id))
        row = add_event(session, topic=TOPIC, case_id=case_id or f"case-{widget_id}", event_type="widget.made.v1",
                        data={"widget_id": widget_id}, source="/test")
        await session.commit()
        return row.id


async def _rows(sessions) -> dict[str, OutboxMessage]:
    async with sessions() as session:
        return {row.id: row for row in (await session.exec(select(OutboxMessage))).all()}


async def _as_if_time_passed(sessions, *, leases: bool = False, backoff: bool = False) -> None:
    """Move the leases' ends (or the next attempts) into the past, as if they had run out."""
    past = datetime.now(UTC) - timedelta(seconds=1)
    async with sessions() as session:
        if leases:
            await session.exec(update(OutboxMessage).where(OutboxMessage.claimed_until.is_not(None))
                               .values(claimed_until=past))
        if backoff:
            await session.exec(update(OutboxMessage).where(OutboxMessage.next_attempt_at.is_not(None))
                               .values(next_attempt_at=past))
        await session.commit()


async def _published_ids(bootstrap: str, topic: str, expected: int) -> list[str]:
    return [e.id for e in envelopes(await read_topic(bootstrap, topic, expected=expected))]


async def test_event_survives_relay_death_between_ack_and_record_and_is_handled_once(
        kafka_bootstrap, sessions, producer, monkeypatch):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    event_id = await _commit_widget(sessions, "w1")

    dying = OutboxRelay(sessions, producer, topic_prefix=prefix)

    async def die(ids, outcomes, **_):
        raise RuntimeError("relay process died after the broker acked, before recording it")

    monkeypatch.setattr(dying, "_record", die)
    with pytest.raises(RuntimeError):
        await dying.publish_batch()
    dying.detach()
    row = (await _rows(sessions))[event_id]
    assert row.sent_at is None, "a row must not count as sent unless recorded after the ack"
    assert row.claimed_by == dying.relay_id and row.claimed_until is not None, "the claim was committed"

    restarted = OutboxRelay(sessions, producer, topic_prefix=prefix)
    assert await restarted.publish_batch() == 0, "the dead relay's lease still holds the row"
    await _as_if_time_passed(sessions, leases=True)
    assert await restarted.publish_batch() == 1, "an expired lease is claimed again"
    assert await restarted.publish_batch() == 0, "a recorded row is not sent again"
    restarted.detach()
    row = (await _rows(sessions))[event_id]
    assert row.sent_at is not None and row.claimed_by is None and row.claimed_until is None

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


class _RefusingProducer:
    """The real producer, but sends of the given cases are refused with ``error`` (once each, by default)."""

    def __init__(self, real: AIOKafkaProducer, refuse: dict[str, int], error: Exception) -> None:
        self._real, self._refuse, self._error = real, dict(refuse), error
        self.attempts: list[bytes] = []

    async def send(self, topic, *, value, key, headers):
        self.attempts.append(key)
        case = key.decode()
        if self._refuse.get(case, 0) > 0:
            self._refuse[case] -= 1
            raise self._error
        return await self._real.send(topic, value=value, key=key, headers=headers)


class _AckWhenReleasedProducer:
    """The real producer, whose acks reach the relay only once ``release`` is set: a broker that stopped
    answering while the producer holds the events (the idempotent producer delivers them when it is back)."""

    def __init__(self, real: AIOKafkaProducer) -> None:
        self._real = real
        self.release = asyncio.Event()
        self.sent: list[str] = []

    async def send(self, topic, *, value, key, headers):
        self.sent.append(dict(headers)["ce_id"].decode())
        delivery = await self._real.send(topic, value=value, key=key, headers=headers)

        async def acked_when_released():
            await self.release.wait()
            return await delivery

        return asyncio.ensure_future(acked_when_released())


async def test_a_refused_send_records_a_failed_attempt_backs_off_and_keeps_the_case_in_order(
        kafka_bootstrap, sessions, producer):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    async with sessions() as session:
        first, second = (add_event(session, topic=TOPIC, case_id="case-A", event_type="widget.made.v1",
                                   data={"widget_id": w}, source="/test") for w in ("a1", "a2"))
        other = add_event(session, topic=TOPIC, case_id="case-B", event_type="widget.made.v1",
                          data={"widget_id": "b1"}, source="/test")
        await session.commit()

    refusing = _RefusingProducer(producer, {"case-A": 1}, ConnectionError("broker unreachable (simulated)"))
    relay = OutboxRelay(sessions, refusing, topic_prefix=prefix, retry_base_s=0.2)
    before = datetime.now(UTC)
    assert await relay.publish_batch() == 1
    rows = await _rows(sessions)
    failed = rows[first.id]
    assert failed.sent_at is None and failed.attempts == 1 and "unreachable" in failed.last_error
    assert failed.next_attempt_at > before, "it backs off"
    assert failed.claimed_by is None and failed.claimed_until is None, "its lease is released"
    assert relay.broker_unreachable, "the broker did not answer"
    for untried in (rows[second.id], rows[other.id]):
        # Not attempted: the case's earlier event failed, or the broker did not answer in this pass.
        assert (untried.sent_at, untried.attempts, untried.next_attempt_at, untried.claimed_by) == (None, 0, None, None)

    async def published():
        await relay.publish_batch()
        return all(row.sent_at for row in (await _rows(sessions)).values())

    await eventually(published, what="the retry after the backoff")
    relay.detach()
    assert not relay.broker_unreachable
    sent_ids = await _published_ids(kafka_bootstrap, prefix + TOPIC, expected=3)
    assert sorted(sent_ids) == sorted([first.id, second.id, other.id]), "each once"
    assert sent_ids.index(first.id) < sent_ids.index(second.id)


async def test_a_case_waits_behind_its_backing_off_event_while_other_cases_go_on(kafka_bootstrap, sessions, producer):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    a1 = await _commit_widget(sessions, "a1", "case-A")
    a2 = await _commit_widget(sessions, "a2", "case-A")
    b1 = await _commit_widget(sessions, "b1", "case-B")
    # An error about this one event, not an outage: the other cases go on in the same pass.
    refusing = _RefusingProducer(producer, {"case-A": 1}, MessageSizeTooLargeError())
    relay = OutboxRelay(sessions, refusing, topic_prefix=prefix, retry_base_s=30)
    assert await relay.publish_batch() == 2, "a1 failed, a2 held back, b1 sent"
    assert not relay.broker_unreachable, "one event's error says nothing about the broker"
    rows = await _rows(sessions)
    assert rows[a1].attempts == 1 and "MessageSizeTooLarge" in rows[a1].last_error and rows[a1].next_attempt_at
    assert rows[a2].attempts == 0 and rows[a2].sent_at is None
    assert rows[b1].sent_at is not None

    a3 = await _commit_widget(sessions, "a3", "case-A")
    b2 = await _commit_widget(sessions, "b2", "case-B")
    attempts_before = len(refusing.attempts)
    assert await relay.publish_batch() == 1, "only b2: case A waits while a1 backs off"
    assert refusing.attempts[attempts_before:] == [b"case-B"]
    assert (await _rows(sessions))[b2].sent_at is not None

    await _as_if_time_passed(sessions, backoff=True)
    assert await relay.publish_batch() == 3, "a1, then a2 and a3 behind it"
    assert await relay.publish_batch() == 0
    relay.detach()
    rows = await _rows(sessions)
    assert rows[a1].attempts == 2 and rows[a1].last_error is None
    sent_ids = await _published_ids(kafka_bootstrap, prefix + TOPIC, expected=5)
    assert [i for i in sent_ids if i in (a1, a2, a3)] == [a1, a2, a3]
    assert [i for i in sent_ids if i in (b1, b2)] == [b1, b2]


async def test_a_live_lease_holds_its_case_and_an_expired_one_is_claimed_again(kafka_bootstrap, sessions, producer):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    a1 = await _commit_widget(sessions, "a1", "case-A")
    a2 = await _commit_widget(sessions, "a2", "case-A")
    holder = OutboxRelay(sessions, producer, topic_prefix=prefix)
    claimed = await holder._claim()  # as a relay in the middle of sending them (or one that crashed there)
    assert [row.id for row in claimed] == [a1, a2]
    a3 = await _commit_widget(sessions, "a3", "case-A")
    b1 = await _commit_widget(sessions, "b1", "case-B")

    other = OutboxRelay(sessions, producer, topic_prefix=prefix)
    assert await other.publish_batch() == 1, "b1 only: a3 would overtake a1 and a2, which the holder has"
    assert (await _rows(sessions))[a3].claimed_by is None

    await _as_if_time_passed(sessions, leases=True)
    assert await other.publish_batch() == 3, "the lapsed lease is claimed again, the case in order"
    # The first holder comes back with acks: it no longer holds the rows, so it records nothing.
    await holder._record([a1, a2], [None, None])
    rows = await _rows(sessions)
    assert all(rows[i].sent_at is not None and rows[i].attempts == 1 for i in (a1, a2, a3, b1))
    holder.detach()
    other.detach()
    sent_ids = await _published_ids(kafka_bootstrap, prefix + TOPIC, expected=4)
    assert [i for i in sent_ids if i != b1] == [a1, a2, a3]


async def test_unacked_events_stay_with_the_producer_and_are_never_handed_over_twice(
        kafka_bootstrap, sessions, producer):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    a1 = await _commit_widget(sessions, "a1", "case-A")
    silent = _AckWhenReleasedProducer(producer)
    relay = OutboxRelay(sessions, silent, topic_prefix=prefix, send_timeout_s=0.3, retry_base_s=0.05)
    assert await relay.publish_batch() == 1
    row = (await _rows(sessions))[a1]
    assert row.sent_at is None and row.attempts == 1 and "no ack" in row.last_error and row.next_attempt_at
    assert row.claimed_by == relay.relay_id, "the producer still holds it: the relay keeps the lease"
    assert relay.broker_unreachable

    b1 = await _commit_widget(sessions, "b1", "case-B")
    assert await relay.publish_batch() == 1, "the pass only waits for a1"
    rows = await _rows(sessions)
    assert rows[a1].attempts == 2, "each pass without the ack counts a failed attempt"
    assert rows[b1].attempts == 0 and rows[b1].claimed_by is None, "nothing new goes to a broker that is away"
    assert silent.sent == [a1], "a1 was handed to the producer once"

    silent.release.set()
    assert await relay.publish_batch() == 1, "a1's ack, recorded"
    assert not relay.broker_unreachable
    assert await relay.publish_batch() == 1, "then b1"
    relay.detach()
    rows = await _rows(sessions)
    assert all(row.sent_at and row.claimed_by is None for row in rows.values())
    assert silent.sent == [a1, b1]
    assert sorted(await _published_ids(kafka_bootstrap, prefix + TOPIC, expected=2)) == sorted([a1, b1])


class _StuckAfterBrokerRestart(AIOKafkaProducer):
    """A real producer in the state aiokafka reaches after a broker restart with a batch in flight
    (aio-libs/aiokafka#1017): the broker answers, but every send fails with OutOfOrderSequenceNumber."""

    async def send(self, topic, **kwargs):
        failed = asyncio.get_running_loop().create_future()
        failed.set_exception(OutOfOrderSequenceNumber("the broker received an out of order sequence number"))
        return failed


async def test_a_producer_stuck_after_a_broker_restart_is_replaced_and_the_backlog_delivered(
        kafka_bootstrap, sessions):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    built: list[AIOKafkaProducer] = []

    def build() -> AIOKafkaProducer:
        kind = _StuckAfterBrokerRestart if not built else AIOKafkaProducer
        built.append(kind(bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all"))
        return built[-1]

    producer = RenewableProducer(build)
    await producer.start()
    ids = [await _commit_widget(sessions, f"w{n}", case_id=f"case-{n % 3}") for n in range(9)]
    relay = OutboxRelay(sessions, producer, topic_prefix=prefix, fallback_poll_s=0.2, retry_base_s=0.05)
    task = asyncio.create_task(relay.run())
    try:
        async def all_sent():
            return all(row.sent_at for row in (await _rows(sessions)).values())

        await eventually(all_sent, what="the backlog sent by the replacement producer")
    finally:
        relay.stop()
        await task
        await producer.stop()
    assert producer.generation == 1 and len(built) == 2
    rows = await _rows(sessions)
    assert all("OutOfOrderSequenceNumber" not in (row.last_error or "") for row in rows.values())  # cleared on ack
    assert max(row.attempts for row in rows.values()) >= 2  # the stuck producer's attempt was recorded
    published = await _published_ids(kafka_bootstrap, f"{prefix}{TOPIC}", expected=len(ids))
    assert sorted(published) == sorted(ids)  # each exactly once: the stuck producer delivered nothing
    for case in ("case-0", "case-1", "case-2"):  # and each case in the order it was written
        assert [i for i in published if i in ids[int(case[-1])::3]] == ids[int(case[-1])::3]
