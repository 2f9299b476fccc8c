"""enlace-ops on the real broker: list, show and redrive dead letters; rewind a group to replay; outbox status."""

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaProducer
from sqlmodel import Field, SQLModel, select, update
from typer.testing import CliRunner

from enlace_ops import operations as ops
from enlace_ops.cli import app
from enlace_platform.consumer import ConsumerRunner, PoisonMessage
from enlace_platform.envelope import Envelope
from enlace_platform.outbox import OutboxMessage, add_event
from tests.support.harness import (
    eventually, provision_topics, publish_envelopes, service_database, unique_prefix,
)

pytestmark = pytest.mark.kafka

TOPIC = "intake.case"


class Tally(SQLModel, table=True):
    __tablename__ = "test_ops_tally"
    event_id: str = Field(primary_key=True)
    value: int


@pytest.fixture
async def sessions(tmp_path):
    async with service_database(tmp_path / "ops.db", [Tally.__table__]) as factory:
        yield factory


async def _cli(*args: str):
    # The CLI runs its own event loop, so it gets a thread of its own.
    return await asyncio.to_thread(CliRunner().invoke, app, list(args), catch_exceptions=False,
                                   env={"COLUMNS": "250"})


def _event(value: int) -> Envelope:
    return Envelope(type="tally.counted.v1", source="/test", key=f"case-{value}", data={"value": value})


async def _consume(prefix, bootstrap, sessions, handler, expected: int, group="tally") -> None:
    dlq_producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await dlq_producer.start()
    runner = ConsumerRunner(name="test.tally", group_id=prefix + group, topics=[prefix + TOPIC],
                            handlers={"tally.counted.v1": handler}, session_factory=sessions,
                            bootstrap_servers=bootstrap, dlq_producer=dlq_producer, service_name="ops-test",
                            retry_base_s=0.01)
    task = asyncio.create_task(runner.run())

    async def seen():
        return runner.records_seen >= expected
    try:
        await eventually(seen, what=f"{expected} records consumed")
    finally:
        runner.stop()
        await task
        await dlq_producer.stop()


async def _tallies(sessions) -> list[int]:
    async with sessions() as session:
        return sorted(t.value for t in (await session.exec(select(Tally))).all())


async def test_dead_letters_are_listed_shown_and_redriven_once_the_cause_is_fixed(kafka_bootstrap, sessions):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    events = [_event(v) for v in (1, 2, 3)]
    await publish_envelopes(kafka_bootstrap, prefix + TOPIC, events)
    broken = {"on": True}

    async def count(session, envelope):
        if broken["on"] and envelope.data["value"] == 2:
            raise PoisonMessage("value 2 is not understood yet")
        session.add(Tally(event_id=envelope.id, value=envelope.data["value"]))

    await _consume(prefix, kafka_bootstrap, sessions, count, expected=3)
    assert await _tallies(sessions) == [1, 3]

    listed = await _cli("dlq", "list", TOPIC, "--bootstrap", kafka_bootstrap, "--prefix", prefix)
    assert listed.exit_code == 0, listed.output
    assert events[1].id in listed.output and "PoisonMessage" in listed.output
    [letter] = await ops.read_dead_letters(kafka_bootstrap, prefix + TOPIC)
    shown = await _cli("dlq", "show", TOPIC, str(letter.offset), "--partition", str(letter.partition),
                       "--bootstrap", kafka_bootstrap, "--prefix", prefix)
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["payload"] == {"value": 2}

    broken["on"] = False
    redriven = await _cli("dlq", "redrive", TOPIC, "--all", "--bootstrap", kafka_bootstrap, "--prefix", prefix)
    assert redriven.exit_code == 0, redriven.output
    assert "redrove 1 dead letter" in redriven.output
    await _consume(prefix, kafka_bootstrap, sessions, count, expected=1)
    assert await _tallies(sessions) == [1, 2, 3]


