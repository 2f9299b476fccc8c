"""Webhook rules: who hears about which event, what the thin payload holds, secrets and endpoints. Pure."""

import base64
import ipaddress
import secrets
import uuid
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from notification.domain.events import EVENT_TYPE_WILDCARDS, HOLD_EVENT_TYPES, REFERRAL_ESCALATED, \
    REFERRAL_OVERDUE, REFERRAL_REASSIGNED, REFERRAL_REQUESTED, WEBHOOK_EVENT_TYPES

_NAMESPACE = uuid.UUID("5b0b6f0e-7f5c-4c59-9a57-6d3c8f1e2a10")
SECRET_PREFIX = "whsec_"

WEBHOOK = "webhook"
EMAIL = "email"


# --- who hears about what --------------------------------------------------------------------------

def unknown_event_types(patterns: list[str]) -> list[str]:
    """The entries that are neither a catalogued event type nor a family wildcard."""
    return [p for p in patterns if p not in WEBHOOK_EVENT_TYPES and p not in EVENT_TYPE_WILDCARDS]


def matches(patterns: list[str] | tuple[str, ...], event_type: str) -> bool:
    """Exact type, or a family wildcard such as ``referral.*``; nothing else (no prefixes, no ``*``)."""
    for pattern in patterns:
        if pattern == event_type:
            return True
        if pattern in EVENT_TYPE_WILDCARDS and event_type.startswith(pattern[:-1]):
            return True
    return False


def party_agency_ids(data: dict[str, Any]) -> set[str]:
    """Agencies named by the event: sender, receiver (null while queued), the jurisdiction's coordinator,
    and on a reassignment the receiver that lost the referral."""
    named = ("from_agency_id", "to_agency_id", "coordinator_agency_id", "previous_to_agency_id")
    return {a for a in (data.get(key) for key in named) if isinstance(a, str) and a}


def email_recipient_agency_ids(event_type: str, data: dict[str, Any]) -> set[str]:
    """Who is e-mailed: a new referral goes to its receiver (the coordinator while it is queued), and so
    does one handed to a new receiver (reassigned); a missed deadline or an escalation goes to the receiver
    and the coordinator. Senders are not e-mailed."""
    to_agency, coordinator = data.get("to_agency_id"), data.get("coordinator_agency_id")
    if event_type == REFERRAL_REQUESTED:
        chosen = {to_agency} if to_agency else {coordinator}
    elif event_type == REFERRAL_REASSIGNED:
        chosen = {to_agency}
    elif event_type in (REFERRAL_OVERDUE, REFERRAL_ESCALATED):
        chosen = {to_agency, coordinator}
    else:
        chosen = set()
    return {a for a in chosen if isinstance(a, str) and a}


# --- ids and payloads ------------------------------------------------------------------------------

def webhook_id(subscription_id: str, event_id: str) -> str:
    """Stable per (subscription, event): a retry or redelivery carries the same webhook-id."""
    return f"msg_{uuid.uuid5(_NAMESPACE, f'{subscription_id}:{event_id}').hex}"


def delivery_id(subscription_id: str, event_id: str, channel: str) -> str:
    """One delivery per (event, subscription, channel); the webhook one is the webhook-id."""
    return webhook_id(subscription_id, event_id if channel == WEBHOOK else f"{event_id}:{channel}")


def thin_payload(event_type: str, event_id: str, occurred_at: datetime, data: dict[str, Any],
                 referral_api_url: str) -> dict[str, Any]:
    """Standard Webhooks payload shape {type, timestamp, data}: ids, status and a link only.

    No personal data, and no need code either: a code such as TRAFFICKING_PRESUMED tied to a
    case id is itself sensitive. The receiver reads it from the referral API under its own token.
    Raises KeyError when the event lacks an id the payload needs.
    """
    referral_id = data["referral_id"]
    body: dict[str, Any] = {
        "event_id": event_id,
        "referral_id": referral_id,
        "case_id": data["case_id"],
        "status": data.get("status"),
        "links": {"referral": f"{referral_api_url.rstrip('/')}/referrals/{referral_id}"},
    }
    if event_type in HOLD_EVENT_TYPES:
        body["hold_id"] = data["hold_id"]
    return {"type": event_type, "timestamp": occurred_at.isoformat(), "data": body}


# --- secrets ---------------------------------------------------------------------------------------

def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def is_signing_secret(value: str) -> bool:
    """A secret as :func:`new_secret` makes them: ``whsec_`` + base64 of at least one byte."""
    if not value.startswith(SECRET_PREFIX):
        return False
    try:
        return len(base64.b64decode(value[len(SECRET_PREFIX):], validate=True)) > 0
    except ValueError:
        return False


def signing_secrets(current: str, previous: str | None, previous_valid_until: datetime | None,
                    now: datetime) -> list[str]:
    """The secrets a delivery is signed with: the current one, plus the previous one during the overlap."""
    if previous and previous_valid_until is not None and now < previous_valid_until:
        return [current, previous]
    return [current]


# --- endpoints -------------------------------------------------------------------------------------

def webhook_url_problem(url: str, *, allow_loopback: bool) -> str | None:
    """Why a webhook URL is refused, or None. http(s) only; loopback only where allowed (development)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an absolute http or https URL"
    if parts.username or parts.password:
        return "must not carry credentials"
    host = parts.hostname.lower().rstrip(".")  # "localhost." is localhost too
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    loopback = host == "localhost" or host.endswith(".localhost") or (address is not None and address.is_loopback)
    if loopback and not allow_loopback:
        return "loopback addresses are not allowed here"
    if address is not None and not loopback and (address.is_private or address.is_link_local or address.is_unspecified
                                                  or address.is_multicast or address.is_reserved):
        return "private, link-local and multicast addresses are not allowed here"  # development included
    return None
