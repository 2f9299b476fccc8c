"""One service's moving parts: database, producer, outbox relay, consumers and background loops.

The HTTP API comes up even while Kafka is unreachable: writes still land in the outbox, and
the relay and consumers start as soon as the broker answers. ``/readyz`` says which is which.
"""

import asyncio
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Annotated, TypeVar

from aiokafka import AIOKafkaProducer
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from sqlalchemy import Table
from sqlmodel.ext.asyncio.session import AsyncSession

from enlace_platform.agencies import AgencyRegistry
from enlace_platform.audit import READ_METHODS, AuditMiddleware, AuditScope, audit_router, record_in_transaction
from enlace_platform.auth import TokenVerifier
from enlace_platform.consumer import ConsumerRunner, Handler
from enlace_platform.contracts import published_contracts
from enlace_platform.crypto import Keyring, SubjectKey, purge_freed_pages, rewrap_subject_keys
from enlace_platform.db import (
    create_tables, database_fault, fault_code, make_engine, make_read_session_factory, make_session_factory, ping,
)
from enlace_platform.limits import install_entry_limits
from enlace_platform.openapi_statuses import DATABASE, document_statuses
from enlace_platform.migrations import migrate, service_tables
from enlace_platform.metrics import ScrapeHook, ServiceMetrics
from enlace_platform.outbox import OutboxRelay
from enlace_platform.producer import RenewableProducer
from enlace_platform.problems import (
    PROBLEM_RESPONSES, install_problem_handlers, problem_response, use_problem_json_in_openapi,
)
from enlace_platform.settings import ServiceSettings
from enlace_platform.telemetry import setup_logging, setup_tracing

log = logging.getLogger(__name__)

BackgroundLoop = Callable[["ServiceRuntime"], Awaitable[None]]
T = TypeVar("T")


@dataclass(frozen=True)
class KeyRotationStep:
    """What a service keeps under a key derived from its key-encryption key, re-sealed when that key changes
    (ServiceRuntime.rotate_key_encryption_key): ``run(session, old, new)`` returns how many rows it changed;
    ``tables`` are those whose old values purge_freed_pages then clears."""

    name: str
    tables: tuple[str, ...]
    run: Callable[[AsyncSession, bytes, bytes], Awaitable[int]]


def every(interval_s: float, work: Callable[["ServiceRuntime"], Awaitable[object]], *, name: str) -> BackgroundLoop:
    """A background loop doing ``work`` now and then every ``interval_s`` until the runtime stops.
    A failed pass is logged and tried again at the next interval."""
    async def loop(runtime: "ServiceRuntime") -> None:
        while not runtime.stopping.is_set():
            try:
                await work(runtime)
            except Exception:
                log.exception("%s failed; retrying in %.0fs", name, interval_s)
            try:
                await asyncio.wait_for(runtime.stopping.wait(), timeout=interval_s)
            except TimeoutError:
                pass

    loop.__name__ = name
    return loop


@dataclass
class ConsumerSpec:
    name: str  # stable name, used in processed_messages and (prefixed) as the consumer group
    topics: list[str]  # unprefixed topic names
    handlers: dict[str, Handler]


