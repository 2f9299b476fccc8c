"""Use cases on subscriptions and deliveries, each one transaction (the caller's session)."""

from datetime import UTC, datetime, timedelta

from sqlalchemy import or_
from sqlmodel import update
from sqlmodel.ext.asyncio.session import AsyncSession

from notification.adapters.orm import DeliveryRow, SubscriptionRow
from notification.domain.delivery import CANCELLED, PENDING
from notification.domain.webhooks import new_secret


def _now() -> datetime:
    return datetime.now(UTC)


async def disable_subscription(session: AsyncSession, sub: SubscriptionRow, reason: str) -> None:
    """No more deliveries: the subscription stops, and what it still had waiting is cancelled (not lost
    silently: the log shows each one as cancelled, with the reason)."""
    sub.active = False
    sub.disabled_reason = reason
    sub.updated_at = _now()
    session.add(sub)
    # An attempt in flight keeps its lease: its outcome is recorded (delivered, or cancelled if it failed).
    await session.exec(
        update(DeliveryRow)
        .where(DeliveryRow.subscription_id == sub.id, DeliveryRow.status == PENDING,
               or_(DeliveryRow.lease_expires_at.is_(None), DeliveryRow.lease_expires_at < sub.updated_at))
        .values(status=CANCELLED, last_error=f"subscription disabled: {reason}", lease_token=None,
                lease_expires_at=None))


def rotate_secret(sub: SubscriptionRow, overlap: timedelta) -> None:
    """A new current secret; the old one keeps signing until the overlap ends. Rotating again during an
    overlap drops the oldest secret: only two ever sign."""
    now = _now()
    sub.previous_secret, sub.previous_secret_expires_at = sub.secret, now + overlap
    sub.secret = new_secret()
    sub.updated_at = now


def schedule_redelivery(delivery: DeliveryRow) -> None:
    """Send it again, under the same webhook-id, with a fresh retry cycle (attempts and age start over)."""
    now = _now()
    delivery.status = PENDING
    delivery.cycle_attempts = 0
    delivery.cycle_started_at = now
    delivery.next_attempt_at = now
    delivery.lease_token = None
    delivery.lease_expires_at = None
