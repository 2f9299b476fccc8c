"""Delivers due webhooks and e-mails; retries with backoff and full jitter; the schedule lives in the database.

* Durable: ``next_attempt_at`` is in the delivery row, so a restart resumes the schedule.
* Replica-safe: an attempt is claimed with a lease (a conditional UPDATE); only the holder of the
  lease records the result, and a lease that outlives a crashed holder expires and is claimed again.
* Fair: at most ``delivery_concurrency_per_endpoint`` attempts are in flight per webhook URL (and for
  SMTP), and at most ``delivery_concurrency_total`` in all. The loop never awaits an attempt: each
  runs as its own task with a per-request timeout, so a slow receiver holds only its own slots.
"""

import asyncio
import json
import logging
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import httpx
from opentelemetry import trace
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.propagate import extract
from sqlalchemy import func, or_
from sqlmodel import select, update

from enlace_platform.crypto import CorruptValue
from enlace_platform.db import CommitWaker
from enlace_platform.runtime import ServiceRuntime
from enlace_platform.timeutil import as_utc
from notification.adapters.email_sender import send_email
from notification.adapters.orm import DeliveryAttemptRow, DeliveryRow, SubscriptionRow
from notification.adapters.signing_secrets import SigningSecrets
from notification.adapters.webhook_sender import SendResult, send_signed
from notification.config import NotificationSettings
from notification.domain.delivery import CANCELLED, DEAD, DELIVERED, PENDING, Outcome, RetryPolicy, decide, \
    outcome_of_http
from notification.domain.webhooks import EMAIL, WEBHOOK
from notification.service_layer.handlers import DELIVERIES_FLAG
from notification.service_layer.subscriptions import disable_subscription

log = logging.getLogger(__name__)
# httpx logs every request with its full URL at INFO; a webhook URL may carry the receiver's token.
logging.getLogger("httpx").setLevel(logging.WARNING)
tracer = trace.get_tracer("enlace.notification")

SMTP_ENDPOINT = "smtp:"  # all e-mails share one endpoint: the SMTP server
UNSIGNABLE = ("the subscription's signing secret cannot be read with this service's key; nothing was sent "
              "(restore the service's key, or rotate the secret)")


def _now() -> datetime:
    return datetime.now(UTC)


async def _endpoint_only(span, request) -> None:
    """A webhook URL can be a capability (a token in its path or query, as Slack-style hooks are): traces
    show only its scheme, host and port."""
    attributes = getattr(span, "attributes", None) or {}
    url = httpx.URL(str(request.url))
    for key in ("http.url", "url.full"):
        if key in attributes:
            span.set_attribute(key, f"{url.scheme}://{url.netloc.decode()}/")


