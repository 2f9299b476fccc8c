"""The consumer runner on the real broker: idempotence, dead letters, retries and shutdown."""

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlmodel import Field, SQLModel, select

from enlace_platform.consumer import ConsumerRunner, PoisonMessage
from enlace_platform.contracts import EventContracts
from enlace_platform.envelope import Envelope, to_kafka
from enlace_platform.inbox import ProcessedMessage
from enlace_platform.metrics import ServiceMetrics
from tests.support.harness import eventually, provision_topics, read_topic, service_database, unique_prefix

pytestmark = pytest.mark.kafka

TOPIC = "intake.case"


class Note(SQLModel, table=True):
    __tablename__ = "test_note"
    event_id: str = Field(primary_key=True)
    text: str


@pytest.fixture
async def sessions(tmp_path):
    async with service_database(tmp_path / "consumer.db", [Note.__table__]) as factory:
        yield factory


async def write_note(session, envelope: Envelope) -> None:
    if "text" not in envelope.data:
        raise PoisonMessage("note.written.v1 needs a text")
    session.add(Note(event_id=envelope.id, text=envelope.data["text"]))


async def _publish(producer, topic: str, envelope: Envelope) -> None:
    key, value, headers = to_kafka(envelope)
    await (await producer.send(topic, value=value, key=key, headers=headers))


def _note(text: str | None, **kw) -> Envelope:
    return Envelope(type="note.written.v1", source="/test", key="case-1",
                    data={} if text is None else {"text": text}, **kw)


def _runner(prefix, sessions, bootstrap, producer, handlers=None, group="notes", **kw) -> ConsumerRunner:
    return ConsumerRunner(name="test.notes", group_id=prefix + group, topics=[prefix + TOPIC],
                          handlers=handlers or {"note.written.v1": write_note}, session_factory=sessions,
                          bootstrap_servers=bootstrap, dlq_producer=producer, service_name="test-svc",
                          retry_base_s=0.01, **kw)


async def _run_until(runner: ConsumerRunner, seen: int) -> None:
    task = asyncio.create_task(runner.run())
    try:
        await eventually(lambda: _at_least(runner, seen), what=f"{seen} records consumed")
    finally:
        runner.stop()
        await task


async def _at_least(runner, n):
    return runner.records_seen >= n


async def _notes(sessions) -> list[tuple[str, str]]:
    async with sessions() as session:
        return [(n.event_id, n.text) for n in (await session.exec(select(Note).order_by(Note.text))).all()]


async def test_duplicate_delivery_changes_nothing(kafka_bootstrap, sessions, producer):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    first = _note("first")
    await _publish(producer, prefix + TOPIC, first)
    await _publish(producer, prefix + TOPIC, first)  # the same event again (same ce_id)
    second = _note("second")
    await _publish(producer, prefix + TOPIC, second)

    await _run_until(_runner(prefix, sessions, kafka_bootstrap, producer), seen=3)

    assert await _notes(sessions) == [(first.id, "first"), (second.id, "second")]
    async with sessions() as session:
        inbox = (await session.exec(select(ProcessedMessage))).all()
    assert sorted(m.message_id for m in inbox) == sorted([first.id, second.id])


async def test_poison_messages_go_to_the_dlq_with_error_headers_and_the_partition_moves_on(
        kafka_bootstrap, sessions, producer):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    topic = prefix + TOPIC
    # All on one key, so they share a partition and the good one comes after both bad ones.
    await (await producer.send(topic, key=b"case-1", value=b"{not json", headers=[("ce_specversion", b"1.0")]))
    contract_breaker = _note(None)
    await _publish(producer, topic, contract_breaker)
    good = _note("after the poison")
    await _publish(producer, topic, good)

    await _run_until(_runner(prefix, sessions, kafka_bootstrap, producer), seen=3)

    assert await _notes(sessions) == [(good.id, "after the poison")]
    dead = await read_topic(kafka_bootstrap, topic + ".dlq", expected=2)
    assert len(dead) == 2
    headers = [dict(r.headers) for r in dead]
    by_exception = {h["dlq_exception"].decode(): h for h in headers}
    assert set(by_exception) == {"MalformedEvent", "PoisonMessage"}
    for h in headers:
        assert h["dlq_service"] == b"test-svc"
        assert h["dlq_consumer"] == b"test.notes"
        assert h["dlq_attempts"] == b"1", "retrying cannot fix a poison message"
        assert h["dlq_original_topic"] == topic.encode()
        assert h["dlq_message"]
    assert dead[0].value == b"{not json" and dead[0].key == b"case-1", "the DLQ keeps the original record"
    assert by_exception["PoisonMessage"]["ce_id"] == contract_breaker.id.encode()


