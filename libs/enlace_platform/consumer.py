"""Consumer runner: idempotent handling in batches, manual commits, faults told from poison.

A poll's records of one partition are handled in one transaction: one ``processed_messages``
lookup for all of them, each handler in turn, their inbox rows, one commit, then the offsets.
Each handler continues its producer's trace. Before that transaction:

- a malformed record, one that breaks its published contract, or one of an unknown type or version
  is poison: it goes to ``<topic>.dlq`` at once with its reason, and the partition moves on;
- a known event type that is simply not for this consumer is skipped (and counted).

When a handler fails inside a batch, the transaction is rolled back: the records before it go
again together, the failing one alone, then the rest. A handler's :class:`PoisonMessage` is
dead-lettered at once. A transient fault (database locked, full or unreachable, broker gone, a
timeout: :func:`is_transient`) pauses the partition and keeps its unfinished records in memory;
they are tried again with capped, jittered backoff for as long as the fault lasts, never
dead-lettered, while polling goes on so the member stays in its group. Any other exception is
taken for a bug: ``max_attempts`` tries with backoff, then the dead-letter topic.

Handlers never commit: work that must follow the commit is registered with :func:`after_commit`.
"""

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Collection
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import IllegalStateError, KafkaError, KafkaTimeoutError
from opentelemetry import trace
from opentelemetry.propagate import extract
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from enlace_platform.producer import RenewableProducer, leaves_producer_unusable
from enlace_platform.db import causes, database_fault, insert_at_commit
from enlace_platform.envelope import Envelope, MalformedEvent, from_kafka
from enlace_platform.inbox import ProcessedMessage
from enlace_platform.telemetry import current_event_id
from enlace_platform.topics import dlq

if TYPE_CHECKING:
    from enlace_platform.metrics import ServiceMetrics

log = logging.getLogger(__name__)
tracer = trace.get_tracer("enlace.consumer")

Handler = Callable[[AsyncSession, Envelope], Awaitable[None]]
AfterCommit = Callable[[], Awaitable[object]]
T = TypeVar("T")

_AFTER_COMMIT = "enlace.consumer.after_commit"
# A commit while running may take a loaded broker's time (stop() cuts it short); the last one, on shutdown,
# gets commit_timeout_s. One not done is tried again, or its records are redelivered and skipped by the inbox.
RUNNING_COMMIT_TIMEOUT_S = 10.0
_VERSIONED = re.compile(r"^(?P<name>.+)\.v\d+$")
_INBOX_TABLE = ProcessedMessage.__table__
# Set by a redrive (enlace-ops dlq redrive) to the consumer whose dead letter it was: the topic's other
# consumers handled their copy, or dead-lettered it themselves and get a redrive of their own.
REDRIVE_FOR_HEADER = "enlace_redrive_for"


class PoisonMessage(Exception):
    """Raised by a handler for an event it can never process (e.g. a payload that breaks its contract)."""


class UnknownEventType(PoisonMessage):
    """A type or version this consumer has no handler for, and no published contract lets it ignore."""


def after_commit(session: AsyncSession, callback: AfterCommit, *, key: str | None = None) -> None:
    """Have the consumer runner await ``callback()`` once the handler's transaction has committed (handlers
    never commit themselves). With a ``key``, a batch runs one callback per key (e.g. one purge for several
    erasures). Nothing runs if the transaction rolls back; a failing callback is logged, not retried."""
    callbacks: dict = session.info.setdefault(_AFTER_COMMIT, {})
    callbacks.setdefault(key if key is not None else object(), callback)


async def run_after_commit(session: AsyncSession) -> None:
    """Runs, once, what the handlers registered with :func:`after_commit`; for whoever committed their
    transaction (the runner, or a test calling a handler itself)."""
    for callback in list(session.info.pop(_AFTER_COMMIT, {}).values()):
        try:
            await callback()
        except Exception:
            log.exception("an after-commit callback failed")


