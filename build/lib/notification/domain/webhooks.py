"""Webhook rules: who gets which event, what the thin payload holds, and when to retry. Pure."""

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

_NAMESPACE = uuid.UUID("5b0b6f0e-7f5c-4c59-9a57-6d3c8f1e2a10")


@dataclass(frozen=True)
class SubscriptionView:
    id: str
    agency_id: str
    event_types: tuple[str, ...]
    active: bool


def wants(subscription: SubscriptionView, event_type: str, party_agency_ids: set[str]) -> bool:
    """An agency hears only about referrals it sends or receives, and only the types it chose."""
    return subscription.active and subscription.agency_id in party_agency_ids and event_type in subscription.event_types


def webhook_id(subscription_id: str, event_id: str) -> str:
    """Stable per (subscription, event): a retry or redelivery carries the same webhook-id."""
    return f"msg_{uuid.uuid5(_NAMESPACE, f'{subscription_id}:{event_id}').hex}"


def thin_payload(event_type: str, occurred_at: datetime, data: dict[str, Any], referral_api_url: str) -> dict[str, Any]:
    """Standard Webhooks payload shape: ids, status and a link only.

    No personal data, and no need code either: a code such as TRAFFICKING_PRESUMED tied to a
    case id is itself sensitive. The receiver reads it from the referral API under its own token.
    """
    referral_id = data["referral_id"]
    return {
        "type": event_type,
        "timestamp": occurred_at.isoformat(),
        "data": {
            "referral_id": referral_id,
            "case_id": data["case_id"],
            "status": data.get("status"),
            "links": {"referral": f"{referral_api_url.rstrip('/')}/referrals/{referral_id}"},
        },
    }


def next_attempt_delay(attempts: int, base_s: float, max_s: float, rng: random.Random | None = None) -> timedelta:
    """Exponential backoff after ``attempts`` failed attempts, jittered within [ceiling/2, ceiling]."""
    ceiling = min(max_s, base_s * 2 ** min(max(0, attempts - 1), 32))
    return timedelta(seconds=(rng or random).uniform(ceiling / 2, ceiling))
