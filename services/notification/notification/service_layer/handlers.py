"""Notification handlers: turn referral and hold events into durable delivery records, one transaction each."""

import json
from typing import Any

from opentelemetry.propagate import inject
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from enlace_platform.consumer import PoisonMessage
from enlace_platform.db import CommitWaker
from enlace_platform.envelope import Envelope
from notification.adapters.orm import DeliveryRow, SubscriptionRow
from notification.config import NotificationSettings
from notification.domain.email import email_content
from notification.domain.events import EMAIL_EVENT_TYPES, HOLD_EVENT_TYPES
from notification.domain.webhooks import EMAIL, WEBHOOK, delivery_id, email_recipient_agency_ids, matches, \
    party_agency_ids, thin_payload

DELIVERIES_FLAG = "deliveries_pending"

_AGENCY_FIELDS = ("from_agency_id", "to_agency_id", "coordinator_agency_id")


def _check_contract(envelope: Envelope) -> None:
    """The few fields notification relies on; anything else is the referral service's business."""
    data = envelope.data
    required = ("referral_id", "case_id") + (("hold_id",) if envelope.type in HOLD_EVENT_TYPES else ())
    for name in required:
        if not isinstance(data.get(name), str) or not data[name]:
            raise PoisonMessage(f"{envelope.type} payload lacks a string {name}")
    for name in _AGENCY_FIELDS:
        if data.get(name) is not None and not isinstance(data[name], str):
            raise PoisonMessage(f"{envelope.type} payload has a non-string {name}")
    if not isinstance(data.get("from_agency_id"), str):
        raise PoisonMessage(f"{envelope.type} payload lacks from_agency_id")


def make_referral_event_handler(settings: NotificationSettings):
    email_on = bool(settings.smtp_host)

    async def on_referral_event(session: AsyncSession, envelope: Envelope) -> None:
        _check_contract(envelope)
        data = envelope.data
        parties = party_agency_ids(data)
        mail_to = email_recipient_agency_ids(envelope.type, data) if email_on and envelope.type in EMAIL_EVENT_TYPES \
            else set()
        if not parties:
            return
        subscriptions = (await session.exec(
            select(SubscriptionRow).where(SubscriptionRow.agency_id.in_(parties), SubscriptionRow.active))).all()
        carrier: dict[str, str] = {}
        inject(carrier)  # the later webhook POST continues this trace
        body = json.dumps(thin_payload(envelope.type, envelope.id, envelope.time, data, settings.referral_api_url),
                          sort_keys=True)
        for sub in subscriptions:
            if not matches(sub.event_types, envelope.type):
                continue
            await _add_delivery(session, sub, envelope, WEBHOOK, body, carrier)
            if sub.email and sub.agency_id in mail_to:
                link = json.loads(body)["data"]["links"]["referral"]
                content = email_content(envelope.type, data, link)
                await _add_delivery(session, sub, envelope, EMAIL, json.dumps(
                    {"to": sub.email, "subject": content.subject, "body": content.body}), carrier)

    return on_referral_event


async def _add_delivery(session: AsyncSession, sub: SubscriptionRow, envelope: Envelope, channel: str, payload: str,
                        carrier: dict[str, Any]) -> None:
    new_id = delivery_id(sub.id, envelope.id, channel)
    if await session.get(DeliveryRow, new_id) is not None:
        return  # the same event again (e.g. republished under its id): never a second delivery
    session.add(DeliveryRow(
        id=new_id, subscription_id=sub.id, agency_id=sub.agency_id, channel=channel, event_id=envelope.id,
        event_type=envelope.type, payload=payload, traceparent=carrier.get("traceparent"),
        tracestate=carrier.get("tracestate")))
    CommitWaker.mark(session, DELIVERIES_FLAG)
