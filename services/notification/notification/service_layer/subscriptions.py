"""Use cases on subscriptions and deliveries, each one transaction (the caller's session)."""

import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_
from sqlmodel import update
from sqlmodel.ext.asyncio.session import AsyncSession

from enlace_platform.crypto import CorruptValue
from notification.adapters.orm import DeliveryRow, SubscriptionRow
from notification.adapters.signing_secrets import SigningSecrets
from notification.domain.delivery import CANCELLED, PENDING
from notification.domain.webhooks import new_secret

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


async def disable_subscription(session: AsyncSession, sub: SubscriptionRow, reason: str) -> None:
    """No more deliveries: the subscription stops, and what it still had waiting is cancelled (not lost
    silently: the log shows each one as cancelled, with the reason)."""
    sub.active = False
    sub.disabled_reason = reason
    sub.updated_at = _now()
    session.add(sub)
    await session.exec(cancel_waiting(sub.id, reason, sub.updated_at))


def cancel_waiting(subscription_id: str, reason: str, now: datetime):
    """The statement that cancels a disabled subscription's waiting deliveries. An attempt in flight keeps its
    lease: its outcome is recorded (delivered, or cancelled if it failed)."""
    return (update(DeliveryRow)
            .where(DeliveryRow.subscription_id == subscription_id, DeliveryRow.status == PENDING,
                   or_(DeliveryRow.lease_expires_at.is_(None), DeliveryRow.lease_expires_at < now))
            .values(status=CANCELLED, last_error=f"subscription disabled: {reason}", lease_token=None,
                    lease_expires_at=None))


def disable_if_active(subscription_id: str, reason: str, now: datetime):
    """The statement that disables an active subscription (rowcount 1 if it was active); then cancel_waiting."""
    return (update(SubscriptionRow).where(SubscriptionRow.id == subscription_id, SubscriptionRow.active)
            .values(active=False, disabled_reason=reason, updated_at=now))


def create_secret(sub: SubscriptionRow, secrets: SigningSecrets) -> str:
    """A new subscription's secret, sealed into its row; returns it in clear (shown once)."""
    secret = new_secret()
    secrets.seal(sub, secret=secret, previous=None)
    return secret


def rotate_secret(sub: SubscriptionRow, overlap: timedelta, secrets: SigningSecrets) -> str:
    """A new current secret (returned in clear); the old one keeps signing until the overlap ends. Rotating
    again during an overlap drops the oldest secret: only two ever sign.

    A current secret that no longer opens (the service's key-encryption key changed) cannot sign anyway:
    it is dropped without an overlap, and the rotation is how the agency gets signed deliveries again."""
    now = _now()
    try:
        previous = secrets.current(sub)
    except CorruptValue as exc:
        log.warning("rotating %s without an overlap: %s", sub.id, exc)
        previous = None
    secret = new_secret()
    secrets.seal(sub, secret=secret, previous=previous)
    sub.previous_secret_expires_at = now + overlap if previous is not None else now
    sub.updated_at = now
    return secret


def schedule_redelivery(delivery: DeliveryRow) -> None:
    """Send it again, under the same webhook-id, with a fresh retry cycle (attempts and age start over)."""
    now = _now()
    delivery.status = PENDING
    delivery.cycle_attempts = 0
    delivery.cycle_started_at = now
    delivery.next_attempt_at = now
    delivery.lease_token = None
    delivery.lease_expires_at = None
