"""Notification handlers: turn referral and hold events into durable delivery records, one transaction each.

The information barrier (enlace_platform.firewall): an agency the directory marks as enforcement hears only of
firewall.ENFORCEMENT_EVENT_TYPES, by webhook and e-mail alike, whatever its subscription asks for, and of no
referral.* event of a sensitive need (firewall.referral_shown; hold events it still hears); an agency the
directory does not know (any more) hears nothing. The directory decides, never a token."""

import json
from datetime import UTC, datetime
from typing import Any

from opentelemetry.propagate import inject
from sqlalchemy import bindparam, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel.ext.asyncio.session import AsyncSession

from enlace_platform.agencies import AgencyRegistry
from enlace_platform.consumer import PoisonMessage
from enlace_platform.db import CommitWaker
from enlace_platform.envelope import Envelope
from enlace_platform.firewall import ENFORCEMENT_EVENT_TYPES, Viewer, referral_shown
from notification.adapters.orm import DeliveryRow, SubscriptionRow
from notification.config import NotificationSettings
from notification.domain.delivery import PENDING
from notification.domain.email import email_content
from notification.domain.events import EMAIL_EVENT_TYPES, HOLD_EVENT_TYPES
from notification.domain.webhooks import EMAIL, WEBHOOK, delivery_id, email_recipient_agency_ids, matches, \
    party_agency_ids, thin_payload

DELIVERIES_FLAG = "deliveries_pending"
DELIVERY = DeliveryRow.__table__
SUBSCRIPTION = SubscriptionRow.__table__
# Built once, so each reuses its compiled form.
_ACTIVE_SUBSCRIPTIONS = (
    select(SUBSCRIPTION.c.id, SUBSCRIPTION.c.agency_id, SUBSCRIPTION.c.event_types, SUBSCRIPTION.c.email)
    .where(SUBSCRIPTION.c.agency_id.in_(bindparam("agencies", expanding=True)), SUBSCRIPTION.c.active))
_INSERT_OR_IGNORE = {"sqlite": sqlite.insert(DELIVERY).on_conflict_do_nothing(),
                     "postgresql": postgresql.insert(DELIVERY).on_conflict_do_nothing()}

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


def make_referral_event_handler(settings: NotificationSettings, agencies: AgencyRegistry):
    email_on = bool(settings.smtp_host)

    def may_hear(agency_id: str, event_type: str, data: dict) -> bool | None:
        """Whether the agency may hear of this event; None: it may, as an enforcement agency. Its receiver and
        its coordinator do the protection work and hear all of it, whatever their mark (firewall.viewer_in)."""
        agency = agencies.get(agency_id)
        if agency is None:
            return False
        if agency_id in (data.get("to_agency_id"), data.get("coordinator_agency_id")):
            return True
        if agency.enforcement:
            need_code = data.get("need_code")
            if event_type not in ENFORCEMENT_EVENT_TYPES:
                return False
            if event_type.startswith("referral.") and not referral_shown(Viewer.ENFORCEMENT, need_code):
                return False  # a referral of a sensitive need is not shown to it at all; its hold events are
            return None
        return True

    async def on_referral_event(session: AsyncSession, envelope: Envelope) -> None:
        _check_contract(envelope)
        data = envelope.data
        parties = party_agency_ids(data)
        mail_to = email_recipient_agency_ids(envelope.type, data) if email_on and envelope.type in EMAIL_EVENT_TYPES \
            else set()
        if not parties:
            return
        # Core statements on the consumer's transaction: no ORM objects per delivery.
        conn = await session.connection()
        subscriptions = (await conn.execute(_ACTIVE_SUBSCRIPTIONS, {"agencies": list(parties)})).all()
        carrier: dict[str, str] = {}
        inject(carrier)  # the later webhook POST continues this trace
        payload = thin_payload(envelope.type, envelope.id, envelope.time, data, settings.referral_api_url)
        body = json.dumps(payload, sort_keys=True)
        now = datetime.now(UTC)
        rows = []
        for sub in subscriptions:
            hears = may_hear(sub.agency_id, envelope.type, data)
            if hears is False or not matches(sub.event_types, envelope.type):
                continue
            rows.append(_delivery(sub, envelope, WEBHOOK, body, carrier, now))
            if sub.email and sub.agency_id in mail_to:
                content = email_content(envelope.type, data, payload["data"]["links"]["referral"],
                                        enforcement=hears is None)
                rows.append(_delivery(sub, envelope, EMAIL, json.dumps(
                    {"to": sub.email, "subject": content.subject, "body": content.body}), carrier, now))
        if rows:
            await _insert_new(conn, rows)
            CommitWaker.mark(session, DELIVERIES_FLAG)

    return on_referral_event


def _delivery(sub, envelope: Envelope, channel: str, payload: str, carrier: dict[str, Any], now: datetime) -> dict:
    return {"id": delivery_id(sub.id, envelope.id, channel), "subscription_id": sub.id, "agency_id": sub.agency_id,
            "channel": channel, "event_id": envelope.id, "event_type": envelope.type, "payload": payload,
            "status": PENDING, "attempts": 0, "cycle_attempts": 0, "cycle_started_at": now, "next_attempt_at": now,
            "traceparent": carrier.get("traceparent"), "tracestate": carrier.get("tracestate"), "created_at": now}


async def _insert_new(conn: AsyncConnection, rows: list[dict]) -> None:
    """Inserts the deliveries that do not exist yet: the same event again (e.g. republished under its id) never
    makes a second delivery (the ids are derived from subscription, event and channel)."""
    insert_or_ignore = _INSERT_OR_IGNORE.get(conn.dialect.name)
    if insert_or_ignore is not None:
        await conn.execute(insert_or_ignore, rows)
        return
    existing = set((await conn.execute(select(DELIVERY.c.id).where(
        DELIVERY.c.id.in_([row["id"] for row in rows])))).scalars())
    new = [row for row in rows if row["id"] not in existing]
    if new:
        await conn.execute(insert(DELIVERY), new)
