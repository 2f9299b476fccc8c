"""Each service as two uvicorn processes on one PostgreSQL database per service, under faults.

The support of tests/cluster/test_replicas_under_faults.py. The processes are started as deploy/services.sh
starts them (same uvicorn command line, same environment variables), one by one rather than through the script:
each service gets its own Kafka principal (``Bus.service_env``), and the test kills single replicas by pid. The
benchmark's pieces do the rest (bench/e2e): its webhook receiver process, which records every POST it gets, its
border post's calls (an unaccompanied child, the mandatory child-protection override, a screening: exactly one
need, UNACCOMPANIED_CHILD, routed to MX-PFPNNA), and its directory with room for every case.
"""

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from bench.e2e.client import RECEIVER, BorderPost, FlowFailed, bearer
from bench.e2e.stack import _roomy_directory, free_ports
from bench.e2e.tally import CASE_ID, REFERRAL_ID, SIGNATURE_OK, TYPE, WEBHOOK_ID, Arrivals
from enlace_ops.operations import group_position
from enlace_platform.bus import declared
from enlace_platform.crypto import load_key_encryption_key
from enlace_platform.envelope import from_kafka
from tests.support.harness import REPO, eventually

SERVICES = ("intake", "referral", "notification")
REQUESTED = "referral.requested.v1"
ACCEPTED = "referral.accepted.v1"
OVERDUE = "referral.overdue.v1"
# What the receiving agency subscribes to: each case's referral, its deadline breach, and the accepts.
SUBSCRIBED = [REQUESTED, OVERDUE, ACCEPTED]
# Environment the test's processes must not inherit: it would point them at `make up`'s state.
OWN_PREFIXES = ("ENLACE_", "INTAKE_", "REFERRAL_", "NOTIFICATION_", "OTEL_")


@dataclass
class Bus:
    """The Kafka the replicas use, as the test sees it: whichever cluster fixture it comes from."""
    bootstrap: str
    prefix: str
    service_env: Callable[[str], dict[str, str]]  # ENLACE_KAFKA_* of one service (its own principal)
    reader_options: dict  # aiokafka kwargs of a principal that may read every topic (the test's own reads)


@dataclass
class Replica:
    service: str
    number: int
    port: int
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen | None = None
    starts: int = 0

    @property
    def name(self) -> str:
        return f"{self.service}-{self.number}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """deploy/services.sh's command line; the log is appended to across restarts."""
        assert not self.alive(), f"{self.name} is running"
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- start {self.starts} of {self.name} ---\n".encode())
            self.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--factory", f"{self.service}.entrypoints.app:create_app",
                 "--host", "127.0.0.1", "--port", str(self.port), "--no-access-log",
                 "--timeout-graceful-shutdown", "3"],
                cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)

    def kill(self) -> None:
        """SIGKILL: no shutdown at all, as a crash or an OOM kill. Its leases and group membership just expire."""
        assert self.alive(), f"{self.name} is not running"
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)

    def reap(self, grace_s: float) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)

    def log_tail(self, chars: int = 2500) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"--- {self.name} ({self.log_path}) ---\n{text[-chars:]}"


# Shorter than the defaults so that what a SIGKILLed replica held is taken over within the test's bounds; each
# keeps its documented relation (the outbox lease exceeds the send timeout; the delivery lease is the longest
# attempt plus a margin).
FAULT_TIMINGS = {
    "ENLACE_OUTBOX_LEASE_S": "10",
    "ENLACE_CONSUMER_FAULT_RETRY_MAX_S": "4",
    "NOTIFICATION_WEBHOOK_TIMEOUT_S": "5",
    "NOTIFICATION_SMTP_TIMEOUT_S": "2",
    "NOTIFICATION_LEASE_MARGIN_S": "3",
}


