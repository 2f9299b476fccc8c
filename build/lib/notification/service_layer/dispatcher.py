"""Delivers due webhooks, retries with backoff and jitter, and keeps the schedule in the database.

The schedule (``next_attempt_at``) lives in the delivery row, so a restart resumes it. New
deliveries wake the dispatcher on commit. Each endpoint gets its deliveries one at a time,
while different endpoints are served concurrently, so a slow receiver delays only itself.
"""

import asyncio
import logging
from collections import defaultdict
from datetime import UTC, datetime

import httpx
from opentelemetry import trace
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.propagate import extract
from sqlmodel import select

from enlace_platform.db import CommitWaker
from enlace_platform.runtime import ServiceRuntime
from notification.adapters.orm import DeliveryAttemptRow, DeliveryRow, SubscriptionRow
from notification.adapters.webhook_sender import SendResult, send_signed
from notification.config import NotificationSettings
from notification.domain.webhooks import next_attempt_delay
from notification.service_layer.handlers import DELIVERIES_FLAG

log = logging.getLogger(__name__)
tracer = trace.get_tracer("enlace.notification")


def _now() -> datetime:
    return datetime.now(UTC)


class Dispatcher:
    def __init__(self, runtime: ServiceRuntime, settings: NotificationSettings) -> None:
        self._runtime = runtime
        self._settings = settings
        self._waker = CommitWaker(runtime.sessions, DELIVERIES_FLAG)

    async def run(self) -> None:
        client = httpx.AsyncClient(timeout=self._settings.webhook_timeout_s, follow_redirects=False)
        HTTPXClientInstrumentor.instrument_client(client)
        try:
            while not self._runtime.stopping.is_set():
                try:
                    await self.dispatch_due(client)
                except Exception:
                    log.exception("dispatch pass failed; retrying")
                await self._waker.wait(self._settings.dispatcher_fallback_poll_s)
        finally:
            self._waker.detach()
            await client.aclose()

    async def dispatch_due(self, client: httpx.AsyncClient) -> int:
        async with self._runtime.sessions() as session:
            rows = (await session.exec(
                select(DeliveryRow, SubscriptionRow)
                .join(SubscriptionRow, SubscriptionRow.id == DeliveryRow.subscription_id)
                .where(DeliveryRow.status == "pending", DeliveryRow.next_attempt_at <= _now())
                .order_by(DeliveryRow.next_attempt_at).limit(100))).all()
        by_endpoint: dict[str, list] = defaultdict(list)
        for delivery, sub in rows:
            by_endpoint[sub.url].append((delivery, sub))
        await asyncio.gather(*(self._serve_endpoint(client, items) for items in by_endpoint.values()))
        return len(rows)

    async def _serve_endpoint(self, client: httpx.AsyncClient, items: list) -> None:
        for delivery, sub in items:
            parent = extract({"traceparent": delivery.traceparent or "", "tracestate": delivery.tracestate or ""})
            with tracer.start_as_current_span("webhook deliver", context=parent, kind=trace.SpanKind.INTERNAL,
                                              attributes={"enlace.service": "notification",
                                                          "webhook.id": delivery.id,
                                                          "cloudevents.event_type": delivery.event_type}):
                result = await send_signed(client, url=sub.url, secret=sub.secret, message_id=delivery.id,
                                           payload=delivery.payload)
            await self._record(delivery.id, sub.id, result)

    async def _record(self, delivery_id: str, subscription_id: str, result: SendResult) -> None:
        s = self._settings
        async with self._runtime.sessions() as session:
            delivery = await session.get(DeliveryRow, delivery_id)
            delivery.attempts += 1
            delivery.last_status_code = result.status_code
            delivery.last_error = result.error
            session.add(DeliveryAttemptRow(delivery_id=delivery_id, status_code=result.status_code,
                                           latency_ms=result.latency_ms, error=result.error))
            if result.ok:
                delivery.status, delivery.delivered_at = "delivered", _now()
            elif result.status_code == 410:
                # The receiver said the endpoint is gone for good: stop sending to it.
                delivery.status = "dead"
                (await session.get(SubscriptionRow, subscription_id)).active = False
            elif delivery.attempts >= s.webhook_max_attempts:
                delivery.status = "dead"
                log.warning("webhook %s dead after %d attempts", delivery_id, delivery.attempts)
            else:
                delivery.next_attempt_at = _now() + next_attempt_delay(
                    delivery.attempts, s.webhook_retry_base_s, s.webhook_retry_max_s)
            await session.commit()
