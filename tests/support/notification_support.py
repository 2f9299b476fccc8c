"""Test helpers for the notification service: the app on the real broker, events as the referral service
publishes them (per docs/event-catalog.md), a webhook receiver that verifies every signature with the
Standard Webhooks reference library and can go down, answer slowly or answer 410, and a real SMTP server
(aiosmtpd)."""

import asyncio
import contextlib
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import uvicorn
from aiokafka import AIOKafkaProducer
from aiosmtpd.controller import Controller
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from enlace_platform.contracts import published_contracts
from enlace_platform.crypto import PREFIX
from enlace_platform.envelope import Envelope, to_kafka
from enlace_platform.topics import REFERRAL_PROTECTION_HOLD, REFERRAL_REFERRAL
from notification.adapters.orm import SubscriptionRow
from notification.adapters.signing_secrets import SigningSecrets
from notification.config import NotificationSettings
from notification.entrypoints.app import create_app
from tests.support.harness import bearer, eventually, fast_settings, free_port, running_app

REFERRAL_SOURCE = "/enlace/referral"


def supervisor(dev_issuer_dir: Path, agency_id: str, agency_type: str, jurisdiction: str = "MX") -> dict[str, str]:
    """A supervisor's token: subscriptions (endpoints, secrets, redelivery) are theirs to manage."""
    return bearer(dev_issuer_dir, agency_id, agency_type, jurisdiction, roles=["supervisor"])


def notification_settings(*, tmp_path: Path, bootstrap: str, prefix: str, dev_issuer_dir: Path,
                          **overrides) -> NotificationSettings:
    """Quick retries (tens of milliseconds) so a whole retry schedule fits in a test."""
    values = dict(delivery_retry_base_s=0.05, delivery_retry_max_s=0.4, dispatcher_fallback_poll_s=0.2,
                  webhook_timeout_s=10.0)
    values.update(overrides)
    return fast_settings(NotificationSettings, tmp_path=tmp_path, bootstrap=bootstrap, prefix=prefix,
                         dev_issuer_dir=dev_issuer_dir, **values)


async def consumers_assigned(runtime) -> None:
    """Waits until the app's consumers own their partitions. On a fresh broker the first group join
    waits for __consumer_offsets to be created, which can outlast a test's usual liveness bound."""
    async def assigned():
        return runtime.runners and all(r.ready.is_set() for r in runtime.runners)

    await eventually(assigned, timeout=120, what="the consumers' partition assignment")


async def stored_secrets(runtime, subscription_id: str) -> tuple[str, str | None]:
    """A subscription's current and previous secret as stored: each must be sealed; returned opened."""
    async with runtime.sessions() as session:
        row = await session.get(SubscriptionRow, subscription_id)
    assert row.secret.startswith(PREFIX), "the current secret is stored sealed"
    assert row.previous_secret is None or row.previous_secret.startswith(PREFIX), "the previous one too"
    secrets = SigningSecrets.of(runtime)
    return secrets.current(row), secrets.previous(row)


# --- events as the referral service writes them ------------------------------------------------------

def referral_data(*, status: str = "requested", to_agency_id: str | None = "MX-PFPNNA",
                  to_agency_type: str | None = "child_protection", **overrides) -> dict[str, Any]:
    """A referral.* payload with every field of the catalog's shared shape."""
    now = datetime.now(UTC)
    data: dict[str, Any] = {
        "referral_id": str(uuid.uuid4()),
        "case_id": str(uuid.uuid4()),
        "person_id": str(uuid.uuid4()),
        "need_code": "UNACCOMPANIED_CHILD",
        "urgency": "immediate",
        "status": status,
        "is_lead": True,
        "from_agency_id": "MX-INM",
        "to_agency_id": to_agency_id,
        "to_agency_type": to_agency_type if to_agency_id else None,
        "to_service_id": f"{to_agency_id}-1" if to_agency_id else None,
        "coordinator_agency_id": "MX-COORD",
        "due_at": (now + timedelta(hours=24)).isoformat(),
        "previous_referral_id": None,
        "actor_agency_id": None,
        "reason_code": None,
        "outcome_code": None,
        "occurred_at": now.isoformat(),
    }
    data.update(overrides)
    return data