async def test_a_failing_handler_is_retried_a_bounded_number_of_times_then_dead_lettered(
        kafka_bootstrap, sessions, producer):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    calls: list[str] = []

    async def flaky(session, envelope):
        calls.append(envelope.data["text"])
        if envelope.data["text"] == "always fails":
            raise RuntimeError("downstream table is locked")
        if envelope.data["text"] == "fails once" and calls.count("fails once") == 1:
            raise RuntimeError("transient")
        session.add(Note(event_id=envelope.id, text=envelope.data["text"]))

    for text in ("always fails", "fails once", "fine"):
        await _publish(producer, prefix + TOPIC, _note(text))

    runner = _runner(prefix, sessions, kafka_bootstrap, producer, handlers={"note.written.v1": flaky},
                     max_attempts=3)
    await _run_until(runner, seen=3)

    assert calls.count("always fails") == 3 and calls.count("fails once") == 2 and calls.count("fine") == 1
    assert [t for _, t in await _notes(sessions)] == ["fails once", "fine"]
    dead = await read_topic(kafka_bootstrap, prefix + TOPIC + ".dlq", expected=1)
    assert len(dead) == 1
    h = dict(dead[0].headers)
    assert h["dlq_exception"] == b"RuntimeError" and h["dlq_attempts"] == b"3"
    # Foreign exception text can quote payload values, so only a pointer to the log goes on the DLQ.
    assert b"locked" not in h["dlq_message"] and b"see the service log for trace" in h["dlq_message"]


async def test_offsets_are_committed_so_a_restarted_consumer_resumes_after_what_it_handled(
        kafka_bootstrap, sessions, producer):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    await _publish(producer, prefix + TOPIC, _note("one"))
    await _publish(producer, prefix + TOPIC, _note("two"))
    await _run_until(_runner(prefix, sessions, kafka_bootstrap, producer), seen=2)

    # Committed offsets cover both records of the case's partition.
    check = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=prefix + "notes", enable_auto_commit=False)
    await check.start()
    try:
        partitions = check.partitions_for_topic(prefix + TOPIC) or await _partitions(check, prefix + TOPIC)
        committed = {p: await check.committed(TopicPartition(prefix + TOPIC, p)) for p in partitions}
    finally:
        await check.stop()
    assert sum(o or 0 for o in committed.values()) == 2

    await _publish(producer, prefix + TOPIC, _note("three"))
    seen_after_restart: list[str] = []

    async def record(session, envelope):
        seen_after_restart.append(envelope.data["text"])

    await _run_until(_runner(prefix, sessions, kafka_bootstrap, producer, handlers={"note.written.v1": record}),
                     seen=1)
    assert seen_after_restart == ["three"]


async def _partitions(consumer, topic):
    await consumer._client.force_metadata_update()
    return consumer.partitions_for_topic(topic)


