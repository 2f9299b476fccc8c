"""Webhook rules: who hears about what, what the payload may contain, secrets and endpoints."""

import base64
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from notification.domain.events import EMAIL_EVENT_TYPES, HOLD_EVENT_TYPES, REFERRAL_EVENT_TYPES, WEBHOOK_EVENT_TYPES
from notification.domain.webhooks import (
    EMAIL, WEBHOOK, delivery_id, email_recipient_agency_ids, is_signing_secret, matches, new_secret, party_agency_ids,
    signing_secrets, thin_payload, unknown_event_types, webhook_id, webhook_url_problem,
)

# --- event types -----------------------------------------------------------------------------------


def test_the_catalog_types_are_all_subscribable():
    assert len(REFERRAL_EVENT_TYPES) == 13 and len(HOLD_EVENT_TYPES) == 2
    assert set(WEBHOOK_EVENT_TYPES) == set(REFERRAL_EVENT_TYPES) | set(HOLD_EVENT_TYPES)
    assert all(t.startswith("referral.") and t.endswith(".v1") for t in REFERRAL_EVENT_TYPES)
    assert all(t.startswith("protection_hold.") for t in HOLD_EVENT_TYPES)
    assert set(EMAIL_EVENT_TYPES) == {"referral.requested.v1", "referral.reassigned.v1", "referral.overdue.v1",
                                      "referral.escalated.v1"}


@pytest.mark.parametrize(("patterns", "unknown"), [
    (["referral.requested.v1", "protection_hold.placed.v1"], []),
    (["referral.*", "protection_hold.*"], []),
    (["referral.exploded.v9", "referral.requested.v1"], ["referral.exploded.v9"]),
    (["*"], ["*"]),
    (["referral.requested"], ["referral.requested"]),
    (["case.screened.v1"], ["case.screened.v1"]),  # intake's events are not relayed
    (["referral.requested.*"], ["referral.requested.*"]),
])
def test_unknown_event_types(patterns, unknown):
    assert unknown_event_types(patterns) == unknown


@pytest.mark.parametrize(("patterns", "event_type", "expected"), [
    (["referral.requested.v1"], "referral.requested.v1", True),
    (["referral.requested.v1"], "referral.accepted.v1", False),
    (["referral.*"], "referral.overdue.v1", True),
    (["referral.*"], "protection_hold.placed.v1", False),
    (["protection_hold.*"], "protection_hold.released.v1", True),
    (["referral.requested.v1", "protection_hold.*"], "protection_hold.placed.v1", True),
    # A prefix of a type is not a match; neither is a wildcard that is not a family.
    (["referral.requested"], "referral.requested.v1", False),
    (["referral.req*"], "referral.requested.v1", False),
    (["*"], "referral.requested.v1", False),
    ([], "referral.requested.v1", False),
])
def test_matches(patterns, event_type, expected):
    assert matches(patterns, event_type) is expected


# --- who is told -----------------------------------------------------------------------------------

ROUTED = {"from_agency_id": "MX-INM", "to_agency_id": "MX-PFPNNA", "coordinator_agency_id": "MX-COORD"}
QUEUED = {"from_agency_id": "MX-INM", "to_agency_id": None, "coordinator_agency_id": "MX-COORD"}


@pytest.mark.parametrize(("data", "expected"), [
    (ROUTED, {"MX-INM", "MX-PFPNNA", "MX-COORD"}),
    (QUEUED, {"MX-INM", "MX-COORD"}),
    # referral.requested.v1 from the foundation: no coordinator field.
    ({"from_agency_id": "MX-INM", "to_agency_id": "MX-COMAR"}, {"MX-INM", "MX-COMAR"}),
    ({"from_agency_id": "", "to_agency_id": 7}, set()),
    ({}, set()),
    # referral.reassigned.v1: the agency that lost the referral is told too.
    ({**ROUTED, "to_agency_id": "MX-SNDIF", "previous_to_agency_id": "MX-PFPNNA"},
     {"MX-INM", "MX-SNDIF", "MX-COORD", "MX-PFPNNA"}),
    ({**QUEUED, "previous_to_agency_id": None}, {"MX-INM", "MX-COORD"}),
])
def test_parties_are_the_agencies_the_event_names(data, expected):
    assert party_agency_ids(data) == expected


