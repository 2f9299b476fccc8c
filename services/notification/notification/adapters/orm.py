"""Notification's own tables: subscriptions, deliveries (the durable retry schedule) and the attempt log."""

import uuid
from datetime import UTC, datetime

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from enlace_platform.agencies import KnownAgency
from notification.domain.delivery import PENDING


def _now() -> datetime:
    return datetime.now(UTC)


class SubscriptionRow(SQLModel, table=True):
    __tablename__ = "notification_subscription"

    id: str = Field(default_factory=lambda: f"sub_{uuid.uuid4().hex}", primary_key=True)
    agency_id: str = Field(index=True)
    url: str
    event_types: list[str] = Field(sa_column=Column(JSON, nullable=False))
    # Both sealed (enc1:…, notification.adapters.signing_secrets): a database copy cannot sign webhooks.
    secret: str = Field(description="The whsec_… signing secret, sealed; shown in clear once, at creation")
    previous_secret: str | None = Field(default=None,
                                        description="Sealed; still signs until previous_secret_expires_at")
    previous_secret_expires_at: datetime | None = None
    email: str | None = None
    active: bool = True
    disabled_reason: str | None = None  # deleted | gone (the receiver answered 410)
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)


class DeliveryRow(SQLModel, table=True):
    """One event for one subscription on one channel. Its row is the retry schedule: it survives restarts."""

    __tablename__ = "notification_delivery"
    __table_args__ = (UniqueConstraint("event_id", "subscription_id", "channel"),)

    id: str = Field(primary_key=True, description="The webhook-id header (stable across retries)")
    subscription_id: str = Field(foreign_key="notification_subscription.id", index=True)
    agency_id: str = Field(index=True)
    channel: str = "webhook"  # webhook | email
    event_id: str
    event_type: str
    payload: str = Field(description="Webhook: the exact JSON body. E-mail: JSON {to, subject, body}.")
    status: str = Field(default=PENDING, index=True)  # pending | delivered | dead | cancelled
    attempts: int = 0
    cycle_attempts: int = 0  # attempts since the cycle began (creation or manual redelivery)
    cycle_started_at: datetime = Field(default_factory=_now)
    next_attempt_at: datetime = Field(default_factory=_now, index=True)
    lease_token: str | None = None  # set while one dispatcher holds the attempt
    lease_expires_at: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None
    created_at: datetime = Field(default_factory=_now, index=True)
    delivered_at: datetime | None = None


class DeliveryAttemptRow(SQLModel, table=True):
    __tablename__ = "notification_delivery_attempt"

    id: str = Field(default_factory=lambda: str(uuid.uuid4()), primary_key=True)
    delivery_id: str = Field(foreign_key="notification_delivery.id", index=True)
    number: int = Field(description="1 for the first attempt of the delivery, and so on")
    attempted_at: datetime = Field(default_factory=_now)
    status_code: int | None = Field(default=None, description="HTTP status, or the SMTP reply code")
    latency_ms: float
    error: str | None = None


TABLES = [KnownAgency.__table__, SubscriptionRow.__table__, DeliveryRow.__table__, DeliveryAttemptRow.__table__]