@dataclass
class ServiceRuntime:
    settings: ServiceSettings
    tables: Iterable[Table]
    consumers: list[ConsumerSpec] = field(default_factory=list)
    background: list[BackgroundLoop] = field(default_factory=list)
    on_startup: list[BackgroundLoop] = field(default_factory=list)  # run once, after the tables exist
    scrape_hooks: list[ScrapeHook] = field(default_factory=list)  # the service's own /metrics gauges
    key_rotation: list[KeyRotationStep] = field(default_factory=list)
    # The service's Alembic script directory: start() migrates the database to head. Without one
    # (ad-hoc runtimes in tests and benchmarks) the tables are created with create_all.
    migrations: Path | None = None
    # The directory's agencies, which the token check reads (enlace_platform.agencies): each service fills it
    # at start and keeps it current; left empty, every token is refused.
    agencies: AgencyRegistry = field(default_factory=AgencyRegistry)

    def __post_init__(self) -> None:
        s = self.settings
        self.tables = service_tables(self.tables)
        self.engine = make_engine(s.database_url, trace_sql=s.trace_sql)
        self.sessions = make_session_factory(self.engine, s.service_name)
        # For work that only reads (GET requests, /metrics): on SQLite it never waits for the write lock.
        self.read_sessions = make_read_session_factory(self.engine, s.service_name)
        self.metrics = ServiceMetrics(s.service_name)
        self.producer: RenewableProducer | None = None
        self.relay: OutboxRelay | None = None
        self.runners: list[ConsumerRunner] = []
        self.kafka_started = asyncio.Event()
        self.stopping = asyncio.Event()
        self._consumer_tasks: list[asyncio.Task] = []
        self._background_tasks: list[asyncio.Task] = []
        self._relay_task: asyncio.Task | None = None
        self._kafka_task: asyncio.Task | None = None
        self._shared: dict[type, object] = {}

    @cached_property
    def key_encryption_key(self) -> bytes:
        """Read once (setting or key file); never stored in the database."""
        return self.settings.key_encryption_key()

    @cached_property
    def keyring(self) -> Keyring:
        """Per-person data keys, for the services that keep personal data (their TABLES list SubjectKey)."""
        return Keyring(self.key_encryption_key, namespace=self.settings.service_name)

    async def rotate_key_encryption_key(self, new_kek: bytes) -> dict[str, int]:
        """Re-wrap the subjects' keys and re-seal the service's own secrets under ``new_kek``, in one
        transaction, then purge the old values' freed pages. For a stopped service (enlace-ops
        rotate-data-key): a running one would go on using the old key. Returns rows changed per step."""
        old_kek = self.key_encryption_key
        if new_kek == old_kek:
            raise ValueError("the new key-encryption key is the current one")
        steps = list(self.key_rotation)
        if SubjectKey.__table__ in self.tables:
            steps.insert(0, KeyRotationStep(
                "subject_keys", (SubjectKey.__tablename__,),
                lambda session, old, new: rewrap_subject_keys(session, self.settings.service_name, old, new)))
        changed = {}
        async with self.sessions() as session:
            for step in steps:  # in order: a later step may open what an earlier one re-wrapped
                changed[step.name] = await step.run(session, old_kek, new_kek)
            await session.commit()
        await purge_freed_pages(self.engine, tables=tuple(t for step in steps for t in step.tables))
        return changed

    def shared(self, kind: type[T], build: Callable[[], T]) -> T:
        """One instance of ``kind`` per runtime, built on first use (keys derived once, not per request)."""
        found = self._shared.get(kind)
        if found is None:
            found = self._shared[kind] = build()
        return found

    def _build_kafka_parts(self) -> None:
        # aiokafka objects must be created inside the running event loop.
        s = self.settings
        kafka_options = s.kafka_client_options()  # security: SASL credentials and TLS, or nothing
        self.producer = RenewableProducer(lambda: AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap_servers,
            **kafka_options,
            client_id=f"{s.service_name}-producer",
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            # Bounds a send's wait for metadata or queue room while the broker is away (aiokafka's default is
            # 40 s); the idempotent producer keeps retrying what it already took until the broker answers.
            request_timeout_ms=int(s.outbox_send_timeout_s * 1000),
        ), stop_timeout_s=s.shutdown_producer_s)
        self.relay = OutboxRelay(
            self.sessions, self.producer, topic_prefix=s.kafka_topic_prefix, batch_size=s.outbox_batch_size,
            fallback_poll_s=s.outbox_fallback_poll_s, retry_base_s=s.outbox_retry_base_s,
            retry_max_s=s.outbox_retry_max_s, send_timeout_s=s.outbox_send_timeout_s, lease_s=s.outbox_lease_s,
        )
        self.runners = [
            ConsumerRunner(
                name=spec.name, group_id=s.group(spec.name), topics=[s.topic(t) for t in spec.topics],
                handlers=spec.handlers, session_factory=self.sessions, bootstrap_servers=s.kafka_bootstrap_servers,
                client_options=kafka_options,
                dlq_producer=self.producer, service_name=s.service_name, max_attempts=s.consumer_max_attempts,
                retry_base_s=s.consumer_retry_base_s, metrics=self.metrics,
                validate=published_contracts().check, known_event_types=published_contracts().event_types,
                batch_size=s.consumer_batch_size, fault_retry_base_s=s.consumer_fault_retry_base_s,
                fault_retry_max_s=s.consumer_fault_retry_max_s, commit_timeout_s=s.consumer_commit_timeout_s,
                close_timeout_s=s.consumer_close_timeout_s, dlq_timeout_s=s.consumer_dlq_timeout_s,
            )
            for spec in self.consumers
        ]

    async def start(self) -> None:
        await self._prepare_database()
        self._build_kafka_parts()
        for hook in self.on_startup:
            await hook(self)
        self._kafka_task = asyncio.create_task(self._start_kafka_parts(), name=f"{self.settings.service_name}-kafka")

    async def _prepare_database(self) -> None:
        """Migrate, or create the tables. A database that cannot work yet (a full disk, PostgreSQL still
        starting) is waited for rather than ending the process, which a supervisor would only restart into
        the same fault; SIGTERM or SIGINT still ends the wait at once."""
        interrupted = asyncio.Event()
        loop = asyncio.get_running_loop()
        in_main_thread = threading.current_thread() is threading.main_thread()  # only it may set handlers
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)} if in_main_thread else {}

        def interrupt(sig: int, frame: object) -> None:
            loop.call_soon_threadsafe(interrupted.set)
            if callable(previous[sig]):
                previous[sig](sig, frame)

        for sig in previous:
            signal.signal(sig, interrupt)
        try:
            delay = 0.5
            while True:
                try:
                    if self.migrations is not None:
                        await migrate(self.engine, self.migrations, self.tables)
                    else:
                        await create_tables(self.engine, self.tables)
                    return
                except Exception as exc:
                    fault = database_fault(exc)
                    if fault is None:
                        raise
                    log.warning("database cannot start yet (%s); retrying in %.1fs", fault_code(fault), delay)
                try:
                    await asyncio.wait_for(interrupted.wait(), delay)
                    raise RuntimeError("stopped while waiting for the database")
                except TimeoutError:
                    delay = min(delay * 2, 10.0)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    async def _start_kafka_parts(self) -> None:
        delay = 0.5
        while not self.stopping.is_set():
            try:
                await self.producer.start()
                break
            except Exception as exc:
                log.warning("Kafka not reachable yet (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)
        else:
            return
        self.kafka_started.set()
        self._relay_task = asyncio.create_task(self.relay.run(), name="outbox-relay")
        for runner in self.runners:
            self._consumer_tasks.append(asyncio.create_task(self._supervise(runner), name=f"consumer-{runner.name}"))
        for loop in self.background:
            self._background_tasks.append(
                asyncio.create_task(loop(self), name=getattr(loop, "__name__", "background")))

    async def _supervise(self, runner: ConsumerRunner) -> None:
        """Restart a consumer that crashed (e.g. broker gone); it resumes from its committed offsets."""
        while not self.stopping.is_set():
            try:
                await runner.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("consumer %s crashed; restarting", runner.name)
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        """Graceful, in order: consumers finish the record in hand and commit their offsets;
        background loops end; then the relay drains what they wrote, and Kafka closes.

        Each step is bounded (shutdown_* settings), so a broker that is gone or hangs cannot keep the
        process alive: what a step leaves undone is redelivered or resent after the next start."""
        s = self.settings
        self.stopping.set()
        if self._kafka_task is not None:
            await _finish([self._kafka_task], 0)  # still connecting: nothing to finish
        for runner in self.runners:
            runner.stop()
        await _finish(self._consumer_tasks + self._background_tasks, s.shutdown_consumers_s)
        if self.relay is not None:
            self.relay.stop(drain_timeout_s=s.shutdown_relay_drain_s)
            if self._relay_task is not None:
                # Beyond its drain, the relay records the acks it got and lets go of its other rows.
                await _finish([self._relay_task], s.shutdown_relay_drain_s + RELAY_LET_GO_S)
            self.relay.detach()
        if self.producer is not None:
            # Also when it never connected: it holds a client all the same. Its flush waits for the broker.
            await _finish([asyncio.create_task(self.producer.stop(), name="producer-stop")], s.shutdown_producer_s)
        await self.engine.dispose()

    async def readiness(self) -> dict[str, str]:
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(ping(self.engine), timeout=2)
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"unreachable: {type(exc).__name__}"
        if not self.kafka_started.is_set():
            checks["kafka"] = "not connected yet"
        else:
            try:
                await asyncio.wait_for(self.producer.client.fetch_all_metadata(), timeout=2)
                checks["kafka"] = "ok"
            except Exception as exc:
                checks["kafka"] = f"unreachable: {type(exc).__name__}"
        return checks


# How long a cancelled task gets to unwind before shutdown goes on without it.
CANCEL_GRACE_S = 0.5
# After its drain, for the relay's two short transactions: the acks it got, and its other rows let go.
RELAY_LET_GO_S = 1.0


async def _finish(tasks: list[asyncio.Task], timeout_s: float) -> None:
    """Wait for tasks to end on their own; cancel what is still running after the timeout, and leave
    behind what does not unwind within CANCEL_GRACE_S (e.g. a client waiting on a broker in a finally)."""
    if not tasks:
        return
    if timeout_s > 0:
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            log.warning("task %s did not stop in %.1fs; cancelling", task.get_name(), timeout_s)
    else:
        pending = {task for task in tasks if not task.done()}
    for task in pending:
        task.cancel()
    if pending:
        _, stuck = await asyncio.wait(pending, timeout=CANCEL_GRACE_S)
        for task in stuck:
            log.error("task %s did not unwind after its cancellation; shutting down without it", task.get_name())
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # seen here: asyncio need not report it as never retrieved


async def _db_session(request: Request):
    runtime = request.app.state.runtime
    if request.method in READ_METHODS:
        async with runtime.read_sessions() as session:
            yield session
        return
    async with runtime.sessions() as session:
        record_in_transaction(session, request)
        yield session


async def _read_session(request: Request):
    async with request.app.state.runtime.read_sessions() as session:
        yield session


# A session per request, from the service's own database, closed as soon as the route returns. GET and
# HEAD get a read session (on SQLite it never waits for the write lock, and refuses to write); the other
# methods a write session whose commit also writes the request's audit rows (enlace_platform.audit).
DbSession = Annotated[AsyncSession, Depends(_db_session, scope="function")]
# A read session whatever the method: for a POST that only reads (a search with its terms in the body).
ReadSession = Annotated[AsyncSession, Depends(_read_session, scope="function")]


def health_router(runtime: ServiceRuntime) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": runtime.settings.service_name}

    @router.get("/readyz", summary="The database and Kafka are reachable", responses=DATABASE)
    async def readyz(request: Request) -> JSONResponse:
        checks = await runtime.readiness()
        if all(v == "ok" for v in checks.values()):
            return JSONResponse({"status": "ready", "checks": checks})
        return problem_response(request, 503, "Not ready", "; ".join(f"{k}: {v}" for k, v in checks.items()),
                                checks=checks)

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response,
                responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, **DATABASE})
    async def metrics() -> Response:
        await runtime.metrics.refresh(runtime, runtime.scrape_hooks)
        return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router