@pytest.mark.parametrize(("event_type", "data", "expected"), [
    ("referral.requested.v1", ROUTED, {"MX-PFPNNA"}),  # the receiver, not the sender
    ("referral.requested.v1", QUEUED, {"MX-COORD"}),  # nobody to receive it: the coordinator's queue
    ("referral.overdue.v1", ROUTED, {"MX-PFPNNA", "MX-COORD"}),
    ("referral.escalated.v1", QUEUED, {"MX-COORD"}),
    ("referral.escalated.v1", ROUTED, {"MX-PFPNNA", "MX-COORD"}),
    # Handed to a new receiver (by the coordinator, or a queued one once consent arrives): new for it.
    ("referral.reassigned.v1", ROUTED, {"MX-PFPNNA"}),
    ("referral.reassigned.v1", QUEUED, set()),
    ("referral.accepted.v1", ROUTED, set()),  # not an e-mail event
    ("protection_hold.placed.v1", ROUTED, set()),
])
def test_email_recipients(event_type, data, expected):
    assert email_recipient_agency_ids(event_type, data) == expected


# --- ids -------------------------------------------------------------------------------------------

def test_webhook_id_is_stable_per_subscription_and_event():
    assert webhook_id("sub-1", "evt-1") == webhook_id("sub-1", "evt-1")
    assert delivery_id("sub-1", "evt-1", WEBHOOK) == webhook_id("sub-1", "evt-1")


@pytest.mark.parametrize(("a", "b"), [
    (("sub-1", "evt-1", WEBHOOK), ("sub-1", "evt-2", WEBHOOK)),
    (("sub-1", "evt-1", WEBHOOK), ("sub-2", "evt-1", WEBHOOK)),
    (("sub-1", "evt-1", WEBHOOK), ("evt-1", "sub-1", WEBHOOK)),
    (("sub-1", "evt-1", WEBHOOK), ("sub-1", "evt-1", EMAIL)),
])
def test_delivery_id_differs_otherwise(a, b):
    assert delivery_id(*a) != delivery_id(*b)


def test_webhook_id_format():
    ids = {webhook_id(f"sub-{i}", f"evt-{j}") for i in range(20) for j in range(20)}
    assert len(ids) == 400
    for wid in ids:
        assert wid.startswith("msg_")
        assert len(wid) > len("msg_") + 16
        # Standard Webhooks puts the id into the signed content "id.timestamp.body": no dots or spaces.
        assert "." not in wid and " " not in wid


# --- thin_payload ----------------------------------------------------------------------------------

OCCURRED = datetime(2024, 5, 17, 8, 30, 15, tzinfo=UTC)
FULL_EVENT_DATA = {
    "referral_id": "ref-123",
    "case_id": "case-9",
    "status": "requested",
    "need_code": "UNACCOMPANIED_CHILD",
    "urgency": "immediate",
    "person_id": "person-77",
    "from_agency_id": "MX-INM",
    "to_agency_id": "MX-DIF",
    # Nothing below is in the catalog; it must never leave through a webhook anyway.
    "given_name": "Ana",
    "family_name": "López",
    "date_of_birth": "2009-03-01",
    "notes": "disclosed sexual violence 2 days ago",
}


def test_thin_payload_has_exactly_the_allowed_shape():
    payload = thin_payload("referral.requested.v1", "evt-1", OCCURRED, FULL_EVENT_DATA, "https://referral.example/api")
    assert set(payload) == {"type", "timestamp", "data"}
    assert payload["type"] == "referral.requested.v1"
    assert payload["data"] == {
        "event_id": "evt-1", "referral_id": "ref-123", "case_id": "case-9", "status": "requested",
        "links": {"referral": "https://referral.example/api/referrals/ref-123"},
    }