# Per type: the status after the event and the codes the catalog asks for.
_REFERRAL_SAMPLES: dict[str, dict[str, Any]] = {
    "referral.requested.v1": {"status": "requested"},
    "referral.received.v1": {"status": "received", "actor_agency_id": "MX-PFPNNA"},
    "referral.accepted.v1": {"status": "accepted", "actor_agency_id": "MX-PFPNNA"},
    "referral.rejected.v1": {"status": "rejected", "actor_agency_id": "MX-PFPNNA", "reason_code": "NO_CAPACITY"},
    "referral.started.v1": {"status": "in-progress", "actor_agency_id": "MX-PFPNNA"},
    "referral.put_on_hold.v1": {"status": "on-hold", "actor_agency_id": "MX-PFPNNA"},
    "referral.completed.v1": {"status": "completed", "actor_agency_id": "MX-PFPNNA",
                              "outcome_code": "CHILD_PLACED_IN_CARE", "due_at": None},
    "referral.cancelled.v1": {"status": "cancelled", "actor_agency_id": "MX-COORD", "reason_code": "DUPLICATE"},
    "referral.failed.v1": {"status": "failed", "actor_agency_id": "MX-PFPNNA", "reason_code": "PERSON_NOT_REACHABLE"},
    "referral.reassigned.v1": {"status": "requested", "actor_agency_id": "MX-COORD"},
    "referral.note_added.v1": {"status": "accepted", "actor_agency_id": "MX-PFPNNA"},
    "referral.overdue.v1": {"status": "requested", "reason_code": "ACCEPT_DEADLINE"},
    "referral.escalated.v1": {"status": "requested", "reason_code": "OVERDUE"},
}


def sample_event(event_type: str, referral: dict[str, Any] | None = None) -> Envelope:
    """A valid event of any consumed type, about ``referral`` (a referral_data()) if given."""
    referral = referral or referral_data()
    if event_type.startswith("protection_hold."):
        return event(event_type, hold_data(referral, released=event_type == "protection_hold.released.v1"))
    return event(event_type, {**referral, **_REFERRAL_SAMPLES[event_type]})


def hold_data(referral: dict[str, Any], *, released: bool = False, **overrides) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    data: dict[str, Any] = {
        "hold_id": str(uuid.uuid4()), "case_id": referral["case_id"], "person_id": referral["person_id"],
        "referral_id": referral["referral_id"], "need_code": referral["need_code"],
        "from_agency_id": referral["from_agency_id"], "to_agency_id": referral["to_agency_id"],
    }
    if released:
        data.update(release_reason="COMPLETED_FINAL", outcome_code="CHILD_PLACED_IN_CARE", released_at=now)
    else:
        data.update(placed_at=now, not_before=None)
    data.update(overrides)
    return data


def event(event_type: str, data: dict[str, Any], *, check: bool = True) -> Envelope:
    """The envelope the referral service would publish; by default the payload must pass its published schema
    (the consumer enforces it too: a breaking payload goes to the dead-letter topic)."""
    if check:
        problems = published_contracts().violations(event_type, data)
        assert not problems, f"test event {event_type} breaks its contract: {problems}"
    subject = data["hold_id"] if event_type.startswith("protection_hold.") else data["referral_id"]
    return Envelope(type=event_type, source=REFERRAL_SOURCE, key=data["case_id"], subject=subject, data=data)


def topic_of(event_type: str) -> str:
    return REFERRAL_PROTECTION_HOLD if event_type.startswith("protection_hold.") else REFERRAL_REFERRAL


