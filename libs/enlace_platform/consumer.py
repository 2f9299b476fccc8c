"""Consumer runner: idempotent handling, manual commits, bounded retries and a dead-letter topic.

For each record: parse the CloudEvent, continue the producer's trace, run the handler and
write the ``processed_messages`` row in one transaction, then commit the offset. A handler
that keeps failing is retried ``max_attempts`` times with backoff; then the record goes to
``<topic>.dlq`` with error headers and the partition moves on. Malformed records and
:class:`PoisonMessage` skip the retries: retrying cannot fix them.
"""

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from opentelemetry import trace
from opentelemetry.propagate import extract
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from enlace_platform.envelope import Envelope, MalformedEvent, from_kafka
from enlace_platform.inbox import ProcessedMessage
from enlace_platform.telemetry import current_event_id
from enlace_platform.topics import dlq

if TYPE_CHECKING:
    from enlace_platform.metrics import ServiceMetrics

log = logging.getLogger(__name__)
tracer = trace.get_tracer("enlace.consumer")

Handler = Callable[[AsyncSession, Envelope], Awaitable[None]]


class PoisonMessage(Exception):
    """Raised by a handler for an event it can never process (e.g. a payload that breaks its contract)."""


def _safe_message(exc: BaseException) -> str:
    """Our own errors describe the record's shape; any other text may quote payload values
    (personal data), so the DLQ gets only the trace id that finds the full error in the logs."""
    if isinstance(exc, (MalformedEvent, PoisonMessage)):
        return str(exc)[:1000]
    ctx = trace.get_current_span().get_span_context()
    trace_id = format(ctx.trace_id, "032x") if ctx.is_valid else "unknown"
    return f"{type(exc).__name__}: see the service log for trace {trace_id}"


