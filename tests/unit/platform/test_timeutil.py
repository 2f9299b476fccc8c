"""Stored times come back from SQLite without a zone; they are UTC."""

from datetime import UTC, datetime, timedelta, timezone

from enlace_platform.timeutil import age_seconds, as_utc


def test_a_naive_stored_time_is_utc_and_an_aware_one_is_kept():
    assert as_utc(datetime(2026, 11, 28, 10, 0)) == datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    mexico = datetime(2026, 11, 28, 4, 0, tzinfo=timezone(timedelta(hours=-6)))
    assert as_utc(mexico) is mexico
    assert as_utc(None) is None


def test_age_in_seconds_is_never_negative_and_zero_for_none():
    now = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    assert age_seconds(datetime(2026, 11, 28, 9, 58), now) == 120
    assert age_seconds(now + timedelta(minutes=1), now) == 0
    assert age_seconds(None, now) == 0