class Replicas:
    """``count`` uvicorn processes per service, sharing their service's database and data key."""

    def __init__(self, base: Path, bus: Bus, databases: dict[str, str], dev_issuer_dir: Path, *,
                 count: int = 2, extra_env: dict[str, str] | None = None) -> None:
        self.base = base
        (base / "logs").mkdir(parents=True, exist_ok=True)
        directory = base / "agencies.json"
        directory.write_text(json.dumps(_roomy_directory()))
        ports = iter(free_ports(count * len(SERVICES)))
        self.by_service: dict[str, list[Replica]] = {s: [] for s in SERVICES}
        for service in SERVICES:
            # One key-encryption key per service, made now, so that its replicas share it (docs/operations.md).
            key_file = base / f"{service}-data.key"
            load_key_encryption_key(None, str(key_file))
            for number in range(1, count + 1):
                port = next(ports)
                env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES)}
                env.update({
                    "ENLACE_KAFKA_BOOTSTRAP_SERVERS": bus.bootstrap,
                    "ENLACE_KAFKA_TOPIC_PREFIX": bus.prefix,
                    "ENLACE_AUTH_DEV_PUBLIC_KEY_PATH": str(dev_issuer_dir / "public.pem"),
                    "ENLACE_DATA_KEY_FILE": str(key_file),
                    "ENLACE_LOG_JSON": "false",
                    "OTEL_TRACES_EXPORTER": "none",
                    f"{service.upper()}_DATABASE_URL": databases[service],
                    f"{service.upper()}_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
                    "REFERRAL_DIRECTORY_SEED_PATH": str(directory),
                    "NOTIFICATION_WEBHOOK_ALLOW_LOOPBACK": "true",  # the receiver listens on loopback
                    **FAULT_TIMINGS,
                    **bus.service_env(service),
                    **(extra_env or {}),
                })
                self.by_service[service].append(
                    Replica(service, number, port, env, base / "logs" / f"{service}-{number}.log"))
        # Links in webhook payloads name the first referral replica (a load balancer's address in production).
        for replica in self.by_service["notification"]:
            replica.env["NOTIFICATION_REFERRAL_API_URL"] = self.by_service["referral"][0].url

    @property
    def all(self) -> list[Replica]:
        return [r for replicas in self.by_service.values() for r in replicas]

    def urls(self, service: str) -> list[str]:
        return [r.url for r in self.by_service[service]]

    async def start(self, replicas: list[Replica] | None = None, timeout: float = 120) -> None:
        """Starts them together (migrations take an advisory lock, so replicas may race) and waits until each
        answers /readyz (its database and Kafka reachable)."""
        replicas = self.all if replicas is None else replicas
        for replica in replicas:
            replica.start()
        async with httpx.AsyncClient(timeout=2) as http:
            await asyncio.gather(*(self._ready(http, r, timeout) for r in replicas))

    async def _ready(self, http: httpx.AsyncClient, replica: Replica, timeout: float) -> None:
        async def answers() -> bool:
            if not replica.alive():
                raise AssertionError(f"{replica.name} exited ({replica.process.returncode}):\n{replica.log_tail()}")
            try:
                return (await http.get(f"{replica.url}/readyz")).status_code == 200
            except httpx.HTTPError:
                return False
        try:
            await eventually(answers, timeout=timeout, interval=0.3, what=f"{replica.name} ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{replica.log_tail()}") from None

    def close(self, grace_s: float = 10) -> None:
        """SIGTERM to all at once, SIGKILL to what is left after the grace (their shutdown is not under test)."""
        for replica in self.all:
            replica.terminate()
        deadline = time.monotonic() + grace_s
        for replica in self.all:
            replica.reap(max(0.1, deadline - time.monotonic()))

    def log_tails(self) -> str:
        return "\n".join(r.log_tail() for r in self.all)


class WebhookReceiver:
    """bench/e2e/receiver.py in its own process: answers 204 and keeps every POST, duplicates included."""

    def __init__(self, base: Path) -> None:
        self.port = free_ports(1)[0]
        self.log_path = base / "logs" / "receiver.log"
        self.process: subprocess.Popen | None = None
        self.arrivals = Arrivals(self.url)  # reads what arrived; this module does the counting

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "bench.e2e.receiver", "--port", str(self.port)],
                                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        async with httpx.AsyncClient(timeout=2) as http:
            async def answers() -> bool:
                try:
                    return (await http.get(f"{self.url}/_bench/arrivals?since=0")).status_code == 200
                except httpx.HTTPError:
                    return False
            await eventually(answers, timeout=30, what="the webhook receiver")

    async def refresh(self, http: httpx.AsyncClient) -> list[list]:
        await self.arrivals.refresh(http)
        return self.arrivals.items

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


async def subscribe(http: httpx.AsyncClient, notification_url: str, receiver: WebhookReceiver,
                    key_dir: Path) -> None:
    """The child-protection agency's supervisor subscribes the receiver; the receiver then checks signatures."""
    response = await http.post(f"{notification_url}/subscriptions",
                               headers={**bearer(key_dir, RECEIVER, "supervisor"), "Idempotency-Key": "replicas"},
                               json={"url": f"{receiver.url}/hooks/{RECEIVER}", "event_types": SUBSCRIBED})
    assert response.status_code == 201, response.text
    (await http.post(f"{receiver.url}/_bench/secret", json={"secret": response.json()["secret"]})).raise_for_status()


