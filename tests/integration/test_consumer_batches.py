"""Batches keep exactly-once: a consumer process killed (SIGKILL) in the middle of a batch, then restarted,
leaves every record's effect exactly once and in order. The runner runs in a process of its own over a
SQLite file (tests/support/batch_consumer_process.py); its handler's effect is not idempotent by itself."""

import asyncio
import signal
import sqlite3
import sys

import pytest
from aiokafka import AIOKafkaProducer

from enlace_platform.envelope import Envelope, to_kafka
from tests.support.batch_consumer_process import CONSUMER, EVENT_TYPE, TOPIC, Counter, EffectLine
from tests.support.harness import REPO, eventually, provision_topics, unique_prefix

pytestmark = pytest.mark.kafka

BATCH = 25


async def _publish(bootstrap: str, topic: str, envelopes: list[Envelope]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for envelope in envelopes:
            key, value, headers = to_kafka(envelope)
            await producer.send(topic, value=value, key=key, headers=headers)
        await producer.flush()
    finally:
        await producer.stop()


async def _start(database, bootstrap: str, prefix: str, log_path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.batch_consumer_process", str(database), bootstrap, prefix, str(BATCH),
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=log_path.open("ab"))


def _rows(database, sql: str) -> list:
    with sqlite3.connect(database) as reader:  # beside the writer (WAL)
        return reader.execute(sql).fetchall()


def _effects(database) -> list[str]:
    return [event_id for (event_id,) in _rows(database, f"SELECT event_id FROM {EffectLine.__tablename__} "
                                                        "ORDER BY seq")]


async def test_a_consumer_killed_in_the_middle_of_a_batch_leaves_each_effect_exactly_once(kafka_bootstrap, tmp_path):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    # One case: one partition, handled in order, in batches of BATCH.
    sent = [Envelope(type=EVENT_TYPE, source="/test", key="case-1", data={"n": i}) for i in range(4 * BATCH)]
    await _publish(kafka_bootstrap, prefix + TOPIC, sent)
    database, log_path = tmp_path / "batches.db", tmp_path / "consumer.log"

    first = await _start(database, kafka_bootstrap, prefix, log_path)
    handling: list[str] = []
    try:
        # Into the second batch: the first is committed, the one in hand is half done.
        while len(handling) < BATCH + BATCH // 2:
            line = (await asyncio.wait_for(first.stdout.readline(), 60)).decode()
            assert line, f"the consumer process ended early; see {log_path}"
            if line.startswith("handling "):
                handling.append(line.split()[1])
    finally:
        first.send_signal(signal.SIGKILL)
        await first.wait()

    committed = _effects(database)
    assert 0 < len(committed) < len(handling), "killed with a batch handled but not committed"
    assert committed == [e.id for e in sent[:len(committed)]], "what was committed is whole batches, in order"

    second = await _start(database, kafka_bootstrap, prefix, log_path)
    try:
        async def all_effects():
            return len(_effects(database)) >= len(sent)

        # The killed member's session has to time out before the group hands its partitions over.
        await eventually(all_effects, timeout=90, what="every event handled after the restart")
    finally:
        second.send_signal(signal.SIGTERM)
        await asyncio.wait_for(second.wait(), 30)
    assert second.returncode == 0, f"graceful stop; see {log_path}"

    assert _effects(database) == [e.id for e in sent], "each effect exactly once, in the case's order"
    assert _rows(database, f"SELECT value FROM {Counter.__tablename__}") == [(len(sent),)]
    inbox = _rows(database, f"SELECT message_id FROM processed_messages WHERE consumer = '{CONSUMER}'")
    assert sorted(m for (m,) in inbox) == sorted(e.id for e in sent)
