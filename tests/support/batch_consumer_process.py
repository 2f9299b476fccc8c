"""A consumer process of its own, for tests that kill it: ``python -m tests.support.batch_consumer_process
DATABASE BOOTSTRAP PREFIX BATCH_SIZE``.

Its handler's effect is deliberately not idempotent (a counter bumped and a line appended per event), so
only the runner's inbox and its one transaction per batch keep it exactly-once. The handler is slow and
prints ``handling <event id>`` before working, so a test can kill the process in the middle of a batch.
Ends on SIGTERM (the runner's graceful stop).
"""

import asyncio
import signal
import sys
from pathlib import Path

from aiokafka import AIOKafkaProducer
from sqlalchemy import update
from sqlmodel import Field, SQLModel

from enlace_platform.consumer import ConsumerRunner
from enlace_platform.db import create_tables, make_engine, make_session_factory
from enlace_platform.envelope import Envelope
from enlace_platform.migrations import service_tables

EVENT_TYPE = "tally.bumped.v1"
CONSUMER = "test.tally"
TOPIC = "intake.case"


class Counter(SQLModel, table=True):
    __tablename__ = "test_batch_counter"
    name: str = Field(primary_key=True)
    value: int


class EffectLine(SQLModel, table=True):
    __tablename__ = "test_batch_effect"
    seq: int | None = Field(default=None, primary_key=True)  # the order effects were written in
    event_id: str  # not unique on purpose: a second effect of one event would show


async def bump(session, envelope: Envelope) -> None:
    print(f"handling {envelope.id}", flush=True)
    await asyncio.sleep(0.02)  # slow enough to be killed in the middle of a batch
    await session.exec(update(Counter).where(Counter.name == "events").values(value=Counter.value + 1))
    session.add(EffectLine(event_id=envelope.id))


async def main(database: Path, bootstrap: str, prefix: str, batch_size: int) -> None:
    engine = make_engine(f"sqlite+aiosqlite:///{database}")
    await create_tables(engine, service_tables([Counter.__table__, EffectLine.__table__]))
    sessions = make_session_factory(engine, "batchprocess")
    async with sessions() as session:
        if await session.get(Counter, "events") is None:
            session.add(Counter(name="events", value=0))
            await session.commit()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    runner = ConsumerRunner(name=CONSUMER, group_id=prefix + "tally", topics=[prefix + TOPIC],
                            handlers={EVENT_TYPE: bump}, session_factory=sessions, bootstrap_servers=bootstrap,
                            dlq_producer=producer, service_name="test-batch", batch_size=batch_size)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, runner.stop)
    try:
        print("started", flush=True)
        await runner.run()
    finally:
        await producer.stop()
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])))
