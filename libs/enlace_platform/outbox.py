"""Transactional outbox and its relay.

A handler adds an :class:`OutboxMessage` in the same transaction as its business change.
The relay publishes unsent rows with the idempotent producer (``acks=all``) and marks a row
sent only after the broker acknowledged it. A commit that carried outbox rows wakes the relay
at once; a slow fallback poll covers rows written by other replicas.

Columns follow Debezium's outbox event router (id, aggregatetype, aggregateid, type, payload)
so change-data capture can replace the relay later: ``aggregatetype`` holds the topic and
``aggregateid`` the case id, which is the record key.
"""

import asyncio
import itertools
import json
import logging
import random
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaProducer
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import Field, SQLModel, select
from sqlmodel.ext.asyncio.session import AsyncSession

from enlace_platform.db import CommitWaker
from enlace_platform.envelope import Envelope, to_kafka

log = logging.getLogger(__name__)
tracer = trace.get_tracer("enlace.outbox")

_sequence = itertools.count()
OUTBOX_FLAG = "outbox_pending"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class OutboxMessage(SQLModel, table=True):
    __tablename__ = "outbox"

    id: str = Field(primary_key=True, description="CloudEvents id; consumers deduplicate on it")
    aggregatetype: str = Field(index=True, description="Kafka topic, without the test prefix")
    aggregateid: str = Field(description="Case id: the record key")
    type: str = Field(description="Versioned event type, e.g. referral.requested.v1")
    payload: str = Field(description="JSON payload")
    subject: str | None = None
    source: str
    traceparent: str | None = None
    tracestate: str | None = None
    created_at: datetime = Field(default_factory=_utcnow, index=True)
    sequence: int = Field(default=0, description="Tie-break for rows created in the same microsecond")
    sent_at: datetime | None = Field(default=None, index=True)
    attempts: int = 0
    next_attempt_at: datetime | None = None
    last_error: str | None = None


def add_event(
    session: AsyncSession,
    *,
    topic: str,
    case_id: str,
    event_type: str,
    data: dict[str, Any],
    source: str,
    subject: str | None = None,
) -> OutboxMessage:
    """Stage an event in the caller's transaction, with the current trace context."""
    carrier: dict[str, str] = {}
    inject(carrier)
    row = OutboxMessage(
        id=str(uuid.uuid4()),
        aggregatetype=topic,
        aggregateid=case_id,
        type=event_type,
        payload=json.dumps(data, sort_keys=True, default=str),
        subject=subject,
        source=source,
        traceparent=carrier.get("traceparent"),
        tracestate=carrier.get("tracestate"),
        sequence=next(_sequence),
    )
    session.add(row)
    CommitWaker.mark(session, OUTBOX_FLAG)
    return row


def envelope_of(row: OutboxMessage) -> Envelope:
    trace_headers = {k: v for k, v in (("traceparent", row.traceparent), ("tracestate", row.tracestate)) if v}
    return Envelope(
        id=row.id,
        type=row.type,
        source=row.source,
        subject=row.subject,
        key=row.aggregateid,
        data=json.loads(row.payload),
        time=row.created_at,
        trace_headers=trace_headers,
    )


