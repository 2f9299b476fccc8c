"""Benchmarks of the eventing plumbing on a real broker (not run by the tests).

    make bench                      # starts the local broker if needed, then runs this

Measures, on the service's default SQLite database:
  1. relay throughput: rows already in the outbox → acked by Kafka;
  2. commit-to-consumer latency: one event per transaction, from commit to a consumer seeing it
     (this is what waking the relay on commit buys over a poll);
  3. consumer-runner throughput: records handled with the inbox row and a business row per record.
"""

import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from sqlmodel import Field, SQLModel

from enlace_platform.consumer import ConsumerRunner
from enlace_platform.db import create_tables, make_engine, make_session_factory
from enlace_platform.envelope import Envelope, to_kafka
from enlace_platform.inbox import ProcessedMessage
from enlace_platform.outbox import OutboxMessage, OutboxRelay, add_event
from enlace_platform.topics import all_topics, provision

BOOTSTRAP = os.environ.get("ENLACE_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
TOPIC = "intake.case"


class BenchRow(SQLModel, table=True):
    __tablename__ = "bench_row"
    id: str = Field(primary_key=True)


async def setup(tmp: Path, name: str):
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    await provision(BOOTSTRAP, all_topics(prefix), prefix=prefix, replication_factor=1)  # the local single broker
    engine = make_engine(f"sqlite+aiosqlite:///{tmp / f'{name}.db'}")
    await create_tables(engine, [OutboxMessage.__table__, ProcessedMessage.__table__, BenchRow.__table__])
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, enable_idempotence=True, acks="all", linger_ms=5)
    await producer.start()
    return prefix, engine, make_session_factory(engine, name), producer


async def relay_throughput(tmp: Path, n: int) -> dict:
    prefix, engine, sessions, producer = await setup(tmp, "relay")
    async with sessions() as session:
        for i in range(n):
            add_event(session, topic=TOPIC, case_id=f"case-{i % 500}", event_type="bench.v1",
                      data={"i": i}, source="/bench")
        await session.commit()
    relay = OutboxRelay(sessions, producer, topic_prefix=prefix, batch_size=500)
    started = time.perf_counter()
    sent = 0
    while sent < n:
        sent += await relay.publish_batch()
    elapsed = time.perf_counter() - started
    relay.detach()
    await producer.stop()
    await engine.dispose()
    return {"events": n, "seconds": round(elapsed, 2), "events_per_s": round(n / elapsed)}


async def commit_to_consumer_latency(tmp: Path, n: int) -> dict:
    prefix, engine, sessions, producer = await setup(tmp, "latency")
    consumer = AIOKafkaConsumer(prefix + TOPIC, bootstrap_servers=BOOTSTRAP, group_id=None,
                                auto_offset_reset="latest", enable_auto_commit=False)
    await consumer.start()
    await consumer.seek_to_end()
    relay = OutboxRelay(sessions, producer, topic_prefix=prefix, fallback_poll_s=3600)
    relay_task = asyncio.create_task(relay.run())
    await asyncio.sleep(0.3)
    latencies = []
    for i in range(n):
        async with sessions() as session:
            row = add_event(session, topic=TOPIC, case_id=f"case-{i}", event_type="bench.v1", data={"i": i},
                            source="/bench")
            await session.commit()
        committed = time.perf_counter()
        while True:
            record = await consumer.getone()
            if dict(record.headers).get("ce_id") == row.id.encode():
                latencies.append((time.perf_counter() - committed) * 1000)
                break
    relay.stop()
    await relay_task
    relay.detach()
    await consumer.stop()
    await producer.stop()
    await engine.dispose()
    q = statistics.quantiles(latencies, n=100)
    return {"events": n, "p50_ms": round(q[49], 1), "p95_ms": round(q[94], 1), "p99_ms": round(q[98], 1),
            "max_ms": round(max(latencies), 1)}


async def consumer_throughput(tmp: Path, n: int) -> dict:
    prefix, engine, sessions, producer = await setup(tmp, "consumer")
    futures = []
    for i in range(n):
        key, value, headers = to_kafka(Envelope(type="bench.v1", source="/bench", key=f"case-{i % 500}",
                                                data={"i": i}))
        futures.append(await producer.send(prefix + TOPIC, key=key, value=value, headers=headers))
    await asyncio.gather(*futures)

    async def handle(session, envelope):
        session.add(BenchRow(id=envelope.id))

    runner = ConsumerRunner(name="bench", group_id=prefix + "bench", topics=[prefix + TOPIC],
                            handlers={"bench.v1": handle}, session_factory=sessions, bootstrap_servers=BOOTSTRAP,
                            dlq_producer=producer, service_name="bench")
    task = asyncio.create_task(runner.run())
    while runner.records_seen == 0:
        await asyncio.sleep(0.01)
    started = time.perf_counter()  # from the first record: group join is not counted
    first = runner.records_seen
    while runner.records_seen < n:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    runner.stop()
    await task
    await producer.stop()
    await engine.dispose()
    return {"records": n - first, "seconds": round(elapsed, 2), "records_per_s": round((n - first) / elapsed)}


async def main() -> None:
    n = int(os.environ.get("BENCH_EVENTS", "5000"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        print("relay throughput:", await relay_throughput(tmp_path, n))
        print("commit-to-consumer latency:", await commit_to_consumer_latency(tmp_path, 300))
        print("consumer-runner throughput:", await consumer_throughput(tmp_path, n))


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
