"""What the operations CLI does, without the terminal: dead letters, redrive, replay and outbox status.

Redrive and replay are safe to repeat: every consumer deduplicates on the CloudEvents id in its
inbox (``processed_messages``), so an event handled once is never handled twice.
"""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from sqlalchemy import func
from sqlmodel import select

from enlace_platform.consumer import REDRIVE_FOR_HEADER
from enlace_platform.db import make_engine, make_read_session_factory
from enlace_platform.outbox import OutboxMessage
from enlace_platform.timeutil import age_seconds
from enlace_platform.topics import dlq

DLQ_PREFIX = "dlq_"
Progress = Callable[[int, int], None]  # (done, total)


@dataclass
class DeadLetter:
    partition: int
    offset: int
    key: str | None
    headers: dict[str, str]
    value: bytes

    @property
    def event_type(self) -> str | None:
        return self.headers.get("ce_type")

    @property
    def event_id(self) -> str | None:
        return self.headers.get("ce_id")

    def original_headers(self) -> list[tuple[str, bytes]]:
        return [(k, v.encode()) for k, v in self.headers.items() if not k.startswith(DLQ_PREFIX)]


def _text(raw: bytes | None) -> str:
    return (raw or b"").decode("utf-8", errors="replace")


async def _end_offsets(consumer: AIOKafkaConsumer, topic: str) -> dict[TopicPartition, int]:
    partitions = consumer.partitions_for_topic(topic)
    if partitions is None:
        await consumer._client.force_metadata_update()  # noqa: SLF001 - a fresh client has no metadata yet
        partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise LookupError(f"topic {topic!r} does not exist")
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    return await consumer.end_offsets(tps)


async def read_dead_letters(bootstrap: str, topic: str, *, progress: Progress | None = None,
                            client_options: dict | None = None) -> list[DeadLetter]:
    """Every record of ``<topic>.dlq``, oldest first per partition. Reads without a consumer group.
    ``client_options`` here and below: the broker's security (ServiceSettings.kafka_client_options())."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **(client_options or {}), enable_auto_commit=False,
                                group_id=None)
    await consumer.start()
    try:
        ends = await _end_offsets(consumer, dlq(topic))
        total = sum(ends.values())
        consumer.assign(list(ends))
        await consumer.seek_to_beginning(*ends)
        letters: list[DeadLetter] = []
        remaining = {tp: end for tp, end in ends.items() if end > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        continue
                    letters.append(DeadLetter(record.partition, record.offset, _text(record.key) or None,
                                              {k: _text(v) for k, v in record.headers}, record.value or b""))
                    if progress:
                        progress(len(letters), total)
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    del remaining[tp]
        return letters
    finally:
        await consumer.stop()


def _select(letters: list[DeadLetter], partition: int | None, offsets: list[int] | None) -> list[DeadLetter]:
    chosen = [d for d in letters if partition is None or d.partition == partition]
    if offsets:
        chosen = [d for d in chosen if d.offset in set(offsets)]
    return chosen


async def redrive(bootstrap: str, topic: str, *, partition: int | None = None, offsets: list[int] | None = None,
                  progress: Progress | None = None, client_options: dict | None = None) -> list[DeadLetter]:
    """Send dead letters back to the topic whose .dlq holds them, with their original headers (trace context
    included) and key; returns what was sent. Each send is acknowledged before the next."""
    chosen = _select(await read_dead_letters(bootstrap, topic, client_options=client_options), partition, offsets)
    # A dead letter goes back only to the topic whose .dlq holds it. Any reader of a topic may write its .dlq, so a
    # header naming another topic is no proof of origin: following it would let a service publish, through the
    # operator, to a topic it may not write. Nothing is sent while one such letter is among those chosen.
    misaddressed = [f"partition {d.partition} offset {d.offset} names {d.headers['dlq_original_topic']!r}"
                    for d in chosen if d.headers.get("dlq_original_topic", topic) != topic]
    if misaddressed:
        raise MisaddressedDeadLetter(f"not redriven: dead letter(s) of {dlq(topic)} that name another topic than "
                                     f"{topic} ({'; '.join(misaddressed)}); look at them with `dlq show`")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **(client_options or {}), enable_idempotence=True,
                                acks="all")
    await producer.start()
    try:
        for done, letter in enumerate(chosen, 1):
            headers = [(k, v) for k, v in letter.original_headers() if k != REDRIVE_FOR_HEADER]
            if letter.headers.get("dlq_consumer"):  # only the consumer that failed takes it again
                headers.append((REDRIVE_FOR_HEADER, letter.headers["dlq_consumer"].encode()))
            await (await producer.send(topic, value=letter.value,
                                       key=letter.key.encode() if letter.key else None, headers=headers))
            if progress:
                progress(done, len(chosen))
    finally:
        await producer.stop()
    return chosen


class MisaddressedDeadLetter(ValueError):
    """A dead letter whose dlq_original_topic header names another topic than the one whose .dlq holds it."""


@dataclass
class GroupPosition:
    committed: dict[TopicPartition, int] = field(default_factory=dict)
    end: dict[TopicPartition, int] = field(default_factory=dict)

    @property
    def lag(self) -> int:
        return sum(max(0, self.end[tp] - self.committed.get(tp, 0)) for tp in self.end)


async def group_position(bootstrap: str, group: str, topic: str, *,
                         client_options: dict | None = None) -> GroupPosition:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **(client_options or {}), group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await _end_offsets(consumer, topic)
        position = GroupPosition(end=ends)
        for tp in ends:
            committed = await consumer.committed(tp)
            if committed is not None:
                position.committed[tp] = committed
        return position
    finally:
        await consumer.stop()


async def rewind_group(bootstrap: str, group: str, topic: str, *, offset: int, partition: int | None = None,
                       client_options: dict | None = None) -> dict[TopicPartition, int]:
    """Move a consumer group's committed offsets on ``topic`` back to ``offset`` (clamped to each partition's
    end), so the service handles those records again the next time it joins.

    The broker accepts this only while the group has no active member: stop the service first.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **(client_options or {}), group_id=None,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await _end_offsets(consumer, topic)
    finally:
        await consumer.stop()
    targets = {tp: min(offset, end) for tp, end in ends.items() if partition is None or tp.partition == partition}
    if not targets:
        raise LookupError(f"topic {topic!r} has no partition {partition}")
    committer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **(client_options or {}), group_id=group,
                                 enable_auto_commit=False)
    await committer.start()
    try:
        committer.assign(list(targets))  # manual assignment: commits as a standalone member
        await committer.commit({tp: OffsetAndMetadata(off, "rewound by enlace-ops") for tp, off in targets.items()})
    finally:
        await committer.stop()
    return targets