async def test_a_dead_letter_naming_another_topic_is_never_redriven_there(kafka_bootstrap):
    # Any reader of referral.referral may write its .dlq (it dead-letters there), headers included: a letter that
    # names intake.case must not make the operator publish to intake.case, which that reader may not write.
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    forged = [("ce_id", b"forged-1"), ("ce_type", b"case.screened.v1"),
              ("dlq_original_topic", f"{prefix}intake.case".encode()), ("dlq_consumer", b"referral.routing")]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(f"{prefix}referral.referral.dlq", b"{}", key=b"case-1", headers=forged)
    finally:
        await producer.stop()
    result = await _cli("dlq", "redrive", "referral.referral", "--all", "--bootstrap", kafka_bootstrap,
                        "--prefix", prefix)
    assert result.exit_code == 1
    assert "name another topic" in result.output and "intake.case" in result.output
    for topic in ("intake.case", "referral.referral"):
        position = await ops.group_position(kafka_bootstrap, f"{prefix}nobody", f"{prefix}{topic}")
        assert sum(position.end.values()) == 0, f"nothing was sent to {topic}"


async def test_redrive_needs_a_choice(kafka_bootstrap):
    result = await _cli("dlq", "redrive", TOPIC, "--bootstrap", kafka_bootstrap)
    assert result.exit_code == 1
    assert "--offset N" in result.output


async def test_replay_rewinds_the_services_group_and_the_inbox_keeps_it_idempotent(kafka_bootstrap, sessions):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    await publish_envelopes(kafka_bootstrap, prefix + TOPIC, [_event(v) for v in (1, 2, 3, 4)])
    handled: list[int] = []

    async def count(session, envelope):
        handled.append(envelope.data["value"])
        session.add(Tally(event_id=envelope.id, value=envelope.data["value"]))

    # The referral service's routing consumer reads intake.case; this test stands in for it.
    group = "referral.routing"
    await _consume(prefix, kafka_bootstrap, sessions, count, expected=4, group=group)
    before = await ops.group_position(kafka_bootstrap, prefix + group, prefix + TOPIC)
    assert before.lag == 0 and sum(before.committed.values()) == 4

    result = await _cli("replay", TOPIC, "--service", "referral", "--from-offset", "0",
                        "--bootstrap", kafka_bootstrap, "--prefix", prefix)
    assert result.exit_code == 0, result.output
    after = await ops.group_position(kafka_bootstrap, prefix + group, prefix + TOPIC)
    assert set(after.committed.values()) == {0} and after.lag == 4

    await _consume(prefix, kafka_bootstrap, sessions, count, expected=4, group=group)
    assert sorted(handled) == [1, 2, 3, 4]  # replayed records were skipped by the inbox, not handled twice
    assert (await ops.group_position(kafka_bootstrap, prefix + group, prefix + TOPIC)).lag == 0


async def test_replay_refuses_an_unknown_consumer(kafka_bootstrap):
    result = await _cli("replay", TOPIC, "--service", "referral", "--consumer", "nope", "--from-offset", "0",
                        "--bootstrap", kafka_bootstrap)
    assert result.exit_code == 1
    assert "has no consumer 'nope'" in result.output


async def test_outbox_status_counts_unsent_rows_by_topic(tmp_path, sessions):
    async with sessions() as session:
        for case in ("a", "b"):
            add_event(session, topic=TOPIC, case_id=case, event_type="case.registered.v1", data={}, source="/t")
        failed = add_event(session, topic="referral.referral", case_id="a", event_type="referral.requested.v1",
                           data={}, source="/t")
        await session.commit()
        # As the relay records a failed attempt: the error, and when it tries again.
        last_error = "_NoAck: no ack within 5s"
        await session.exec(update(OutboxMessage).where(OutboxMessage.id == failed.id).values(
            attempts=2, last_error=last_error, next_attempt_at=datetime.now(UTC) + timedelta(seconds=30)))
        await session.commit()
    status = await ops.outbox_status(f"sqlite+aiosqlite:///{tmp_path / 'ops.db'}")
    assert status.unsent == 3
    assert status.by_topic == {TOPIC: 2, "referral.referral": 1}
    assert status.retrying == 1 and status.last_errors[0][:4] == (failed.id, failed.type, 2, last_error)
    result = await _cli("outbox", "intake", "--database-url", f"sqlite+aiosqlite:///{tmp_path / 'ops.db'}")
    assert result.exit_code == 0, result.output
    assert "3 unsent" in result.output and "1 retrying" in result.output
    assert "after 2 attempt(s): _NoAck: no ack within 5s; next attempt in" in " ".join(result.output.split())