class _CommitOnRevoke(ConsumerRebalanceListener):
    def __init__(self, runner: "ConsumerRunner") -> None:
        self._runner = runner

    async def on_partitions_revoked(self, revoked) -> None:
        # Hand over cleanly: whatever we finished is committed before another member takes over.
        await self._runner.commit_pending(set(revoked))

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
        service_name: str,
        max_attempts: int = 3,
        retry_base_s: float = 0.2,
        metrics: "ServiceMetrics | None" = None,
        validate: Callable[[str, dict], None] | None = None,
    ) -> None:
        self.name = name
        self._metrics = metrics
        self._validate = validate  # raises PoisonMessage for a payload that breaks its contract
        self._group_id = group_id
        self._topics = topics
        self._handlers = handlers
        self._sessions = session_factory
        self._bootstrap = bootstrap_servers
        self._dlq_producer = dlq_producer
        self._service = service_name
        self._max_attempts = max_attempts
        self._retry_base_s = retry_base_s
        self._consumer: AIOKafkaConsumer | None = None
        self._pending: dict[TopicPartition, int] = {}
        self._stopping = False
        self.ready = asyncio.Event()  # set once partitions are assigned
        self.records_seen = 0  # records finished (handled, skipped as duplicate or dead-lettered)

    def stop(self) -> None:
        """Finish the record in hand, commit, and leave the group."""
        self._stopping = True

    async def lag(self) -> dict[tuple[str, int], int]:
        """Per assigned partition: records between our position and the last fetched high watermark."""
        consumer = self._consumer
        if consumer is None:
            return {}
        lags = {}
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is not None:  # known only after a fetch, so a position exists too
                lags[(tp.topic, tp.partition)] = max(0, highwater - await consumer.position(tp))
        return lags

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=self._group_id,
            client_id=f"{self._service}-{self.name}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        consumer.subscribe(self._topics, listener=_CommitOnRevoke(self))
        await consumer.start()
        self._consumer = consumer
        try:
            while not self._stopping:
                batch = await consumer.getmany(timeout_ms=300, max_records=100)
                if consumer.assignment():
                    self.ready.set()
                for tp, records in batch.items():
                    for record in records:
                        if self._stopping:
                            break
                        await self._process(record)
                        self._pending[tp] = record.offset + 1
                        self.records_seen += 1
                    await self.commit_pending({tp})
        finally:
            try:
                await self.commit_pending(None)
            finally:
                self._consumer = None
                await consumer.stop()

    async def commit_pending(self, partitions: set[TopicPartition] | None) -> None:
        if self._consumer is None:
            return
        offsets = {tp: off for tp, off in self._pending.items() if partitions is None or tp in partitions}
        if offsets:
            await self._consumer.commit(offsets)
            for tp in offsets:
                self._pending.pop(tp, None)

    async def _process(self, record: ConsumerRecord) -> None:
        try:
            envelope = from_kafka(record.key, record.value, record.headers)
        except MalformedEvent as exc:
            log.warning("malformed record at %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc)
            await self._dead_letter(record, exc, attempts=1)
            return
        handler = self._handlers.get(envelope.type)
        if handler is None:
            return  # not an event this consumer cares about
        token = current_event_id.set(envelope.id)
        started = time.perf_counter()
        outcome = "error"
        try:
            outcome = await self._process_with_retries(record, envelope, handler)
        finally:
            current_event_id.reset(token)
            if self._metrics is not None:
                self._metrics.handler_seconds.labels(self.name, envelope.type, outcome).observe(
                    time.perf_counter() - started)

    async def _process_with_retries(self, record: ConsumerRecord, envelope: Envelope, handler: Handler) -> str:
        """Returns the outcome: handled or dead-lettered."""
        with tracer.start_as_current_span(
            f"{record.topic} process",
            context=extract(envelope.trace_headers),
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.destination.name": record.topic,
                "messaging.consumer.group.name": self._group_id,
                "messaging.destination.partition.id": str(record.partition),
                "messaging.kafka.offset": record.offset,
                "messaging.message.id": envelope.id,
                "cloudevents.event_type": envelope.type,
                "enlace.service": self._service,
            },
        ) as span:
            if self._validate is not None:
                try:
                    self._validate(envelope.type, envelope.data)
                except PoisonMessage as exc:
                    span.record_exception(exc)
                    await self._dead_letter(record, exc, attempts=1)
                    return "dead-lettered"
            for attempt in range(1, self._max_attempts + 1):
                try:
                    await self._handle_once(handler, envelope)
                    return "handled"
                except PoisonMessage as exc:
                    span.record_exception(exc)
                    await self._dead_letter(record, exc, attempts=attempt)
                    return "dead-lettered"
                except Exception as exc:
                    span.record_exception(exc)
                    if attempt == self._max_attempts:
                        span.set_status(trace.Status(trace.StatusCode.ERROR, "dead-lettered"))
                        log.error("event %s failed %d times; dead-lettering", envelope.id, attempt)
                        await self._dead_letter(record, exc, attempts=attempt)
                        return "dead-lettered"
                    delay = self._retry_base_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)
                    log.warning("event %s failed (attempt %d): %r; retrying in %.2fs", envelope.id, attempt, exc, delay)
                    await asyncio.sleep(delay)

    async def _handle_once(self, handler: Handler, envelope: Envelope) -> None:
        async with self._sessions() as session:
            if await session.get(ProcessedMessage, (self.name, envelope.id)) is not None:
                return  # duplicate delivery: already handled
            await handler(session, envelope)
            session.add(ProcessedMessage(consumer=self.name, message_id=envelope.id))
            await session.commit()

    async def _dead_letter(self, record: ConsumerRecord, exc: BaseException, *, attempts: int) -> None:
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
        # Awaiting the ack before the offset is committed: a dead letter is never lost.
        await (await self._dlq_producer.send(dlq(record.topic), value=record.value, key=record.key, headers=headers))
        if self._metrics is not None:
            self._metrics.dead_letters.labels(self.name, record.topic).inc()