def is_transient(exc: BaseException) -> bool:
    """A fault outside the record, which waiting can cure: the database locked, full or unreachable, the
    broker gone, a timeout. Looks through the exception's causes (SQLAlchemy wraps the driver's error)."""
    if isinstance(exc, PoisonMessage):
        return False
    for error in causes(exc):
        if isinstance(error, (TimeoutError, OSError, KafkaTimeoutError, httpx.TimeoutException, httpx.NetworkError)):
            return True
        if isinstance(error, KafkaError) and error.retriable:
            return True
    # The database locked, full or unreachable (enlace_platform.db tells it, for the APIs too).
    return database_fault(exc) is not None


def _fault_name(exc: BaseException) -> str:
    """Class and driver code only: an exception's text can quote SQL or payload values."""
    for error in causes(exc):
        code = getattr(error, "sqlite_errorname", None) or getattr(error, "sqlstate", None)
        if code:
            return f"{type(exc).__name__} ({code})"
    return type(exc).__name__


def _safe_message(exc: BaseException) -> str:
    """Our own errors describe the record's shape; any other text may quote payload values
    (personal data), so the DLQ gets only the trace id that finds the full error in the logs."""
    if isinstance(exc, (MalformedEvent, PoisonMessage)):
        return str(exc)[:1000]
    ctx = trace.get_current_span().get_span_context()
    trace_id = format(ctx.trace_id, "032x") if ctx.is_valid else "unknown"
    return f"{type(exc).__name__}: see the service log for trace {trace_id}"


@dataclass
class _Item:
    """One record, parsed and classified before any transaction."""

    record: ConsumerRecord
    envelope: Envelope | None = None
    handler: Handler | None = None
    poison: Exception | None = None  # dead-letter at once; neither handler nor poison: skip
    redriven_for_another: bool = False
    seconds: float = 0.0  # handling time so far, retries included


@dataclass
class _Backlog:
    """A partition's records not yet finished, kept in memory while a fault lasts (the partition is paused)."""

    items: list[_Item] = field(default_factory=list)
    faults: int = 0  # consecutive transient faults
    retry_at: float = 0.0  # event-loop time


class _HandlerFailed(Exception):
    def __init__(self, index: int, cause: Exception) -> None:
        super().__init__(index, cause)
        self.index, self.cause = index, cause