def test_hold_payload_adds_the_hold_id():
    data = {**FULL_EVENT_DATA, "hold_id": "hold-5"}
    data.pop("status")
    payload = thin_payload("protection_hold.placed.v1", "evt-2", OCCURRED, data, "https://referral.example")
    assert payload["data"]["hold_id"] == "hold-5"
    assert payload["data"]["status"] is None
    assert payload["data"]["links"] == {"referral": "https://referral.example/referrals/ref-123"}
    with pytest.raises(KeyError):
        thin_payload("protection_hold.placed.v1", "evt-2", OCCURRED, FULL_EVENT_DATA, "https://x")


def test_thin_payload_never_carries_personal_data_or_need_codes():
    text = json.dumps(thin_payload("referral.requested.v1", "e", OCCURRED, FULL_EVENT_DATA, "https://referral.example"))
    for secret in ("person-77", "Ana", "López", "2009-03-01", "sexual violence", "MX-INM", "UNACCOMPANIED_CHILD"):
        assert secret not in text


def test_thin_payload_timestamp_is_the_occurrence_time():
    local = datetime(2024, 5, 17, 2, 30, 15, tzinfo=timezone(timedelta(hours=-6)))
    payload = thin_payload("t", "e", local, FULL_EVENT_DATA, "https://referral.example")
    assert datetime.fromisoformat(payload["timestamp"]) == OCCURRED


@pytest.mark.parametrize("base", ["https://referral.example/api", "https://referral.example/api/"])
def test_thin_payload_link_has_no_double_slash(base):
    link = thin_payload("t", "e", OCCURRED, FULL_EVENT_DATA, base)["data"]["links"]["referral"]
    assert link == "https://referral.example/api/referrals/ref-123"


def test_thin_payload_requires_the_ids():
    with pytest.raises(KeyError):
        thin_payload("t", "e", OCCURRED, {"case_id": "c"}, "https://x")
    with pytest.raises(KeyError):
        thin_payload("t", "e", OCCURRED, {"referral_id": "r"}, "https://x")


# --- secrets ---------------------------------------------------------------------------------------

def test_new_secret_is_a_standard_webhooks_secret():
    secrets = {new_secret() for _ in range(50)}
    assert len(secrets) == 50
    for secret in secrets:
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
        assert is_signing_secret(secret)


@pytest.mark.parametrize("value", ["", "whsec_", "whsec_a", "whsec_!!!!", "c2VjcmV0", "enc1:c2VjcmV0",
                                   "WHSEC_c2VjcmV0"])
def test_anything_else_is_not_a_signing_secret(value):
    assert not is_signing_secret(value)


NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("previous", "until", "expected"), [
    (None, None, ["new"]),
    ("old", NOW + timedelta(seconds=1), ["new", "old"]),
    ("old", NOW, ["new"]),  # the overlap has just ended
    ("old", NOW - timedelta(hours=1), ["new"]),
    ("old", None, ["new"]),
])
def test_signing_secrets_overlap(previous, until, expected):
    assert signing_secrets("new", previous, until, NOW) == expected


# --- endpoints -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "allow_loopback", "refused"), [
    ("https://hooks.agency.example/enlace", False, False),
    ("http://hooks.agency.example/enlace", False, False),
    ("http://127.0.0.1:8099/hooks", True, False),
    ("http://localhost/hooks", True, False),
    ("http://127.0.0.1:8099/hooks", False, True),
    ("http://localhost/hooks", False, True),
    ("http://localhost./hooks", False, True),  # the fully qualified form resolves the same
    ("http://hooks.localhost./x", False, True),
    ("http://[::1]/hooks", False, True),
    ("http://10.0.0.5/hooks", False, True),
    ("http://169.254.169.254/latest/meta-data", False, True),  # cloud metadata endpoint
    ("ftp://hooks.agency.example/", True, True),
    ("https://user:pw@hooks.agency.example/", True, True),
    ("hooks.agency.example/enlace", True, True),
])
def test_webhook_url_rules(url, allow_loopback, refused):
    assert (webhook_url_problem(url, allow_loopback=allow_loopback) is not None) is refused
