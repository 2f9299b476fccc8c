"""The idempotent consumer's inbox: one row per (consumer, message id) already handled."""

from datetime import UTC, datetime

from sqlmodel import Field, SQLModel


class ProcessedMessage(SQLModel, table=True):
    __tablename__ = "processed_messages"

    consumer: str = Field(primary_key=True)
    message_id: str = Field(primary_key=True)
    processed_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