class FailoverBorderPost(BorderPost):
    """The benchmark's border post, whose calls go to the other intake replica when theirs is gone (refused,
    reset, 5xx). The retry keeps the call's Idempotency-Key: a call the dead replica committed before it died is
    answered with what it created, by whichever replica the retry reaches (they share the database)."""

    def __init__(self, http: httpx.AsyncClient, intake_urls: list[str], key_dir: Path, *,
                 patience_s: float = 90.0) -> None:
        super().__init__(http, intake_urls, key_dir)
        self.intake_urls = intake_urls
        self.patience_s = patience_s

    async def _post(self, result, step: str, url: str, headers: dict, body: dict) -> dict:
        headers = {**headers, "Idempotency-Key": str(uuid.uuid4())}
        path = "/" + url.split("/", 3)[3]
        first = next(i for i, base in enumerate(self.intake_urls) if url.startswith(base))
        started = time.perf_counter()
        for attempt in itertools.count():
            base = self.intake_urls[(first + attempt) % len(self.intake_urls)]
            try:
                response = await self.http.post(f"{base}{path}", headers=headers, json=body)
            except httpx.TransportError as exc:
                failure = f"{type(exc).__name__}"
            else:
                if response.status_code < 500:
                    if response.status_code >= 400:
                        raise FlowFailed(f"{step} -> {response.status_code}: {response.text[:300]}")
                    result.latencies[step] = time.perf_counter() - started
                    return response.json()
                failure = f"{response.status_code}: {response.text[:200]}"
            if time.perf_counter() - started > self.patience_s:
                raise FlowFailed(f"{step}: no intake replica answered within {self.patience_s:.0f} s ({failure})")
            result.retries += 1
            await asyncio.sleep(min(0.1 * (attempt + 1), 1.0))
        raise AssertionError("unreachable")  # itertools.count() never ends


# --- what happened: the referral database, the topic, the receiver ------------------------------------------------

@dataclass
class ReferralFacts:
    """From the referral service's own database: its referrals and, per referral, its history's actions."""
    referrals_by_case: dict[str, list[str]]
    actions: dict[str, Counter]  # referral id -> action -> rows

    def count(self, action: str) -> Counter:
        return Counter({ref: acts[action] for ref, acts in self.actions.items()})


async def referral_facts(dsn: str) -> ReferralFacts:
    conn = await asyncpg.connect(dsn)
    try:
        referrals = await conn.fetch("SELECT id, case_id FROM referral_referral")
        history = await conn.fetch("SELECT referral_id, action, count(*) AS n FROM referral_history "
                                   "GROUP BY referral_id, action")
    finally:
        await conn.close()
    by_case: dict[str, list[str]] = defaultdict(list)
    for row in referrals:
        by_case[row["case_id"]].append(row["id"])
    actions: dict[str, Counter] = defaultdict(Counter)
    for row in history:
        actions[row["referral_id"]][row["action"]] += row["n"]
    return ReferralFacts(dict(by_case), dict(actions))