async def wait_caught_up(bootstrap: str, group: str, topic: str, *, timeout_s: float,
                         progress: Progress | None = None, client_options: dict | None = None) -> GroupPosition:
    """Poll the group's committed offsets until it has handled everything present now."""
    start = await group_position(bootstrap, group, topic, client_options=client_options)
    behind = start.lag
    deadline = asyncio.get_running_loop().time() + timeout_s
    position = start
    while position.lag > 0 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.5)
        position = await group_position(bootstrap, group, topic, client_options=client_options)
        if progress:
            progress(behind - position.lag, behind)
    return position


@dataclass
class OutboxStatus:
    unsent: int
    oldest_unsent_at: datetime | None
    retrying: int
    by_topic: dict[str, int]
    last_errors: list[tuple[str, str, int, str, datetime | None]]  # (event id, type, attempts, error, next attempt)

    @property
    def oldest_age_s(self) -> float:
        return age_seconds(self.oldest_unsent_at)


async def outbox_status(database_url: str, *, errors: int = 5) -> OutboxStatus:
    engine = make_engine(database_url)
    try:
        # Read-only: on SQLite it never waits for the write lock of the running service.
        async with make_read_session_factory(engine, "enlace-ops")() as session:
            unsent_rows = OutboxMessage.sent_at.is_(None)
            count, oldest = (await session.exec(
                select(func.count(), func.min(OutboxMessage.created_at)).where(unsent_rows))).one()
            by_topic = dict((await session.exec(
                select(OutboxMessage.aggregatetype, func.count()).where(unsent_rows)
                .group_by(OutboxMessage.aggregatetype))).all())
            failing = (await session.exec(
                select(OutboxMessage).where(unsent_rows, OutboxMessage.attempts > 0)
                .order_by(OutboxMessage.created_at))).all()
            return OutboxStatus(
                unsent=count, oldest_unsent_at=oldest, retrying=len(failing), by_topic=by_topic,
                last_errors=[(r.id, r.type, r.attempts, r.last_error or "", r.next_attempt_at)
                             for r in failing[:errors]])
    finally:
        await engine.dispose()