def create_service_app(
    *, title: str, description: str, runtime: ServiceRuntime, routers: list[APIRouter], version: str = "0.1.0",
    audit_scope: AuditScope | None = None,
) -> FastAPI:
    """``audit_scope``: which of the service's objects belong to whom, so GET /audit shows an agency's
    auditor what anyone did to them (enlace_platform.audit); without it, auditors see their staff only."""
    setup_tracing(runtime.settings.service_name)
    setup_logging(runtime.settings.service_name, runtime.settings.log_json)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(title=title, description=description, version=version, lifespan=lifespan)
    use_problem_json_in_openapi(app)
    app.state.runtime = runtime
    app.state.token_verifier = TokenVerifier(runtime.settings, agencies=runtime.agencies)
    install_problem_handlers(app)
    app.include_router(health_router(runtime))
    for router in [*routers, audit_router(lambda request: request.app.state.runtime.read_sessions, audit_scope)]:
        app.include_router(router, responses=PROBLEM_RESPONSES)
    app.add_middleware(AuditMiddleware, sessions=runtime.sessions)
    install_entry_limits(app, runtime.settings)  # outside the audit: refused before any database work
    document_statuses(app)  # every error status each operation can answer, in its OpenAPI document
    # No spans for the ASGI messages a request's body and response travel in (two to four a request):
    # the server span has the status and the timing, and a case stays at ~16 spans (docs/operations.md).
    FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,readyz,metrics",
                                       server_request_hook=_drop_query_from_span, exclude_spans=["receive", "send"])
    return app


def _drop_query_from_span(span, scope) -> None:
    """Query strings can carry search terms (names, document numbers): spans keep the path only."""
    if span is None or not span.is_recording() or not scope.get("query_string"):
        return
    path = scope.get("path", "")
    host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
    span.set_attribute("http.target", path)
    span.set_attribute("http.url", f"{scope.get('scheme', 'http')}://{host}{path}")
    span.set_attribute("url.query", "")