async def history_times(dsn: str, action: str) -> list[float]:
    """When the referral service wrote each history row of ``action`` (Unix time)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT extract(epoch FROM at) AS t FROM referral_history WHERE action = $1", action)
    finally:
        await conn.close()
    return [float(row["t"]) for row in rows]


async def events_on_topic(bus: Bus, topic: str, types: set[str], timeout_s: float = 30) -> dict[str, dict]:
    """Every record of ``types`` on the topic, read from the beginning without a group until the end offsets
    taken at the start: event type -> referral id -> Counter of event ids (CloudEvents ids; a repeat of one id
    is the relay's at-least-once, absorbed by the consumers' inboxes)."""
    # Without a group, a subscription is assigned every partition of the topic once its metadata is in.
    consumer = AIOKafkaConsumer(bus.prefix + topic, bootstrap_servers=bus.bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest", **bus.reader_options)
    await consumer.start()
    found: dict[str, dict] = defaultdict(lambda: defaultdict(Counter))

    def take(batch: dict) -> None:
        for records in batch.values():
            for record in records:
                envelope = from_kafka(record.key, record.value, record.headers)
                if envelope.type in types:
                    found[envelope.type][envelope.data["referral_id"]][envelope.id] += 1
    try:
        deadline = time.monotonic() + timeout_s
        ends: dict = {}
        while not ends or [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end in {timeout_s} s")
            take(await consumer.getmany(timeout_ms=500, max_records=1000))
            if not ends and consumer.assignment():
                ends = await consumer.end_offsets(list(consumer.assignment()))
    finally:
        await consumer.stop()
    return found


@dataclass
class WebhookTally:
    """One event type's webhooks at the receiver, per referral. A delivery is its webhook-id: the same id again
    is a repeat of one delivery (at-least-once, docs/notification.md: a replica may die between the 2xx and
    recording it; receivers deduplicate on it); another id for the same referral and type is a duplicate."""
    kind: str
    expected: set[str]
    ids_by_referral: dict[str, set[str]] = field(default_factory=dict)
    posts_by_id: Counter = field(default_factory=Counter)

    @classmethod
    def of(cls, kind: str, items: list[list], expected: set[str]) -> "WebhookTally":
        tally = cls(kind, expected, defaultdict(set))
        for item in items:
            if item[TYPE] == kind:
                tally.ids_by_referral[item[REFERRAL_ID]].add(item[WEBHOOK_ID])
                tally.posts_by_id[item[WEBHOOK_ID]] += 1
        return tally

    @property
    def lost(self) -> int:
        return sum(1 for ref in self.expected if not self.ids_by_referral.get(ref))

    @property
    def duplicated(self) -> int:
        return sum(1 for ref in self.expected if len(self.ids_by_referral.get(ref, ())) > 1)

    @property
    def unexpected(self) -> int:
        return len(set(self.ids_by_referral) - self.expected)

    @property
    def repeated_posts(self) -> int:
        return sum(n - 1 for n in self.posts_by_id.values())

    def summary(self) -> dict:
        return {"expected": len(self.expected), "lost": self.lost, "duplicated": self.duplicated,
                "unexpected": self.unexpected, "repeated_posts_same_webhook_id": self.repeated_posts}


def signatures_failed(items: list[list]) -> int:
    return sum(1 for item in items if item[SIGNATURE_OK] is not True)


def cases_of(items: list[list], kind: str) -> dict[str, set[str]]:
    """Case id -> the referral ids its webhooks of ``kind`` named."""
    cases: dict[str, set[str]] = defaultdict(set)
    for item in items:
        if item[TYPE] == kind:
            cases[item[CASE_ID]].add(item[REFERRAL_ID])
    return cases


async def busiest_leader(bus: Bus) -> int:
    """The node (its node.id) that leads the most partitions of the flow's topics: the one whose loss hurts most."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bus.bootstrap, **bus.reader_options)
    await admin.start()
    try:
        described = await admin.describe_topics([bus.prefix + t for t in declared().all_topics()])
    finally:
        await admin.close()
    leaders = Counter(p["leader"] for topic in described for p in topic["partitions"])
    return leaders.most_common(1)[0][0]


async def leased_deliveries(notification_dsn: str) -> int:
    """Webhook attempts under an unexpired lease, right after a notification replica was SIGKILLed: the only ones
    whose 2xx may have come without being recorded, so the only ones that may be POSTed again (both replicas'
    leases are counted: a bound from above)."""
    conn = await asyncpg.connect(notification_dsn)
    try:
        return await conn.fetchval("SELECT count(*) FROM notification_delivery WHERE status = 'pending' "
                                   "AND lease_token IS NOT NULL AND lease_expires_at > now()")
    finally:
        await conn.close()


async def consumer_lag(bus: Bus) -> int:
    """Records on the services' topics that some service's consumer group has not committed yet (bus.yaml's
    groups): a redelivery still to come after the databases went quiet would be counted too late otherwise."""
    lag = 0
    for groups in declared().consumers.values():
        for group, topics in groups.items():
            for topic in topics:
                position = await group_position(bus.bootstrap, bus.prefix + group, bus.prefix + topic,
                                                client_options=bus.reader_options)
                lag += position.lag
    return lag


async def quiet(dsns: dict[str, str]) -> dict[str, int]:
    """What is still on its way: outbox rows not yet acknowledged by the broker (every service), webhooks not yet
    delivered (notification). All zero: every event is on its topic, and every POST the receiver will get came."""
    left = {}
    for service, dsn in dsns.items():
        conn = await asyncpg.connect(dsn)
        try:
            left[f"{service} outbox"] = await conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
            if service == "notification":
                left["webhooks"] = await conn.fetchval(
                    "SELECT count(*) FROM notification_delivery WHERE status <> 'delivered'")
        finally:
            await conn.close()
    return left
