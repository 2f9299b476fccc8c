"""Notification's own tables: subscriptions, deliveries and the attempt log."""

import uuid
from datetime import UTC, datetime

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel


def _now() -> datetime:
    return datetime.now(UTC)


class SubscriptionRow(SQLModel, table=True):
    __tablename__ = "notification_subscription"

    id: str = Field(default_factory=lambda: f"sub_{uuid.uuid4().hex}", primary_key=True)
    agency_id: str = Field(index=True)
    url: str
    event_types: list[str] = Field(sa_column=Column(JSON, nullable=False))
    secret: str = Field(description="whsec_… signing secret; shown once at creation")
    email: str | None = None
    active: bool = True
    created_at: datetime = Field(default_factory=_now)


class DeliveryRow(SQLModel, table=True):
    __tablename__ = "notification_delivery"
    __table_args__ = (UniqueConstraint("subscription_id", "event_id"),)

    id: str = Field(primary_key=True, description="The webhook-id header")
    subscription_id: str = Field(foreign_key="notification_subscription.id", index=True)
    event_id: str
    event_type: str
    payload: str
    status: str = Field(default="pending", index=True)  # pending | delivered | dead
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=_now, index=True)
    last_status_code: int | None = None
    last_error: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None
    created_at: datetime = Field(default_factory=_now)
    delivered_at: datetime | None = None


class DeliveryAttemptRow(SQLModel, table=True):
    __tablename__ = "notification_delivery_attempt"

    id: str = Field(default_factory=lambda: str(uuid.uuid4()), primary_key=True)
    delivery_id: str = Field(foreign_key="notification_delivery.id", index=True)
    attempted_at: datetime = Field(default_factory=_now)
    status_code: int | None = None
    latency_ms: float
    error: str | None = None


TABLES = [SubscriptionRow.__table__, DeliveryRow.__table__, DeliveryAttemptRow.__table__]
