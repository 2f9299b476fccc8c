"""Notification handlers: turn referral events into durable delivery records."""

import json

from opentelemetry.propagate import inject
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from enlace_platform.consumer import PoisonMessage
from enlace_platform.db import CommitWaker
from enlace_platform.envelope import Envelope
from notification.adapters.orm import DeliveryRow, SubscriptionRow
from notification.config import NotificationSettings
from notification.domain.webhooks import SubscriptionView, thin_payload, wants, webhook_id

DELIVERIES_FLAG = "deliveries_pending"


def make_referral_event_handler(settings: NotificationSettings):
    async def on_referral_event(session: AsyncSession, envelope: Envelope) -> None:
        data = envelope.data
        parties = {a for a in (data.get("to_agency_id"), data.get("from_agency_id")) if a}
        try:
            payload = thin_payload(envelope.type, envelope.time, data, settings.referral_api_url)
        except KeyError as exc:
            raise PoisonMessage(f"{envelope.type} payload lacks {exc}") from exc
        carrier: dict[str, str] = {}
        inject(carrier)  # the later webhook POST continues this trace
        subscriptions = (await session.exec(
            select(SubscriptionRow).where(SubscriptionRow.agency_id.in_(parties), SubscriptionRow.active))).all()
        for sub in subscriptions:
            view = SubscriptionView(sub.id, sub.agency_id, tuple(sub.event_types), sub.active)
            if not wants(view, envelope.type, parties):
                continue
            session.add(DeliveryRow(
                id=webhook_id(sub.id, envelope.id), subscription_id=sub.id, event_id=envelope.id,
                event_type=envelope.type, payload=json.dumps(payload, sort_keys=True),
                traceparent=carrier.get("traceparent"), tracestate=carrier.get("tracestate"),
            ))
            CommitWaker.mark(session, DELIVERIES_FLAG)

    return on_referral_event