class OutboxRelay:
    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        producer: AIOKafkaProducer,
        *,
        topic_prefix: str = "",
        batch_size: int = 200,
        fallback_poll_s: float = 2.0,
        retry_base_s: float = 0.5,
        retry_max_s: float = 30.0,
    ) -> None:
        self._sessions = session_factory
        self._producer = producer
        self._prefix = topic_prefix
        self._batch_size = batch_size
        self._fallback_poll_s = fallback_poll_s
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._waker = CommitWaker(session_factory, OUTBOX_FLAG)
        self._stopping = False

    def wake(self) -> None:
        self._waker.wake()

    def detach(self) -> None:
        self._waker.detach()

    async def run(self) -> None:
        """Publish until stop() is called, then drain what is ready and return."""
        while True:
            try:
                while await self.publish_batch() >= self._batch_size:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:  # broker or database trouble: keep the relay alive and retry
                log.exception("outbox relay pass failed; retrying")
            if self._stopping:
                return
            await self._waker.wait(self._fallback_poll_s)

    def stop(self) -> None:
        self._stopping = True
        self._waker.wake()

    async def publish_batch(self) -> int:
        """Publish one batch of due rows; return how many rows were attempted."""
        async with self._sessions() as session:
            query = (
                select(OutboxMessage)
                .where(OutboxMessage.sent_at.is_(None))
                .order_by(OutboxMessage.created_at, OutboxMessage.sequence)
                .limit(self._batch_size)
                .with_for_update(skip_locked=True)  # PostgreSQL replicas split the work; SQLite ignores it
            )
            rows = list((await session.exec(query)).all())
            now = _utcnow()
            due, blocked_keys = [], set()
            held = await self._held_by_others(session, rows)
            for row in rows:
                # Keep per-case order: nothing of a case overtakes its earlier unsent event, ours or another relay's.
                if row.aggregateid in held and (row.created_at, row.sequence) > held[row.aggregateid]:
                    blocked_keys.add(row.aggregateid)
                if row.aggregateid in blocked_keys:
                    continue
                if row.next_attempt_at and row.next_attempt_at > now:
                    blocked_keys.add(row.aggregateid)
                    continue
                due.append(row)
            if not due:
                return 0
            results = await self._send(due)
            self._mark(due, results)
            await session.commit()
            return len(due)

    @staticmethod
    async def _held_by_others(session: AsyncSession, rows: list[OutboxMessage]) -> dict[str, tuple]:
        """Per case among ours, where its first unsent event that we did not get sits (another relay holds
        it: SKIP LOCKED passed it over). Our events of that case after it wait for a later pass."""
        if not rows or session.bind.dialect.name == "sqlite":
            return {}  # SQLite: relays take turns (BEGIN IMMEDIATE), so no row is ever skipped; save the read
        ours = {row.id for row in rows}
        unsent = (await session.exec(
            select(OutboxMessage.id, OutboxMessage.aggregateid, OutboxMessage.created_at, OutboxMessage.sequence)
            .where(OutboxMessage.sent_at.is_(None), OutboxMessage.aggregateid.in_({row.aggregateid for row in rows}))
        )).all()
        held: dict[str, tuple] = {}
        for row_id, key, created_at, sequence in unsent:
            if row_id not in ours:
                held[key] = min(held.get(key, (created_at, sequence)), (created_at, sequence))
        return held

    async def _send(self, rows: list[OutboxMessage]) -> list[BaseException | None]:
        futures, spans = [], []
        refused_keys: set[str] = set()
        for row in rows:
            if row.aggregateid in refused_keys:
                # An earlier event of this case was refused: sending this one would overtake it.
                futures.append(_failed(_HeldBack("an earlier event of the same case was not sent")))
                spans.append(None)
                continue
            topic = f"{self._prefix}{row.aggregatetype}"
            # The publish span continues the trace of the transaction that wrote the row.
            parent = extract({"traceparent": row.traceparent or "", "tracestate": row.tracestate or ""})
            span = tracer.start_span(
                f"{topic} publish",
                context=parent,
                kind=trace.SpanKind.PRODUCER,
                attributes={
                    "messaging.system": "kafka",
                    "messaging.operation.type": "send",
                    "messaging.destination.name": topic,
                    "messaging.message.id": row.id,
                    "cloudevents.event_type": row.type,
                },
            )
            spans.append(span)
            envelope = envelope_of(row)
            carrier: dict[str, str] = {}
            inject(carrier, context=trace.set_span_in_context(span))
            key, value, headers = to_kafka(replace(envelope, trace_headers=carrier))
            try:
                futures.append(await self._producer.send(topic, value=value, key=key, headers=headers))
            except Exception as exc:  # e.g. the producer cannot reach the broker at all
                refused_keys.add(row.aggregateid)
                futures.append(_failed(exc))
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        errors = [o if isinstance(o, BaseException) else None for o in outcomes]
        for span, error in zip(spans, errors, strict=True):
            if span is None:
                continue
            if error is not None:
                span.record_exception(error)
                span.set_status(trace.Status(trace.StatusCode.ERROR, type(error).__name__))
            span.end()
        return errors

    def _mark(self, rows: list[OutboxMessage], results: list[BaseException | None]) -> None:
        now = _utcnow()
        for row, error in zip(rows, results, strict=True):
            if isinstance(error, _HeldBack):
                row.next_attempt_at = None  # not attempted; goes out right after its predecessor
                continue
            row.attempts += 1
            if error is None:
                row.sent_at = now
                row.last_error = None
            else:
                delay = min(self._retry_max_s, self._retry_base_s * 2 ** min(row.attempts - 1, 32))
                row.next_attempt_at = now + timedelta(seconds=delay * random.uniform(0.5, 1.0))
                row.last_error = f"{type(error).__name__}: {error}"[:500]
                log.warning("outbox row %s not acked (%s); will retry", row.id, row.last_error)


class _HeldBack(Exception):
    """A row not attempted in this pass, to keep its case's events in order."""


async def _failed(exc: BaseException) -> None:
    raise exc