@contextlib.asynccontextmanager
async def kafka_producer(bootstrap: str):
    """An idempotent producer, as the referral service's relay uses."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


async def publish(producer: AIOKafkaProducer, prefix: str, *envelopes: Envelope) -> None:
    for envelope in envelopes:
        key, value, headers = to_kafka(envelope)
        await producer.send_and_wait(f"{prefix}{topic_of(envelope.type)}", value=value, key=key, headers=headers)


# --- a webhook receiver as an agency runs one ----------------------------------------------------------

@dataclass
class Received:
    webhook_id: str
    headers: dict[str, str]
    body: bytes
    verified_by: set[str]  # the names of the secrets whose signature verified

    @property
    def verified(self) -> bool:
        return bool(self.verified_by)


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # leave the test runner's signal handlers alone
        yield


@dataclass
class SigningReceiver:
    """Verifies each POST against every secret it knows (by name) and keeps it.

    ``status_code`` is the answer; ``gate`` (if set) is awaited before answering, to make it slow;
    ``on_receive`` callbacks run as each request arrives. ``down()``/``up()`` stop and restart the
    server on the same port: while down, the sender gets connection refused.
    """

    secrets: dict[str, str] = field(default_factory=dict)
    status_code: int = 204
    gate: asyncio.Event | None = None
    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    on_receive: list[Callable[[Received], None]] = field(default_factory=list)
    _server: uvicorn.Server | None = None
    _task: asyncio.Task | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def ids(self) -> list[str]:
        return [r.webhook_id for r in self.received]

    async def receive(self, request: Request) -> Received:
        """Verifies the request against every known secret, keeps it, and runs the callbacks."""
        body = await request.body()
        headers = dict(request.headers)
        verified_by = set()
        for name, secret in self.secrets.items():
            try:
                Webhook(secret).verify(body, headers)
                verified_by.add(name)
            except WebhookVerificationError:
                pass
        got = Received(headers.get("webhook-id", ""), headers, body, verified_by)
        self.received.append(got)
        for callback in self.on_receive:
            callback(got)
        return got

    async def _hook(self, request: Request) -> Response:
        got = await self.receive(request)
        if self.gate is not None:
            await self.gate.wait()
        if not got.verified:
            return Response(status_code=401)
        return Response(status_code=self.status_code)

    async def up(self) -> None:
        app = Starlette(routes=[Route("/hooks", self._hook, methods=["POST"])])
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self._server = _QuietServer(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False,
                                                   timeout_graceful_shutdown=1))
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                raise RuntimeError("the receiver did not start") from self._task.exception()
            await asyncio.sleep(0.02)

    async def down(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            await self._task
            self._server = self._task = None

    @contextlib.asynccontextmanager
    async def running(self):
        await self.up()
        try:
            yield self
        finally:
            if self.gate is not None:
                self.gate.set()  # never leave a request hanging at teardown
            await self.down()


# --- a real SMTP server --------------------------------------------------------------------------------

class _Collect:
    def __init__(self, messages: list) -> None:
        self._messages = messages

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
        message = message_from_bytes(envelope.content, policy=policy.default)
        self._messages.append((list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"


class SmtpSink:
    """aiosmtpd on 127.0.0.1 and a free port, in this process; keeps every message it accepts."""

    def __init__(self) -> None:
        self.port = free_port()
        self.messages: list[tuple[list[str], EmailMessage]] = []
        self._controller: Controller | None = None

    def start(self) -> None:
        self._controller = Controller(_Collect(self.messages), hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def to(self, address: str) -> list[EmailMessage]:
        return [m for rcpts, m in self.messages if address in rcpts]


# --- the notification app on the real broker ------------------------------------------------------------

class Notification:
    """Starts (and restarts) the notification app on one database and one set of topics."""

    def __init__(self, kafka_bootstrap, dev_issuer_dir, tmp_path, prefix, producer) -> None:
        self._common = dict(tmp_path=tmp_path, bootstrap=kafka_bootstrap, prefix=prefix, dev_issuer_dir=dev_issuer_dir)
        self.prefix = prefix
        self.producer = producer
        self.dev_issuer_dir = dev_issuer_dir

    @contextlib.asynccontextmanager
    async def running(self, **overrides):
        app = create_app(notification_settings(**self._common, **overrides))
        async with running_app(app) as client:
            client.runtime = app.state.runtime
            await consumers_assigned(client.runtime)
            yield client

    def headers(self, agency_id: str, agency_type: str) -> dict[str, str]:
        return supervisor(self.dev_issuer_dir, agency_id, agency_type)

    async def publish(self, *envelopes) -> None:
        await publish(self.producer, self.prefix, *envelopes)


async def subscribe(client, notification, agency, receiver: SigningReceiver, event_types=("referral.*",), name="s"):
    r = await client.post("/subscriptions", headers=notification.headers(*agency),
                          json={"url": receiver.url, "event_types": list(event_types)})
    assert r.status_code == 201, r.text
    receiver.secrets[name] = r.json()["secret"]
    return r.json()


async def deliveries(client, notification, agency, **params) -> list[dict]:
    r = await client.get("/deliveries", headers=notification.headers(*agency), params=params)
    assert r.status_code == 200, r.text
    return r.json()["items"]


async def detail(client, notification, agency, delivery_id) -> dict:
    return (await client.get(f"/deliveries/{delivery_id}", headers=notification.headers(*agency))).json()


async def the_delivery(client, notification, agency, predicate, what) -> dict:
    async def check():
        found = [d for d in await deliveries(client, notification, agency) if predicate(d)]
        return found[0] if found else None
    return await eventually(check, what=what)