class Dispatcher:
    def __init__(self, runtime: ServiceRuntime, settings: NotificationSettings) -> None:
        self._sessions = runtime.sessions
        self._stopping = runtime.stopping
        self._settings = settings
        self._secrets = SigningSecrets.of(runtime)
        self._policy = RetryPolicy(max_attempts=settings.delivery_max_attempts,
                                   max_age=timedelta(seconds=settings.delivery_max_age_s),
                                   base_s=settings.delivery_retry_base_s, max_s=settings.delivery_retry_max_s)
        # Longer than any attempt can take (each send is bounded as a whole), so a lease never expires
        # under a live attempt.
        self._lease = timedelta(seconds=max(settings.webhook_timeout_s, settings.smtp_timeout_s * 3)
                                + settings.delivery_lease_margin_s)
        self._waker = CommitWaker(runtime.sessions, DELIVERIES_FLAG)
        self._in_flight: dict[str, int] = defaultdict(int)
        self._tasks: set[asyncio.Task] = set()
        self._client: httpx.AsyncClient | None = None

    async def run(self) -> None:
        s = self._settings
        self._client = httpx.AsyncClient(timeout=s.webhook_timeout_s, follow_redirects=False,
                                         limits=httpx.Limits(max_connections=s.delivery_concurrency_total))
        HTTPXClientInstrumentor.instrument_client(self._client, request_hook=_endpoint_only)
        try:
            while not self._stopping.is_set():
                wait_s = s.dispatcher_fallback_poll_s
                try:
                    wait_s = await self.start_due()
                except Exception:
                    log.exception("dispatch pass failed; retrying")
                await self._waker.wait(wait_s)
        finally:
            # Attempts in hand finish (each is bounded by its timeout) so their outcome is recorded;
            # anything cut short keeps its lease, which expires, and the attempt is made again.
            try:
                if self._tasks:
                    await asyncio.wait(self._tasks, timeout=s.webhook_timeout_s + 1)
            finally:
                for task in self._tasks:
                    task.cancel()
                self._waker.detach()
                await self._client.aclose()

    # --- picking work ------------------------------------------------------------------------------

    async def start_due(self) -> float:
        """Claim and start every due attempt there is room for; return how long to sleep at most."""
        s = self._settings
        now = _now()
        started = 0
        room = s.delivery_concurrency_total - len(self._tasks)
        if room > 0:
            full = [key for key, n in self._in_flight.items() if n >= s.delivery_concurrency_per_endpoint]
            query = (select(DeliveryRow, SubscriptionRow)
                     .join(SubscriptionRow, SubscriptionRow.id == DeliveryRow.subscription_id)
                     .where(DeliveryRow.status == PENDING, DeliveryRow.next_attempt_at <= now,
                            or_(DeliveryRow.lease_expires_at.is_(None), DeliveryRow.lease_expires_at < now)))
            full_urls = [key for key in full if key != SMTP_ENDPOINT]
            if full_urls:  # a busy endpoint's backlog must not crowd out the others
                query = query.where(or_(DeliveryRow.channel != WEBHOOK, SubscriptionRow.url.not_in(full_urls)))
            if SMTP_ENDPOINT in full or not s.smtp_host:
                query = query.where(DeliveryRow.channel != EMAIL)
            async with self._sessions() as session:
                rows = (await session.exec(query.order_by(DeliveryRow.next_attempt_at).limit(room * 4))).all()
            orphans = [delivery.id for delivery, sub in rows if not sub.active]
            if orphans:  # left pending by an attempt that died while its subscription was disabled
                await self._cancel(orphans, now)
            for delivery, sub in rows:
                if len(self._tasks) >= s.delivery_concurrency_total:
                    break
                if not sub.active:
                    continue
                endpoint = SMTP_ENDPOINT if delivery.channel == EMAIL else sub.url
                if self._in_flight[endpoint] >= s.delivery_concurrency_per_endpoint:
                    continue
                token = await self.claim(delivery.id, now)
                if token is None:
                    continue  # another replica took it
                self._in_flight[endpoint] += 1
                task = asyncio.create_task(self._attempt(delivery, sub, token, endpoint), name=f"deliver-{delivery.id}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                started += 1
        if started:
            return 0.0  # there may be more due work behind what this pass read
        # Due work waiting for a busy endpoint is started when a slot frees (that wakes the loop); sleep
        # until the next scheduled retry, or the fallback poll (leases of dead replicas, other replicas' rows).
        async with self._sessions() as session:
            next_due = (await session.exec(
                select(func.min(DeliveryRow.next_attempt_at))
                .where(DeliveryRow.status == PENDING, DeliveryRow.next_attempt_at > now))).one()
        if next_due is None:
            return s.dispatcher_fallback_poll_s
        return min(s.dispatcher_fallback_poll_s, max(0.0, (as_utc(next_due) - _now()).total_seconds()))

    async def _cancel(self, delivery_ids: list[str], now: datetime) -> None:
        async with self._sessions() as session:
            await session.exec(
                update(DeliveryRow)
                .where(DeliveryRow.id.in_(delivery_ids), DeliveryRow.status == PENDING,
                       or_(DeliveryRow.lease_expires_at.is_(None), DeliveryRow.lease_expires_at < now))
                .values(status=CANCELLED, last_error="subscription disabled", lease_token=None, lease_expires_at=None))
            await session.commit()

    async def claim(self, delivery_id: str, now: datetime) -> str | None:
        """Take the due attempt with a lease; None if another dispatcher holds it or it is not due."""
        token = uuid.uuid4().hex
        async with self._sessions() as session:
            result = await session.exec(
                update(DeliveryRow)
                .where(DeliveryRow.id == delivery_id, DeliveryRow.status == PENDING, DeliveryRow.next_attempt_at <= now,
                       or_(DeliveryRow.lease_expires_at.is_(None), DeliveryRow.lease_expires_at < now))
                .values(lease_token=token, lease_expires_at=now + self._lease))
            await session.commit()
        return token if result.rowcount == 1 else None

    # --- one attempt -------------------------------------------------------------------------------

    async def _attempt(self, delivery: DeliveryRow, sub: SubscriptionRow, token: str, endpoint: str) -> None:
        try:
            parent = extract({"traceparent": delivery.traceparent or "", "tracestate": delivery.tracestate or ""})
            with tracer.start_as_current_span(f"{delivery.channel} deliver", context=parent,
                                              kind=trace.SpanKind.INTERNAL,
                                              attributes={"enlace.service": "notification", "webhook.id": delivery.id,
                                                          "cloudevents.event_type": delivery.event_type}):
                result, outcome = await self._send(delivery, sub)
            await self.record(delivery.id, token, result, outcome)
        except Exception:
            log.exception("delivery %s: attempt failed unexpectedly; its lease will expire and it is retried",
                          delivery.id)
        finally:
            self._in_flight[endpoint] -= 1
            self._waker.wake()  # a slot is free

    async def _send(self, delivery: DeliveryRow, sub: SubscriptionRow) -> tuple[SendResult, Outcome]:
        if delivery.channel == EMAIL:
            message = json.loads(delivery.payload)
            result = await send_email(self._settings, message_id=delivery.id, to=message["to"],
                                      subject=message["subject"], body=message["body"])
            if result.ok:
                return result, Outcome.OK
            permanent = result.status_code is not None and 500 <= result.status_code < 600
            return result, Outcome.PERMANENT if permanent else Outcome.TRANSIENT
        try:
            secrets = self._secrets.for_signing(sub, _now())
        except CorruptValue as exc:
            # Never unsigned, never signed with a wrong secret: a failed attempt, retried on the usual
            # schedule (a restored key or a rotation lets the next one through), and the others go on.
            log.error("delivery %s: %s; not sent", delivery.id, exc)
            return SendResult(None, 0.0, UNSIGNABLE), Outcome.TRANSIENT
        result = await send_signed(self._client, url=sub.url, secret=secrets, message_id=delivery.id,
                                   payload=delivery.payload, total_timeout_s=self._settings.webhook_timeout_s)
        return result, outcome_of_http(result.status_code)

    async def record(self, delivery_id: str, token: str, result: SendResult, outcome: Outcome) -> None:
        """Log the attempt; apply the decision only while still holding the lease ``token``."""
        now = _now()
        async with self._sessions() as session:
            delivery = await session.get(DeliveryRow, delivery_id, with_for_update=True)
            delivery.attempts += 1
            session.add(DeliveryAttemptRow(delivery_id=delivery_id, number=delivery.attempts, attempted_at=now,
                                           status_code=result.status_code, latency_ms=round(result.latency_ms, 1),
                                           error=result.error))
            if delivery.lease_token != token:
                # Our lease ran out and the attempt was taken over (or cancelled): log it, decide nothing.
                session.add(delivery)
                await session.commit()
                return
            delivery.cycle_attempts += 1
            delivery.last_status_code, delivery.last_error = result.status_code, result.error
            delivery.lease_token, delivery.lease_expires_at = None, None
            decision = decide(outcome, attempts=delivery.cycle_attempts, started_at=as_utc(delivery.cycle_started_at),
                              now=now, policy=self._policy, retry_after_s=result.retry_after_s)
            delivery.status = decision.status
            sub = await session.get(SubscriptionRow, delivery.subscription_id)
            if decision.status == DELIVERED:
                delivery.delivered_at = now
            elif decision.status == PENDING:
                delivery.next_attempt_at = decision.next_attempt_at
                if not sub.active:
                    delivery.status, delivery.last_error = CANCELLED, f"subscription disabled: {sub.disabled_reason}"
            elif decision.status == DEAD:
                log.warning("delivery %s (%s) is dead after %d attempts: %s", delivery_id, delivery.channel,
                            delivery.cycle_attempts, result.error or result.status_code)
            session.add(delivery)
            if decision.disable_subscription and sub.active:
                log.warning("subscription %s answered 410 Gone: disabled", sub.id)
                delivery.last_error = "410 Gone: the subscription was disabled"
                await session.flush()
                await disable_subscription(session, sub, "gone")
            await session.commit()
