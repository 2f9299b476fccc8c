"""Test harness: services in-process on the real broker, each with its own SQLite database."""

import asyncio
import socket
import uuid
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import uvicorn
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from enlace_platform.agencies import AgencyRegistry, seed_agencies
from enlace_platform.db import create_tables, make_engine, make_session_factory
from enlace_platform.dev_issuer import mint
from enlace_platform.envelope import Envelope, from_kafka, to_kafka
from enlace_platform.migrations import service_tables
from enlace_platform.topics import all_topics, provision

REPO = Path(__file__).resolve().parents[2]
# The test stack's directory: the demo's plus the agencies only tests use (a token's agency must be in it).
TEST_DIRECTORY = REPO / "tests" / "support" / "agencies.json"


@asynccontextmanager
async def service_database(path: Path, tables: list):
    """A service's own SQLite database with the platform's tables (outbox, inbox, ...) and the given ones."""
    engine = make_engine(f"sqlite+aiosqlite:///{path}")
    await create_tables(engine, service_tables(tables))
    try:
        yield make_session_factory(engine, f"{path.stem}{id(engine)}")
    finally:
        await engine.dispose()


def database_bytes(database_url: str) -> bytes:
    """A service's SQLite database file and its write-ahead log, read raw (as anyone with a copy would)."""
    path = Path(database_url.split("///", 1)[1])
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


def unique_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}."


async def provision_topics(bootstrap: str, prefix: str) -> None:
    await provision(bootstrap, all_topics(prefix), prefix=prefix)


def fast_settings(cls, *, tmp_path: Path, bootstrap: str, prefix: str, dev_issuer_dir: Path,
                  database_url: str | None = None, databases=None, **extra):
    """Service settings for tests: own database (the URL given, else the service's of ``databases``, the test's
    fixture of tests/support/database_support.py, else SQLite in tmp_path), isolated topics, quick retries."""
    name = cls.model_fields["service_name"].default
    if database_url is None and databases is not None:
        database_url = databases.url(name)
    extra.setdefault("directory_seed_path", str(TEST_DIRECTORY))  # every service's copy of the directory
    if "webhook_allow_loopback" in cls.model_fields:
        extra.setdefault("webhook_allow_loopback", True)  # the tests' webhook receivers listen on loopback
    return cls(
        database_url=database_url or f"sqlite+aiosqlite:///{tmp_path / f'{name}.db'}",
        kafka_bootstrap_servers=bootstrap,
        kafka_topic_prefix=prefix,
        auth_dev_public_key_path=str(dev_issuer_dir / "public.pem"),
        data_key_file=str(tmp_path / f"{name}-data.key"),
        outbox_fallback_poll_s=0.5,
        consumer_retry_base_s=0.05,
        log_json=False,
        **extra,
    )


def directory_for_tests() -> AgencyRegistry:
    """The test directory's agencies, for a runtime built without a service's own copy of the directory."""
    return AgencyRegistry(seed_agencies(TEST_DIRECTORY))


def bearer(dev_issuer_dir: Path, agency_id: str, agency_type: str, jurisdiction: str = "MX",
           roles: list[str] | None = None) -> dict[str, str]:
    token = mint((dev_issuer_dir / "private.pem").read_bytes(), agency_id=agency_id, agency_type=agency_type,
                 jurisdiction=jurisdiction, roles=roles or ["caseworker"])
    return {"authorization": f"Bearer {token}"}


@asynccontextmanager
async def running_app(app):
    """Runs the app's lifespan (relay, consumers, background loops) and yields an HTTP client."""
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def eventually(check: Callable[[], Awaitable[object]], *, timeout: float = 30.0, interval: float = 0.1,
                     what: str = "condition"):
    """Polls until check() returns something truthy; a liveness bound, not a speed assertion."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


async def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 20.0) -> list:
    """Reads a whole topic from the beginning (no consumer group) until `expected` records arrived."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    records: list = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(records) < expected and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                records.extend(recs)
        # One more short read, so a test also sees records beyond what it expected.
        batch = await consumer.getmany(timeout_ms=300)
        for recs in batch.values():
            records.extend(recs)
    finally:
        await consumer.stop()
    return records


def envelopes(records: list) -> list[Envelope]:
    return [from_kafka(r.key, r.value, r.headers) for r in records]


async def publish_envelopes(bootstrap: str, topic: str, envelopes: list[Envelope]) -> None:
    """Publishes these events to one topic with a producer of its own, each acknowledged before the next."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for envelope in envelopes:
            key, value, headers = to_kafka(envelope)
            await (await producer.send(topic, value=value, key=key, headers=headers))
    finally:
        await producer.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebhookReceiver:
    """An agency's webhook endpoint on a real loopback port; keeps each request it gets."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[dict] = []
        self.status_code = 204

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def _hook(self, request: Request) -> Response:
        self.requests.append({"headers": dict(request.headers), "body": await request.body()})
        return Response(status_code=self.status_code)

    @asynccontextmanager
    async def running(self):
        app = Starlette(routes=[Route("/hooks", self._hook, methods=["POST"])])
        async with uvicorn_serving(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                  lifespan="off")):
            yield self


@asynccontextmanager
async def uvicorn_serving(config: uvicorn.Config):
    """A uvicorn server for the block: serving once it yields (a server that fails to start raises what stopped
    it), stopped gracefully after."""
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())

    async def started():
        if task.done():
            task.result()  # raises what stopped it
        return server.started
    try:
        await eventually(started, timeout=60, what="uvicorn serving the app")
        yield server
    finally:
        server.should_exit = True
        await task