async def test_two_replicas_in_one_group_split_the_partitions_and_handle_each_event_once(
        kafka_bootstrap, sessions, producer):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    sent = [Envelope(type="note.written.v1", source="/test", key=f"case-{i}", data={"text": f"n{i:02d}"})
            for i in range(30)]
    for envelope in sent[:15]:
        await _publish(producer, prefix + TOPIC, envelope)

    first = _runner(prefix, sessions, kafka_bootstrap, producer)
    second = _runner(prefix, sessions, kafka_bootstrap, producer)
    task_a = asyncio.create_task(first.run())
    try:
        await eventually(lambda: _at_least(first, 1), what="the first replica to start consuming")
        task_b = asyncio.create_task(second.run())  # joining forces a rebalance mid-stream
        try:
            await eventually(lambda: _flag(second.ready.is_set()), what="the second replica to get partitions")
            for envelope in sent[15:]:
                await _publish(producer, prefix + TOPIC, envelope)

            async def all_handled():
                return len(await _notes(sessions)) == 30

            await eventually(all_handled, what="all 30 events handled")
        finally:
            second.stop()
            await task_b
    finally:
        first.stop()
        await task_a
    assert sorted(t for _, t in await _notes(sessions)) == [f"n{i:02d}" for i in range(30)]
    assert second.records_seen > 0, "the second replica took over some partitions"


async def _flag(value: bool) -> bool:
    return value


async def test_metrics_count_handled_and_dead_lettered_records_and_report_no_lag_once_caught_up(
        kafka_bootstrap, sessions, producer):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    for text in ("a", "b", "c", None):
        await _publish(producer, prefix + TOPIC, _note(text))
    metrics = ServiceMetrics("test-svc")
    runner = _runner(prefix, sessions, kafka_bootstrap, producer, metrics=metrics)
    task = asyncio.create_task(runner.run())
    try:
        await eventually(lambda: _at_least(runner, 4), what="4 records consumed")
        lag = await runner.lag()
    finally:
        runner.stop()
        await task

    def sample(name, **labels):
        return metrics.registry.get_sample_value(name, labels)

    by_outcome = {"consumer": "test.notes", "event_type": "note.written.v1"}
    assert sample("enlace_handler_duration_seconds_count", **by_outcome, outcome="handled") == 3
    assert sample("enlace_handler_duration_seconds_count", **by_outcome, outcome="dead-lettered") == 1
    assert sample("enlace_dlq_messages_total", consumer="test.notes", topic=prefix + TOPIC) == 1
    assert lag and set(lag.values()) == {0}
    assert {topic for topic, _ in lag} == {prefix + TOPIC}


async def test_an_event_that_breaks_its_published_schema_is_dead_lettered_without_reaching_the_handler(
        kafka_bootstrap, sessions, producer):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    contracts = EventContracts()
    good = Envelope(type="case.registered.v1", source="/test", key="case-1", data={
        "case_id": "6b2f9a64-3f0e-4a56-9a41-1f3f0c1b2a10", "agency_id": "MX-INM", "jurisdiction": "MX",
        "person_ids": ["0d6c1d0e-8f43-4d4b-a8f5-8a4c3c0f9b21"], "encountered_at": "2026-11-28T10:00:00Z"})
    assert contracts.violations(good.type, good.data) == []
    bad = Envelope(type="case.registered.v1", source="/test", key="case-2",
                   data={**good.data, "person_ids": "Juan Pérez", "given_names": "Juan"})
    handled: list[str] = []

    async def record(session, envelope):
        handled.append(envelope.id)

    await _publish(producer, prefix + TOPIC, bad)
    await _publish(producer, prefix + TOPIC, good)
    runner = _runner(prefix, sessions, kafka_bootstrap, producer, handlers={"case.registered.v1": record},
                     validate=contracts.check)
    await _run_until(runner, 2)

    assert handled == [good.id]
    [dead] = await read_topic(kafka_bootstrap, prefix + TOPIC + ".dlq", expected=1)
    headers = dict(dead.headers)
    assert headers["ce_id"] == bad.id.encode()
    assert headers["dlq_exception"] == b"ContractViolation"
    message = headers["dlq_message"].decode()
    assert "person_ids: fails 'type'" in message and "additionalProperties" in message
    assert "Juan" not in message  # the offending values never reach the DLQ headers
