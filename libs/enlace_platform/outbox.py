"""Transactional outbox and its relay.

A handler adds an :class:`OutboxMessage` in the same transaction as its business change. The relay
publishes unsent rows with the idempotent producer (``acks=all``) in three steps, so that no database
transaction is ever open while it waits on the broker:

1. **claim**: a short transaction takes a lease on the rows that are due (``claimed_by``,
   ``claimed_until``) and commits;
2. **send**: the rows go to the producer and the relay waits for the acks, for at most
   ``send_timeout_s``, with no transaction open;
3. **record**: a second short transaction marks the acked rows sent and gives each failed one
   ``attempts + 1``, ``last_error`` and a ``next_attempt_at`` with exponential backoff and jitter, only
   on the rows whose lease it still holds. While the broker answers, the same transaction claims the
   next due rows, so a busy relay runs one short transaction per pass.

A row is marked sent only after the broker acknowledged it. A commit that carried outbox rows wakes
the relay at once; a slow fallback poll covers rows written by other replicas.

Columns follow Debezium's outbox event router (id, aggregatetype, aggregateid, type, payload)
so change-data capture can replace the relay later: ``aggregatetype`` holds the topic and
``aggregateid`` the case id, which is the record key.
"""

import asyncio
import itertools
import json
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from sqlalchemy import or_
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import Field, SQLModel, col, select, update
from sqlmodel.ext.asyncio.session import AsyncSession

from enlace_platform.db import CommitWaker, insert_at_commit
from enlace_platform.producer import RenewableProducer, leaves_producer_unusable
from enlace_platform.envelope import Envelope, to_kafka

log = logging.getLogger(__name__)
tracer = trace.get_tracer("enlace.outbox")

_sequence = itertools.count()
OUTBOX_FLAG = "outbox_pending"
# After its drain, how long the relay takes at most to record the acks it got and release its other leases.
LET_GO_S = 0.8


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
    claimed_by: str | None = Field(default=None, description="The relay that holds the row while it sends it")
    claimed_until: datetime | None = Field(default=None, description="End of that relay's lease: after it, "
                                                                     "any relay may claim the row again")


_OUTBOX_TABLE = OutboxMessage.__table__


@dataclass(frozen=True, slots=True)
class StagedEvent:
    """An event :func:`add_event` staged: the values of its outbox row, which the transaction's commit inserts."""

    id: str
    aggregatetype: str
    aggregateid: str
    type: str


def add_event(
    session: AsyncSession,
    *,
    topic: str,
    case_id: str,
    event_type: str,
    data: dict[str, Any],
    source: str,
    subject: str | None = None,
) -> StagedEvent:
    """Stage an event in the caller's transaction, with the current trace context.

    The row is inserted by the commit, with the transaction's other events in one Core INSERT (an ORM object
    per event cost more CPU than the rest of the outbox's work)."""
    carrier: dict[str, str] = {}
    inject(carrier)
    event_id = str(uuid.uuid4())
    insert_at_commit(session, _OUTBOX_TABLE, dict(
        id=event_id,
        aggregatetype=topic,
        aggregateid=case_id,
        type=event_type,
        payload=json.dumps(data, sort_keys=True, default=str),
        subject=subject,
        source=source,
        traceparent=carrier.get("traceparent"),
        tracestate=carrier.get("tracestate"),
        created_at=_utcnow(),
        sequence=next(_sequence),
        sent_at=None,
        attempts=0,
        next_attempt_at=None,
        last_error=None,
        claimed_by=None,
        claimed_until=None,
    ))
    CommitWaker.mark(session, OUTBOX_FLAG)
    return StagedEvent(id=event_id, aggregatetype=topic, aggregateid=case_id, type=event_type)


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


# What became of one row in a pass: None when the broker acked it, else one of these or the send's error.
class _HeldBack(Exception):
    """Not attempted in this pass (its case's earlier event was not sent, or the broker did not answer):
    no attempt is counted and the lease is released."""


class _NoAck(TimeoutError):
    """Handed to the producer, but no ack within the send timeout. The producer keeps it and delivers it
    when the broker answers (the idempotent producer retries until then): the relay keeps the lease, waits
    for that delivery and never hands the row over a second time."""