class _Fault(Exception):
    """A transient fault: the partition holds its unfinished records and tries again later."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(cause)
        self.cause = cause


class NoAnswer(TimeoutError):
    """A wait on the broker that did not finish: no answer in time, stop() came, or aiokafka cut it short."""


class _RebalanceListener(ConsumerRebalanceListener):
    def __init__(self, runner: "ConsumerRunner") -> None:
        self._runner = runner

    async def on_partitions_revoked(self, revoked) -> None:
        # Hand over cleanly: the batch in hand finishes, its offsets are committed, and the records held for
        # a fault are dropped (the next owner gets them again from the committed offset).
        await self._runner.revoke(set(revoked))

    async def on_partitions_assigned(self, assigned) -> None:
        log.info("consumer %s assigned %s", self._runner.name, sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))


class ConsumerRunner:
    def __init__(
        self,
        *,
        name: str,
        group_id: str,
        topics: list[str],
        handlers: dict[str, Handler],
        session_factory: async_sessionmaker[AsyncSession],
        bootstrap_servers: str,
        dlq_producer: AIOKafkaProducer,
        client_options: dict | None = None,
        service_name: str,
        max_attempts: int = 3,
        retry_base_s: float = 0.2,
        metrics: "ServiceMetrics | None" = None,
        validate: Callable[[str, dict], None] | None = None,
        known_event_types: Collection[str] = (),
        batch_size: int = 100,
        fault_retry_base_s: float = 0.5,
        fault_retry_max_s: float = 30.0,
        commit_timeout_s: float = 1.5,
        close_timeout_s: float = 1.5,
        dlq_timeout_s: float = 5.0,
        poll_timeout_s: float = 0.3,
    ) -> None:
        """``known_event_types``: the published contracts; one of them without a handler here is skipped.
        Any other type without a handler, or another version of a type handled here, is dead-lettered.
        ``client_options``: the broker's security (ServiceSettings.kafka_client_options()), for the consumer."""
        self.name = name
        self._metrics = metrics
        self._validate = validate  # raises PoisonMessage for a payload that breaks its contract
        self._group_id = group_id
        self._topics = topics
        self._handlers = handlers
        self._handled_names = {_event_name(t) for t in handlers}
        self._known_types = frozenset(known_event_types)
        self._sessions = session_factory
        self._bootstrap = bootstrap_servers
        self._client_options = dict(client_options or {})
        self._dlq_producer = dlq_producer
        self._service = service_name
        self._max_attempts = max_attempts
        self._retry_base_s = retry_base_s
        self._batch_size = batch_size
        self._fault_retry_base_s = fault_retry_base_s
        self._fault_retry_max_s = fault_retry_max_s
        self._commit_timeout_s = commit_timeout_s
        self._close_timeout_s = close_timeout_s
        self._dlq_timeout_s = dlq_timeout_s
        self._poll_timeout_s = poll_timeout_s
        self._consumer: AIOKafkaConsumer | None = None
        self._pending: dict[TopicPartition, int] = {}  # offsets finished, not yet committed
        self._backlog: dict[TopicPartition, _Backlog] = {}
        self._work_lock = asyncio.Lock()  # the poll loop's work and a rebalance never interleave
        self._stopping = False
        self._stopped = asyncio.Event()
        self.ready = asyncio.Event()  # set once partitions are assigned
        self.records_seen = 0  # records finished (handled, skipped as duplicate or not ours, or dead-lettered)

    def stop(self) -> None:
        """Finish the batch in hand, commit, and leave the group, within bounded time."""
        self._stopping = True
        self._stopped.set()

    async def lag(self) -> dict[tuple[str, int], int]:
        """Per assigned partition: records between our position and the last fetched high watermark, plus
        the ones held in memory while a fault lasts."""
        consumer = self._consumer
        if consumer is None:
            return {}
        lags = {}
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is not None:  # known only after a fetch, so a position exists too
                held = len(self._backlog[tp].items) if tp in self._backlog else 0
                lags[(tp.topic, tp.partition)] = max(0, highwater - await consumer.position(tp)) + held
        return lags

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            **self._client_options,
            group_id=self._group_id,
            client_id=f"{self._service}-{self.name}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self._batch_size,
        )
        consumer.subscribe(self._topics, listener=_RebalanceListener(self))
        try:
            await consumer.start()
        except BaseException:
            await self._stop_consumer(consumer)  # its client is open all the same
            raise
        self._consumer = consumer
        try:
            while not self._stopping:
                # Polling goes on while partitions are paused: the member stays in its group.
                fetched = await consumer.getmany(timeout_ms=self._poll_timeout_ms(), max_records=self._batch_size)
                if consumer.assignment():
                    self.ready.set()
                async with self._work_lock:
                    assigned = consumer.assignment()
                    for tp, records in fetched.items():
                        if tp in assigned:  # revoked while the poll returned: the next owner has them
                            self._backlog.setdefault(tp, _Backlog()).items.extend(map(self._prepare, records))
                    await self._work_through_due_partitions()
                    await self._commit(None, RUNNING_COMMIT_TIMEOUT_S)
        finally:
            await self._close(consumer)

    def _poll_timeout_ms(self) -> int:
        timeout = self._poll_timeout_s
        if self._backlog:
            now = asyncio.get_running_loop().time()
            timeout = min(timeout, max(0.0, min(b.retry_at for b in self._backlog.values()) - now))
        return int(timeout * 1000)

    async def _close(self, consumer: AIOKafkaConsumer) -> None:
        """Bounded even when the broker is unreachable: offsets not committed now are redelivered later (and
        found in the inbox), records held for a fault are simply fetched again."""
        try:
            await self._commit(None, self._commit_timeout_s)
        finally:
            self._consumer = None
            self._backlog.clear()
            self._pending.clear()
            self._count_paused(0)
            await self._stop_consumer(consumer)

    async def _stop_consumer(self, consumer: AIOKafkaConsumer) -> None:
        try:
            await self._bounded(consumer.stop(), self._close_timeout_s)
        except NoAnswer as exc:
            log.warning("consumer %s did not leave its group cleanly (%s; broker unreachable?); the group's "
                        "session timeout hands its partitions over", self.name, exc)
            # Its stop() ended half way: close its connections, or its metadata task goes on calling the broker.
            client = getattr(consumer, "_client", None)
            if client is not None:
                try:
                    await self._bounded(client.close(), 0.5)  # local work: closing sockets, ending its tasks
                except Exception:
                    log.warning("consumer %s: its Kafka client did not close either", self.name)

    async def revoke(self, partitions: set[TopicPartition]) -> None:
        async with self._work_lock:
            await self._commit(partitions, RUNNING_COMMIT_TIMEOUT_S)
            for tp in partitions:
                self._backlog.pop(tp, None)
                self._pending.pop(tp, None)
            self._count_paused()

    async def _commit(self, partitions: set[TopicPartition] | None, timeout_s: float) -> None:
        consumer = self._consumer
        offsets = {tp: off for tp, off in self._pending.items() if partitions is None or tp in partitions}
        if consumer is None or not offsets:
            return
        try:
            await self._bounded(consumer.commit(offsets), timeout_s)
        except IllegalStateError as exc:
            # Not ours any more: the next owner starts from the last committed offset, and the inbox skips
            # what we finished since.
            log.warning("consumer %s: offsets of revoked partitions not committed (%s)", self.name, type(exc).__name__)
        except (TimeoutError, KafkaError) as exc:  # also a rebalance under way: the revoke listener tries again
            log.warning("consumer %s: offsets not committed (%s); trying again later", self.name, _fault_name(exc))
            return
        for tp, offset in offsets.items():
            if self._pending.get(tp) == offset:
                del self._pending[tp]

    async def _bounded(self, work: Awaitable[T], timeout_s: float) -> T:
        """Awaits ``work`` for at most ``timeout_s``, cut short by a stop() that arrives meanwhile (one already
        under way lets it have its time); raises NoAnswer then. What it awaited may still complete."""
        task = asyncio.ensure_future(work)
        waits = {task} if self._stopping else {task, asyncio.ensure_future(self._stopped.wait())}
        try:
            await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            for waiting in waits - {task}:
                waiting.cancel()
        if not task.done():
            task.cancel()
            raise NoAnswer(f"no answer in {timeout_s:.1f}s")
        if task.cancelled():  # aiokafka cancels its own tasks when it closes, and can leak that cancellation
            raise NoAnswer("cancelled inside")
        return task.result()

    # --- classifying ------------------------------------------------------------------------------------

    def _prepare(self, record: ConsumerRecord) -> _Item:
        """Parse and classify a record, before any transaction: handle, skip, or dead-letter at once."""
        item = _Item(record)
        try:
            item.envelope = envelope = from_kafka(record.key, record.value, record.headers)
        except MalformedEvent as exc:
            log.warning("malformed record at %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc)
            item.poison = exc
            return item
        addressee = dict(record.headers or ()).get(REDRIVE_FOR_HEADER)
        if addressee is not None and addressee.decode("utf-8", "replace") != self.name:
            item.redriven_for_another = True
            return item
        item.handler = self._handlers.get(envelope.type)
        if item.handler is None:
            if envelope.type not in self._known_types or _event_name(envelope.type) in self._handled_names:
                item.poison = UnknownEventType(
                    f"unknown event type or version {envelope.type[:200]!r}: consumer {self.name} handles "
                    f"{', '.join(sorted(self._handlers)) or 'nothing'}; redrive once a handler for it is deployed")
            # else: a published event of another kind, for other consumers on this topic
            return item
        if self._validate is not None:
            try:
                self._validate(envelope.type, envelope.data)
            except PoisonMessage as exc:
                item.handler, item.poison = None, exc
        return item

    # --- working through partitions ------------------------------------------------------------------------

    async def _work_through_due_partitions(self) -> None:
        now = asyncio.get_running_loop().time()
        for tp, backlog in list(self._backlog.items()):
            if self._stopping:
                return
            if backlog.retry_at > now:
                continue
            try:
                await self._work_through(tp, backlog)
            except _Fault as fault:
                self._hold(tp, backlog, fault.cause)
                continue
            if not backlog.items:
                self._backlog.pop(tp, None)
                if backlog.faults:
                    log.info("consumer %s: %s[%d] recovered after %d fault(s); resuming", self.name, tp.topic,
                             tp.partition, backlog.faults)
                if self._consumer is not None and tp in self._consumer.paused():
                    self._consumer.resume(tp)
                self._count_paused()

    async def _process(self, record: ConsumerRecord) -> None:
        """One record on its own (offset noted, not committed)."""
        tp = TopicPartition(record.topic, record.partition)
        await self._work_through(tp, _Backlog([self._prepare(record)]))

    async def _work_through(self, tp: TopicPartition, backlog: _Backlog) -> None:
        """Finishes the backlog's records in order, removing each when done; raises _Fault on a transient fault
        (the rest stays). Runs of handled records share a transaction."""
        items = backlog.items
        while items and not self._stopping:
            head = items[0]
            if head.handler is not None:
                run = 1
                while run < len(items) and items[run].handler is not None:
                    run += 1
                await self._handle_together(tp, items, run)
            elif head.poison is not None:
                with self._span(head) as span:
                    span.record_exception(head.poison)
                    await self._dead_letter(head.record, head.poison, attempts=1)
                self._finished(tp, items, 1, "dead-lettered")
            else:
                if self._metrics is not None and not head.redriven_for_another:
                    self._metrics.consumer_skipped.labels(self.name, head.envelope.type).inc()
                self._finished(tp, items, 1, None)

    async def _handle_together(self, tp: TopicPartition, items: list[_Item], count: int) -> None:
        """Handles the first ``count`` items in one transaction and removes them. When a handler fails, the
        ones before it go again together, the failing one alone, then the rest."""
        while count:
            try:
                await self._transaction(items[:count])
            except _HandlerFailed as failed:
                if is_transient(failed.cause):
                    raise _Fault(failed.cause) from failed.cause
                rest = count - failed.index - 1
                if failed.index:
                    await self._handle_together(tp, items, failed.index)
                await self._handle_alone(tp, items, failed.cause)
                count = rest
            except Exception as exc:  # the inbox lookup or the commit: no one record to blame
                if is_transient(exc):
                    raise _Fault(exc) from exc
                log.warning("consumer %s: a batch of %d failed (%s); handling them one by one", self.name, count,
                            type(exc).__name__)
                for _ in range(count):
                    await self._handle_alone(tp, items, None)
                return
            else:
                self._finished(tp, items, count, "handled")
                return

    async def _handle_alone(self, tp: TopicPartition, items: list[_Item], failure: Exception | None) -> None:
        """The first item in a transaction of its own. ``failure``: what it raised in a batch (an attempt)."""
        item = items[0]
        attempts = 0 if failure is None else 1
        while not isinstance(failure, PoisonMessage) and attempts < self._max_attempts:
            if attempts:
                delay = self._retry_base_s * 2 ** (attempts - 1) * random.uniform(0.5, 1.5)
                log.warning("event %s failed (attempt %d): %s; retrying in %.2fs", item.envelope.id, attempts,
                            type(failure).__name__, delay)
                await asyncio.sleep(delay)
                item.seconds += delay
            attempts += 1
            try:
                await self._transaction([item])
            except _HandlerFailed as failed:
                failure = failed.cause
            except Exception as exc:
                failure = exc
            else:
                self._finished(tp, items, 1, "handled")
                return
            if is_transient(failure):
                raise _Fault(failure) from failure
        with self._span(item) as span:
            span.set_status(trace.Status(trace.StatusCode.ERROR, "dead-lettered"))
            if not isinstance(failure, PoisonMessage):
                log.error("event %s failed %d times; dead-lettering", item.envelope.id, attempts)
            await self._dead_letter(item.record, failure, attempts=attempts)
        self._finished(tp, items, 1, "dead-lettered")

    async def _transaction(self, items: list[_Item]) -> None:
        """One inbox lookup, each handler, the inbox rows, one commit; then the after-commit callbacks.
        A handler's exception comes out as _HandlerFailed (with its index); any other is the batch's."""
        started = time.perf_counter()
        handler_seconds = 0.0
        async with self._sessions() as session:
            ids = [item.envelope.id for item in items]
            done = set((await session.exec(select(ProcessedMessage.message_id).where(
                ProcessedMessage.consumer == self.name, col(ProcessedMessage.message_id).in_(ids)))).all())
            transaction = session.sync_session.get_transaction()
            for index, item in enumerate(items):
                if item.envelope.id in done:
                    continue  # a duplicate delivery, already handled (or earlier in this batch)
                token = current_event_id.set(item.envelope.id)
                handler_started = time.perf_counter()
                with self._span(item) as span:
                    try:
                        await item.handler(session, item.envelope)
                        if session.sync_session.get_transaction() is not transaction:
                            raise RuntimeError("the handler ended the consumer's transaction (use after_commit)")
                        # The batch's inbox rows go in one INSERT at the commit; its unique key still refuses a
                        # record another consumer committed meanwhile (the batch then goes again one by one).
                        insert_at_commit(session, _INBOX_TABLE, dict(consumer=self.name, message_id=item.envelope.id,
                                                                     processed_at=datetime.now(UTC)))
                        await session.flush()  # its failures are its own; later handlers see its rows
                    except Exception as exc:
                        span.record_exception(exc)
                        raise _HandlerFailed(index, exc) from exc
                    finally:
                        current_event_id.reset(token)
                        spent = time.perf_counter() - handler_started
                        item.seconds += spent
                        handler_seconds += spent
                done.add(item.envelope.id)
            await session.commit()
            shared = (time.perf_counter() - started - handler_seconds) / len(items)  # lookup and commit
            await run_after_commit(session)  # the transaction is over: a checkpoint can run now
        for item in items:
            item.seconds += shared

    def _finished(self, tp: TopicPartition, items: list[_Item], count: int, outcome: str | None) -> None:
        for item in items[:count]:
            self._pending[tp] = item.record.offset + 1
            self.records_seen += 1
            if outcome and self._metrics is not None and _has_known_type(item):
                self._metrics.handler_seconds.labels(self.name, item.envelope.type, outcome).observe(item.seconds)
        del items[:count]

    def _hold(self, tp: TopicPartition, backlog: _Backlog, cause: BaseException) -> None:
        """A transient fault: pause the partition, keep its records, try again after a capped, jittered delay."""
        if self._stopping:
            return  # the held records are fetched again after the restart
        backlog.faults += 1
        delay = min(self._fault_retry_max_s, self._fault_retry_base_s * 2 ** min(backlog.faults - 1, 30))
        delay *= random.uniform(0.5, 1.0)
        backlog.retry_at = asyncio.get_running_loop().time() + delay
        if self._consumer is not None and tp in self._consumer.assignment():
            self._consumer.pause(tp)
        self._count_paused()
        if self._metrics is not None:
            self._metrics.consumer_faults.labels(self.name, type(cause).__name__).inc()
        log.warning("consumer %s: transient fault on %s[%d]: %s; %d record(s) held, retry %d in %.1fs",
                    self.name, tp.topic, tp.partition, _fault_name(cause), len(backlog.items), backlog.faults, delay)

    def _count_paused(self, count: int | None = None) -> None:
        if self._metrics is None:
            return
        if count is None:
            count = len(self._consumer.paused()) if self._consumer is not None else 0
        self._metrics.consumer_paused_partitions.labels(self.name).set(count)

    @contextmanager
    def _span(self, item: _Item):
        record, envelope = item.record, item.envelope
        attributes = {
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": record.topic,
            "messaging.consumer.group.name": self._group_id,
            "messaging.destination.partition.id": str(record.partition),
            "messaging.kafka.offset": record.offset,
            "enlace.service": self._service,
        }
        if envelope is not None:
            attributes |= {"messaging.message.id": envelope.id, "cloudevents.event_type": envelope.type}
        with tracer.start_as_current_span(
            f"{record.topic} process", context=extract(envelope.trace_headers) if envelope else None,
            kind=trace.SpanKind.CONSUMER, attributes=attributes,
        ) as span:
            yield span

    async def _dead_letter(self, record: ConsumerRecord, exc: BaseException, *, attempts: int) -> None:
        """Sends the record to ``<topic>.dlq`` and awaits the ack, or raises _Fault: the offset is then not
        committed and the record is tried again later. Bounded, and cut short by stop()."""
        headers = [(k, v) for k, v in (record.headers or ()) if not k.startswith("dlq_")]
        headers += [
            ("dlq_exception", type(exc).__name__.encode()),
            ("dlq_message", _safe_message(exc).encode()),
            ("dlq_service", self._service.encode()),
            ("dlq_consumer", self.name.encode()),
            ("dlq_attempts", str(attempts).encode()),
            ("dlq_original_topic", record.topic.encode()),
            ("dlq_original_partition", str(record.partition).encode()),
            ("dlq_original_offset", str(record.offset).encode()),
        ]

        async def send_and_await_ack() -> None:
            await (await self._dlq_producer.send(dlq(record.topic), value=record.value, key=record.key,
                                                 headers=headers))

        generation = getattr(self._dlq_producer, "generation", 0)
        try:
            await self._bounded(send_and_await_ack(), self._dlq_timeout_s)
        except Exception as failure:
            if leaves_producer_unusable(failure) and isinstance(self._dlq_producer, RenewableProducer):
                with contextlib.suppress(Exception):  # else the next failure of the held record tries again
                    await self._dlq_producer.renew(generation, failure)
            log.log(logging.INFO if self._stopping else logging.ERROR,
                    "consumer %s: dead letter for %s[%d]@%d not acknowledged (%s); the record is held", self.name,
                    record.topic, record.partition, record.offset, _fault_name(failure))
            raise _Fault(failure) from failure
        log.warning("consumer %s: %s[%d]@%d dead-lettered to %s: %s: %s", self.name, record.topic, record.partition,
                    record.offset, dlq(record.topic), type(exc).__name__, _safe_message(exc))
        if self._metrics is not None:
            self._metrics.dead_letters.labels(self.name, record.topic).inc()


def _has_known_type(item: _Item) -> bool:
    """Handled here or named by a contract: fit for a metric label (any other type is the sender's choice)."""
    if item.envelope is None or isinstance(item.poison, UnknownEventType):
        return False
    return item.handler is not None or isinstance(item.poison, PoisonMessage)


def _event_name(event_type: str) -> str:
    """``case.screened.v1`` -> ``case.screened``: another version of a type handled here is not someone else's."""
    match = _VERSIONED.match(event_type)
    return match["name"] if match else event_type
