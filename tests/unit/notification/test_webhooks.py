"""Webhook rules: who hears about what, what the payload may contain, and the retry schedule."""

import json
import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from notification.domain.webhooks import SubscriptionView, next_attempt_delay, thin_payload, wants, webhook_id

SUB = SubscriptionView(id="sub-1", agency_id="MX-DIF",
                       event_types=("org.enlace.referral.requested.v1", "org.enlace.referral.accepted.v1"),
                       active=True)


# --- wants ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("subscription", "event_type", "parties", "expected"), [
    (SUB, "org.enlace.referral.requested.v1", {"MX-INM", "MX-DIF"}, True),
    (SUB, "org.enlace.referral.accepted.v1", {"MX-DIF"}, True),
    # Not a party to the referral: never hears about it, even if subscribed to the type.
    (SUB, "org.enlace.referral.requested.v1", {"MX-INM", "MX-COMAR"}, False),
    (SUB, "org.enlace.referral.requested.v1", set(), False),
    # A party, but did not subscribe to this type.
    (SUB, "org.enlace.referral.completed.v1", {"MX-DIF"}, False),
    # Prefix or substring of a subscribed type is not a match.
    (SUB, "org.enlace.referral.requested", {"MX-DIF"}, False),
    # Inactive subscription hears nothing.
    (SubscriptionView("sub-2", "MX-DIF", SUB.event_types, active=False),
     "org.enlace.referral.requested.v1", {"MX-DIF"}, False),
    # Agency ids match exactly.
    (SUB, "org.enlace.referral.requested.v1", {"mx-dif", "MX-DIF-2"}, False),
])
def test_wants(subscription, event_type, parties, expected):
    assert wants(subscription, event_type, parties) is expected


# --- webhook_id ----------------------------------------------------------------------------------


def test_webhook_id_is_stable_per_subscription_and_event():
    assert webhook_id("sub-1", "evt-1") == webhook_id("sub-1", "evt-1")


@pytest.mark.parametrize(("a", "b"), [
    (("sub-1", "evt-1"), ("sub-1", "evt-2")),
    (("sub-1", "evt-1"), ("sub-2", "evt-1")),
    (("sub-1", "evt-1"), ("evt-1", "sub-1")),
])
def test_webhook_id_differs_otherwise(a, b):
    assert webhook_id(*a) != webhook_id(*b)


def test_webhook_id_format():
    ids = {webhook_id(f"sub-{i}", f"evt-{j}") for i in range(20) for j in range(20)}
    assert len(ids) == 400
    for wid in ids:
        assert wid.startswith("msg_")
        assert len(wid) > len("msg_") + 16
        # Standard Webhooks puts the id into the signed content "id.timestamp.body": no dots or spaces.
        assert "." not in wid and " " not in wid


# --- thin_payload --------------------------------------------------------------------------------

OCCURRED = datetime(2024, 5, 17, 8, 30, 15, tzinfo=UTC)
FULL_EVENT_DATA = {
    "referral_id": "ref-123",
    "case_id": "case-9",
    "status": "requested",
    "need_code": "UNACCOMPANIED_CHILD",
    # Everything below must never leave through a webhook.
    "person_id": "person-77",
    "given_name": "Ana",
    "family_name": "López",
    "date_of_birth": "2009-03-01",
    "notes": "disclosed sexual violence 2 days ago",
    "from_agency_id": "MX-INM",
    "to_agency_id": "MX-DIF",
}


def test_thin_payload_has_exactly_the_allowed_shape():
    payload = thin_payload("org.enlace.referral.requested.v1", OCCURRED, FULL_EVENT_DATA,
                           "https://referral.example/api")
    assert set(payload) == {"type", "timestamp", "data"}
    assert payload["type"] == "org.enlace.referral.requested.v1"
    assert set(payload["data"]) == {"referral_id", "case_id", "status", "links"}
    assert payload["data"]["referral_id"] == "ref-123"
    assert payload["data"]["case_id"] == "case-9"
    assert payload["data"]["status"] == "requested"
    assert "UNACCOMPANIED_CHILD" not in json.dumps(payload), "need codes stay off webhooks"
    assert payload["data"]["links"] == {"referral": "https://referral.example/api/referrals/ref-123"}