def _is_outage(error: BaseException) -> bool:
    """An error that says the broker cannot be reached, as opposed to one about this event."""
    return isinstance(error, (TimeoutError, ConnectionError, KafkaTimeoutError)) or getattr(error, "retriable", False)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:500]


class OutboxRelay:
    """Publishes the outbox: claim, commit, send, record. See the module docstring and docs/eventing.md.

    Per-case order: nothing of a case goes out before an earlier unsent event of that case, whether that
    one is backing off, leased by another relay, or being claimed by one right now (PostgreSQL replicas
    claim with ``FOR UPDATE SKIP LOCKED``).

    While the broker does not answer, the rows handed to the producer stay there (never sent twice), each
    pass counts a failed attempt on them, no new rows go to the producer, and the relay pauses with
    exponential backoff between passes. It logs when the broker stops and starts answering, not per row.
    """

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        producer: AIOKafkaProducer,
        *,
        topic_prefix: str = "",
        batch_size: int = 200,
        fallback_poll_s: float = 2.0,
        retry_base_s: float = 0.5,
        retry_max_s: float = 10.0,
        send_timeout_s: float = 5.0,
        lease_s: float = 60.0,
        drain_timeout_s: float = 5.0,
        relay_id: str | None = None,
    ) -> None:
        if lease_s <= send_timeout_s:
            raise ValueError(f"the outbox lease ({lease_s}s) must outlast the send timeout ({send_timeout_s}s), "
                             "or a send still in progress could lose its rows to another relay")
        self._sessions = session_factory
        self._producer = producer
        self._prefix = topic_prefix
        self._batch_size = batch_size
        self._fallback_poll_s = fallback_poll_s
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._send_timeout_s = send_timeout_s
        self._lease = timedelta(seconds=lease_s)
        # A relay renews the leases of the rows the producer holds once per pass: pausing longer than
        # this between passes could let them lapse.
        self._max_pause_s = (lease_s - send_timeout_s) / 2
        self._drain_timeout_s = drain_timeout_s
        self.relay_id = relay_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._waker = CommitWaker(session_factory, OUTBOX_FLAG)
        self._resume = asyncio.Event()  # a delivery settled, or stop(): ends an outage pause early
        self._unacked: dict[str, asyncio.Future] = {}  # row id -> delivery the producer still owes
        self._claimed_ahead: list[OutboxMessage] = []  # claimed with the last pass's outcomes: the next to send
        self._outage_since: float | None = None
        self._outage_passes = 0
        self._stopping = False
        self._stop_by = float("inf")
        self._send_timer: asyncio.Timeout | None = None

    @property
    def broker_unreachable(self) -> bool:
        return self._outage_since is not None

    def wake(self) -> None:
        self._waker.wake()

    def detach(self) -> None:
        self._waker.detach()

    def stop(self, drain_timeout_s: float | None = None) -> None:
        """Ask run() to drain what it can for ``drain_timeout_s`` (default: the relay's), a pass in progress
        included, and return; it then takes up to LET_GO_S more to record the acks it got and let go of
        its other rows."""
        self._stopping = True
        drain_s = self._drain_timeout_s if drain_timeout_s is None else drain_timeout_s
        self._stop_by = time.monotonic() + drain_s
        if self._send_timer is not None and self._send_timer.when() is not None:
            # A send waiting for the producer (metadata, or room in its queue) waits no longer than the drain.
            until = asyncio.get_running_loop().time() + drain_s
            self._send_timer.reschedule(min(self._send_timer.when(), until))
        self._waker.wake()
        self._resume.set()

    async def run(self) -> None:
        """Publish until stop() is called, then drain what is ready and return. On the way out (also when
        cancelled) it records what the broker acked and releases its other leases, so that the next relay
        sends those rows at once."""
        failed_passes = 0
        try:
            while not self._stopping:
                try:
                    await self._publish_while_due()
                    if failed_passes:
                        log.warning("outbox relay: passes work again after %d failed", failed_passes)
                    failed_passes = 0
                except asyncio.CancelledError:
                    raise
                except Exception:  # the database, most likely: keep the relay alive and retry with backoff
                    failed_passes += 1
                    if failed_passes == 1:
                        log.exception("outbox relay pass failed; retrying with backoff")
                if self._stopping:
                    break
                if failed_passes or self.broker_unreachable:
                    await self._pause(self._backoff(max(failed_passes, self._outage_passes)),
                                      after_failure=failed_passes > 0)
                else:
                    await self._waker.wait(self._fallback_poll_s)
            await self._drain()
        finally:
            await self._let_go()

    async def _publish_while_due(self) -> None:
        while True:
            waited_on_producer = bool(self._unacked)
            await self.publish_batch()
            if self.broker_unreachable or self._stopping:
                return
            if not (waited_on_producer or self._claimed_ahead):
                return

    async def _drain(self) -> None:
        while time.monotonic() < self._stop_by:
            try:
                attempted = await self.publish_batch()
            except Exception:
                log.exception("outbox relay could not drain; the rows wait for the next start")
                return
            if not attempted or self.broker_unreachable:
                return

    async def _pause(self, delay_s: float, *, after_failure: bool = False) -> None:
        """Sleep between passes while the broker does not answer; a settled delivery or stop() ends it. After a
        failed pass (the database full or locked), deliveries settled before it do not: they are what the pass
        could not record, and retrying at once would spin."""
        self._resume.clear()
        if self._stopping or (not after_failure and any(f.done() for f in self._unacked.values())):
            return
        try:
            await asyncio.wait_for(self._resume.wait(), timeout=delay_s)
        except TimeoutError:
            pass

    def _backoff(self, attempts: int) -> float:
        delay = min(self._retry_max_s, self._retry_base_s * 2 ** min(max(attempts, 1) - 1, 32))
        return min(delay, self._max_pause_s) * random.uniform(0.5, 1.0)

    def _deadline(self, deadline: float | None) -> float:
        bound = min(time.monotonic() + self._send_timeout_s, self._stop_by)
        return bound if deadline is None else min(bound, deadline)

    async def publish_batch(self, *, deadline: float | None = None) -> int:
        """One pass: claim the due rows, send them, record the outcomes. Returns how many rows it sent (or
        waited on); rows held back to keep a case's order do not count.

        While the producer still owes deliveries from an earlier pass, a pass only waits for those
        (bounded) and records them: nothing new goes to a broker that does not answer."""
        generation = getattr(self._producer, "generation", 0)
        if self._unacked:
            ids = list(self._unacked)
            outcomes = await self._settle([self._unacked[i] for i in ids], self._deadline(deadline))
            await self._record(ids, outcomes)
            await self._renew_producer_if_unusable(outcomes, generation)
            return len(ids)
        rows, self._claimed_ahead = self._claimed_ahead or await self._claim(), []
        if not rows:
            return 0
        outcomes = await self._send(rows, self._deadline(deadline))
        unusable = any(leaves_producer_unusable(outcome) for outcome in outcomes)
        await self._record([row.id for row in rows], outcomes, claim_next=not unusable)
        await self._renew_producer_if_unusable(outcomes, generation)
        return sum(not isinstance(outcome, _HeldBack) for outcome in outcomes)

    async def _renew_producer_if_unusable(self, outcomes: list[BaseException | None], generation: int) -> None:
        """After a broker restart the idempotent producer can fail every send for good (enlace_platform.producer):
        swap in a new one; the rows it failed are due again. Only a RenewableProducer can be swapped."""
        error = next((outcome for outcome in outcomes if leaves_producer_unusable(outcome)), None)
        if error is None or not isinstance(self._producer, RenewableProducer):
            return
        try:
            await self._producer.renew(generation, error)
        except Exception as exc:  # the broker went away again: the next failure tries again
            log.warning("outbox relay could not replace the Kafka producer yet: %s", _describe(exc))

    async def _claim(self) -> list[OutboxMessage]:
        """Short transaction: lease the due rows."""
        async with self._sessions() as session:
            rows = await self._claim_in(session, _utcnow())
            if rows:
                await session.commit()
        return rows

    async def _claim_in(self, session: AsyncSession, now: datetime) -> list[OutboxMessage]:
        """Lease the due rows that keep their cases in order, oldest first, in the caller's transaction."""
        conditions = [col(OutboxMessage.sent_at).is_(None)]
        skips_rows = session.bind.dialect.name != "sqlite"
        if skips_rows:
            # PostgreSQL: leave out what another relay holds or what backs off, so replicas take different
            # rows; SKIP LOCKED also leaves out rows another relay is claiming right now.
            conditions += [
                or_(col(OutboxMessage.next_attempt_at).is_(None), col(OutboxMessage.next_attempt_at) <= now),
                or_(col(OutboxMessage.claimed_until).is_(None), col(OutboxMessage.claimed_until) < now,
                    col(OutboxMessage.claimed_by) == self.relay_id),
            ]
        candidates = list((await session.exec(
            select(OutboxMessage).where(*conditions)
            .order_by(col(OutboxMessage.created_at), col(OutboxMessage.sequence))
            .limit(self._batch_size)
            .with_for_update(skip_locked=True)  # SQLite ignores it: relays take turns there (BEGIN IMMEDIATE)
        )).all())
        if not candidates:
            return []
        # On SQLite nothing was left out, so the batch holds each of its cases' earliest unsent events:
        # no need to look for them elsewhere.
        earliest_elsewhere = await self._earliest_unsent_elsewhere(session, candidates) if skips_rows else {}
        rows, blocked = [], set()
        for row in candidates:
            # Per-case order: nothing of a case overtakes an earlier unsent event of it that is backing off,
            # leased by another relay, or being claimed by one right now.
            held = earliest_elsewhere.get(row.aggregateid)
            if (row.aggregateid in blocked or (held is not None and held < (row.created_at, row.sequence))
                    or self._waits(row, now)):
                blocked.add(row.aggregateid)
                continue
            rows.append(row)
        if rows:
            until = now + self._lease
            await session.exec(
                update(OutboxMessage).where(col(OutboxMessage.id).in_([row.id for row in rows]))
                .values(claimed_by=self.relay_id, claimed_until=until)
                .execution_options(synchronize_session=False))
            session.expunge_all()  # the copies in hand say what the database does, without a flush
            for row in rows:
                row.claimed_by, row.claimed_until = self.relay_id, until
        return rows

    def _waits(self, row: OutboxMessage, now: datetime) -> bool:
        """Backing off, or leased by another relay."""
        backing_off = row.next_attempt_at is not None and row.next_attempt_at > now
        leased = (row.claimed_by not in (None, self.relay_id)
                  and row.claimed_until is not None and row.claimed_until >= now)
        return backing_off or leased

    @staticmethod
    async def _earliest_unsent_elsewhere(session: AsyncSession, candidates: list[OutboxMessage]) -> dict[str, tuple]:
        """Per case among the candidates, where its first unsent event outside the candidates sits."""
        ours = {row.id for row in candidates}
        unsent = (await session.exec(
            select(OutboxMessage.id, OutboxMessage.aggregateid, OutboxMessage.created_at, OutboxMessage.sequence)
            .where(col(OutboxMessage.sent_at).is_(None),
                   col(OutboxMessage.aggregateid).in_({row.aggregateid for row in candidates}))
        )).all()
        earliest: dict[str, tuple] = {}
        for row_id, key, created_at, sequence in unsent:
            if row_id not in ours:
                earliest[key] = min(earliest.get(key, (created_at, sequence)), (created_at, sequence))
        return earliest

    async def _send(self, rows: list[OutboxMessage], deadline: float) -> list[BaseException | None]:
        """No transaction open: hand the rows to the producer in order and wait for the acks until the deadline."""
        outcomes: list[BaseException | None] = [None] * len(rows)
        sent: dict[int, tuple[asyncio.Future, Any]] = {}
        refused_keys: set[str] = set()
        unreachable: BaseException | None = None
        for index, row in enumerate(rows):
            if unreachable is not None or time.monotonic() >= min(deadline, self._stop_by):
                outcomes[index] = _HeldBack("not attempted: the broker did not answer in this pass")
                continue
            if row.aggregateid in refused_keys:
                # An earlier event of this case was refused: sending this one would overtake it.
                outcomes[index] = _HeldBack("an earlier event of the same case was not sent")
                continue
            span = self._publish_span(row)
            carrier: dict[str, str] = {}
            inject(carrier, context=trace.set_span_in_context(span))
            key, value, headers = to_kafka(replace(envelope_of(row), trace_headers=carrier))
            topic = f"{self._prefix}{row.aggregatetype}"
            try:
                # Blocks only while the producer waits for metadata or room in its queue: the broker is away.
                async with asyncio.timeout(min(deadline, self._stop_by) - time.monotonic()) as self._send_timer:
                    future = await self._producer.send(topic, value=value, key=key, headers=headers)
            except asyncio.CancelledError:
                span.end()
                raise
            except Exception as exc:
                if isinstance(exc, TimeoutError):
                    exc = _NoAck(f"the producer did not take the event within {self._send_timeout_s:g}s")
                refused_keys.add(row.aggregateid)
                outcomes[index] = exc
                _end_span(span, exc)
                if _is_outage(exc):
                    unreachable = exc
                continue
            finally:
                self._send_timer = None
            self._unacked[row.id] = future
            future.add_done_callback(self._delivery_settled)
            sent[index] = (future, span)
        settled = await self._settle([future for future, _ in sent.values()], deadline)
        for (index, (_, span)), outcome in zip(sent.items(), settled, strict=True):
            outcomes[index] = outcome
            _end_span(span, outcome)
        return outcomes

    async def _settle(self, futures: Sequence[asyncio.Future], deadline: float) -> list[BaseException | None]:
        """Wait for these deliveries until the deadline (which stop() can bring forward); say how each went."""
        pending = {future for future in futures if not future.done()}
        while pending:
            remaining = min(deadline, self._stop_by) - time.monotonic()
            if remaining <= 0:
                break
            _, pending = await asyncio.wait(pending, timeout=min(remaining, 0.5))
        return [self._outcome(future) for future in futures]

    def _outcome(self, future: asyncio.Future) -> BaseException | None:
        if not future.done():
            return _NoAck(f"no ack within {self._send_timeout_s:g}s; the producer keeps the event until the "
                          "broker answers")
        if future.cancelled():
            return _HeldBack("the send was cancelled")
        return future.exception()

    def _delivery_settled(self, _future: asyncio.Future) -> None:
        self._resume.set()

    def _publish_span(self, row: OutboxMessage):
        topic = f"{self._prefix}{row.aggregatetype}"
        # The publish span continues the trace of the transaction that wrote the row.
        parent = extract({"traceparent": row.traceparent or "", "tracestate": row.tracestate or ""})
        return tracer.start_span(
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

    def _track_broker(self, outcomes: list[BaseException | None]) -> bool:
        """Note whether the broker answers; log only when that changes. True when it just came back."""
        trouble = next((o for o in outcomes if o is not None and not isinstance(o, _HeldBack) and _is_outage(o)),
                       None)
        if trouble is not None:
            self._outage_passes += 1
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                log.warning("outbox relay: the broker does not answer (%s); events wait in the outbox and are "
                            "retried with backoff", _describe(trouble))
            return False
        if self._outage_since is not None and any(o is None for o in outcomes):
            log.warning("outbox relay: the broker answers again after %.0fs; sending the backlog",
                        time.monotonic() - self._outage_since)
            self._outage_since, self._outage_passes = None, 0
            return True
        return False

    async def _record(self, ids: list[str], outcomes: list[BaseException | None], *, claim_next: bool = False) -> None:
        """Short transaction: the outcomes, on the rows this relay still holds. With ``claim_next``, while the
        broker answers, the same transaction claims the next due rows (one transaction per pass under load)."""
        came_back = self._track_broker(outcomes)
        by_id = dict(zip(ids, outcomes, strict=True))
        now = _utcnow()
        acked = [row_id for row_id, outcome in by_id.items() if outcome is None]
        others = [row_id for row_id, outcome in by_id.items() if outcome is not None]
        held = set()
        async with self._sessions() as session:
            if acked:  # the usual case, in one statement
                await session.exec(
                    update(OutboxMessage)
                    .where(col(OutboxMessage.id).in_(acked), col(OutboxMessage.sent_at).is_(None),
                           col(OutboxMessage.claimed_by) == self.relay_id)
                    .values(sent_at=now, attempts=col(OutboxMessage.attempts) + 1, last_error=None, claimed_by=None,
                            claimed_until=None)
                    .execution_options(synchronize_session=False))
            if others:
                rows = (await session.exec(
                    select(OutboxMessage)
                    .where(col(OutboxMessage.id).in_(others), col(OutboxMessage.sent_at).is_(None),
                           col(OutboxMessage.claimed_by) == self.relay_id)
                    .with_for_update()
                )).all()
                for row in rows:
                    held.add(row.id)
                    self._apply(row, by_id[row.id], now)
                session.add_all(rows)
            if came_back:
                # The backoff was about the broker, which answers again: whatever waited on it is due now.
                await session.exec(
                    update(OutboxMessage)
                    .where(col(OutboxMessage.sent_at).is_(None), col(OutboxMessage.next_attempt_at).is_not(None),
                           col(OutboxMessage.id).not_in(ids))
                    .values(next_attempt_at=None)
                    .execution_options(synchronize_session=False))
            if claim_next and not self.broker_unreachable and time.monotonic() < self._stop_by:
                await session.flush()
                self._claimed_ahead = await self._claim_in(session, now)
            await session.commit()
        for row_id, outcome in by_id.items():
            if not isinstance(outcome, _NoAck) or row_id not in held:
                self._unacked.pop(row_id, None)  # settled, or another relay holds the row now

    def _apply(self, row: OutboxMessage, outcome: BaseException, now: datetime) -> None:
        """A row's outcome other than an ack."""
        if isinstance(outcome, _HeldBack):
            row.claimed_by = row.claimed_until = None
            return
        row.attempts += 1
        # The producer that failed it is replaced before the next pass: the row is due again at once.
        delay = 0.0 if leaves_producer_unusable(outcome) else self._backoff(row.attempts)
        row.next_attempt_at = now + timedelta(seconds=delay)
        row.last_error = _describe(outcome)
        if isinstance(outcome, _NoAck) and row.id in self._unacked:
            row.claimed_until = now + self._lease  # the producer still holds it: keep it from other relays
        else:
            row.claimed_by = row.claimed_until = None
        # An outage is logged once by _track_broker, a replaced producer once by its renewal; else it is this event.
        if not _is_outage(outcome) and not leaves_producer_unusable(outcome):
            log.warning("outbox event %s (%s) not published: %s; attempt %d, next in %.1fs",
                        row.id, row.type, row.last_error, row.attempts, delay)

    async def _let_go(self) -> None:
        """Leaving: mark what the broker acked, release the other leases (bounded; else they lapse)."""
        try:
            await asyncio.wait_for(self._release_leases(), timeout=LET_GO_S)
        except Exception as exc:
            log.warning("outbox relay could not release its leases (%s); they lapse in %.0fs",
                        _describe(exc), self._lease.total_seconds())
        self._unacked.clear()
        self._claimed_ahead = []

    async def _release_leases(self) -> None:
        now = _utcnow()
        async with self._sessions() as session:
            rows = (await session.exec(
                select(OutboxMessage)
                .where(col(OutboxMessage.claimed_by) == self.relay_id, col(OutboxMessage.sent_at).is_(None))
                .with_for_update()
            )).all()
            if not rows:
                return
            for row in rows:
                delivery = self._unacked.get(row.id)
                if delivery is not None and delivery.done() and not delivery.cancelled() and not delivery.exception():
                    row.attempts += 1
                    row.sent_at = now
                    row.last_error = None
                row.claimed_by = row.claimed_until = None
            session.add_all(rows)
            await session.commit()


def _end_span(span, error: BaseException | None) -> None:
    if error is not None:
        span.record_exception(error)
        span.set_status(trace.Status(trace.StatusCode.ERROR, type(error).__name__))
    span.end()
