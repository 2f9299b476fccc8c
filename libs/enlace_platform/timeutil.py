"""Times as the services store them: always UTC, though SQLite hands them back without a zone."""

from datetime import UTC, datetime


def as_utc(value: datetime | None) -> datetime | None:
    """The stored time with its UTC zone restored (an aware time is returned as it is)."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def age_seconds(moment: datetime | None, now: datetime | None = None) -> float:
    """How long ago a stored time was, in seconds; 0 for none (or a time in the future)."""
    if moment is None:
        return 0.0
    return max(0.0, ((now or datetime.now(UTC)) - as_utc(moment)).total_seconds())