def test_thin_payload_never_carries_personal_data():
    text = json.dumps(thin_payload("t", OCCURRED, FULL_EVENT_DATA, "https://referral.example"))
    for secret in ("person-77", "Ana", "López", "2009-03-01", "sexual violence", "MX-INM"):
        assert secret not in text


def test_thin_payload_timestamp_is_the_occurrence_time():
    local = datetime(2024, 5, 17, 2, 30, 15, tzinfo=timezone(timedelta(hours=-6)))
    payload = thin_payload("t", local, FULL_EVENT_DATA, "https://referral.example")
    assert datetime.fromisoformat(payload["timestamp"]) == OCCURRED


@pytest.mark.parametrize("base", ["https://referral.example/api", "https://referral.example/api/"])
def test_thin_payload_link_has_no_double_slash(base):
    link = thin_payload("t", OCCURRED, FULL_EVENT_DATA, base)["data"]["links"]["referral"]
    assert link == "https://referral.example/api/referrals/ref-123"


def test_thin_payload_tolerates_missing_optional_codes_but_keeps_the_shape():
    payload = thin_payload("t", OCCURRED, {"referral_id": "r", "case_id": "c"}, "https://x")
    assert set(payload["data"]) == {"referral_id", "case_id", "status", "links"}
    assert payload["data"]["status"] is None


def test_thin_payload_requires_the_ids():
    with pytest.raises(KeyError):
        thin_payload("t", OCCURRED, {"case_id": "c"}, "https://x")
    with pytest.raises(KeyError):
        thin_payload("t", OCCURRED, {"referral_id": "r"}, "https://x")


# --- next_attempt_delay --------------------------------------------------------------------------


def _ceiling(attempts: int, base: float, cap: float) -> float:
    return min(cap, base * 2 ** max(0, attempts - 1))


@pytest.mark.parametrize("seed", range(25))
def test_delay_is_within_half_ceiling_and_ceiling(seed):
    rng = random.Random(seed)
    base, cap = 2.0, 600.0
    for attempts in range(0, 15):
        delay = next_attempt_delay(attempts, base, cap, rng).total_seconds()
        ceiling = _ceiling(attempts, base, cap)
        assert ceiling / 2 <= delay <= ceiling, (attempts, delay, ceiling)


def test_delay_doubles_per_attempt_before_the_cap():
    base, cap = 1.0, 1e9
    # With the random draw fixed at the top of its range, the delay is the ceiling itself.
    class Top(random.Random):
        def uniform(self, a, b):
            return b

    delays = [next_attempt_delay(n, base, cap, Top()).total_seconds() for n in range(1, 8)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]


def test_delay_never_shrinks_before_the_cap():
    # Below the cap the ranges [c/2, c] and [c, 2c] touch, so growth holds whatever the jitter draws.
    # (Once capped, successive draws from [max/2, max] may of course go down.)
    for seed in range(50):
        rng = random.Random(seed)
        delays = [next_attempt_delay(n, 0.5, 1e6, rng) for n in range(1, 20)]
        assert all(later >= earlier for earlier, later in zip(delays, delays[1:]))
    assert next_attempt_delay(10, 0.5, 300.0, random.Random(1)) > next_attempt_delay(1, 0.5, 300.0, random.Random(1))


def test_delay_is_capped_at_max():
    for seed in range(50):
        delay = next_attempt_delay(40, 2.0, 600.0, random.Random(seed))
        assert timedelta(seconds=300) <= delay <= timedelta(seconds=600)


def test_delay_is_jittered():
    delays = {next_attempt_delay(5, 2.0, 600.0, random.Random(seed)) for seed in range(20)}
    assert len(delays) > 1, "identical delays would make every failing receiver retry in lockstep"


def test_delay_is_reproducible_with_the_same_seed():
    a = [next_attempt_delay(n, 2.0, 600.0, random.Random(7)) for n in range(1, 10)]
    b = [next_attempt_delay(n, 2.0, 600.0, random.Random(7)) for n in range(1, 10)]
    assert a == b
