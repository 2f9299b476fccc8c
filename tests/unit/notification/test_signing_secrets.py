"""Signing secrets sealed into the subscription row: what signs when, rotation, and values that do not open."""

import os
from datetime import UTC, datetime, timedelta

import pytest

from enlace_platform.crypto import PREFIX, CorruptValue
from notification.adapters.orm import SubscriptionRow
from notification.adapters.signing_secrets import SigningSecrets
from notification.service_layer.subscriptions import create_secret, rotate_secret

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


@pytest.fixture
def secrets() -> SigningSecrets:
    return SigningSecrets(os.urandom(32))


def subscription(secrets: SigningSecrets) -> tuple[SubscriptionRow, str]:
    sub = SubscriptionRow(agency_id="MX-PFPNNA", url="https://hooks.example/enlace", event_types=["referral.*"])
    return sub, create_secret(sub, secrets)


def test_a_new_secret_is_returned_in_clear_and_stored_sealed(secrets):
    sub, secret = subscription(secrets)
    assert secret.startswith("whsec_") and sub.secret.startswith(PREFIX) and secret[6:] not in sub.secret
    assert sub.previous_secret is None
    assert secrets.current(sub) == secret
    assert secrets.for_signing(sub, NOW) == [secret]


def test_after_a_rotation_both_sign_during_the_overlap_and_then_only_the_new(secrets):
    sub, old = subscription(secrets)
    new = rotate_secret(sub, HOUR, secrets)
    assert new != old and sub.secret.startswith(PREFIX) and sub.previous_secret.startswith(PREFIX)
    until = sub.previous_secret_expires_at
    assert secrets.for_signing(sub, until - timedelta(seconds=1)) == [new, old]
    assert secrets.for_signing(sub, until) == [new]
    assert secrets.previous(sub) == old


def test_rotating_during_an_overlap_drops_the_oldest(secrets):
    sub, first = subscription(secrets)
    second = rotate_secret(sub, HOUR, secrets)
    third = rotate_secret(sub, HOUR, secrets)
    assert (secrets.current(sub), secrets.previous(sub)) == (third, second)
    assert first not in secrets.for_signing(sub, datetime.now(UTC))


def test_an_unreadable_current_secret_is_rotated_away_without_an_overlap(secrets):
    sub, _ = subscription(secrets)
    other_key = SigningSecrets(os.urandom(32))
    before = datetime.now(UTC)
    new = rotate_secret(sub, HOUR, other_key)  # the service now runs with another key-encryption key
    assert sub.previous_secret is None and before <= sub.previous_secret_expires_at <= datetime.now(UTC)
    assert other_key.for_signing(sub, datetime.now(UTC)) == [new]


def test_an_expired_previous_secret_is_not_opened(secrets):
    sub, _ = subscription(secrets)
    current = rotate_secret(sub, HOUR, secrets)
    sub.previous_secret = PREFIX + "bm9pc2U="  # does not open; it would no longer sign anyway
    assert secrets.for_signing(sub, sub.previous_secret_expires_at + timedelta(seconds=1)) == [current]
    with pytest.raises(CorruptValue):
        secrets.for_signing(sub, sub.previous_secret_expires_at - timedelta(seconds=1))


@pytest.mark.parametrize("stored", ["whsec_c2VjcmV0LWluLWNsZWFy", "not-a-secret", PREFIX + "bm9pc2U=", PREFIX + "%%"])
def test_a_value_in_clear_or_that_does_not_open_never_signs(secrets, stored):
    sub, _ = subscription(secrets)
    sub.secret = stored
    with pytest.raises(CorruptValue) as raised:
        secrets.for_signing(sub, NOW)
    assert stored not in str(raised.value)


@pytest.mark.parametrize("value", ["not-a-secret", "whsec_a"])
def test_a_sealed_value_that_is_not_a_signing_secret_never_signs(secrets, value):
    sub, _ = subscription(secrets)
    secrets.seal(sub, secret=value, previous=None)
    with pytest.raises(CorruptValue, match="not a signing secret"):
        secrets.for_signing(sub, NOW)
