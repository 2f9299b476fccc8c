"""Pure rules of the removal safeguard (hold merging in any order) and of consent."""

import itertools
from datetime import UTC, datetime

import pytest

from intake.domain import consent
from datetime import timedelta

from intake.domain.safeguard import (
    ACTIVE, RELEASED, HoldState, on_placed, on_released, pending_holds, referral_is_open,
)

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
PLACED = HoldState(hold_id="h1", case_id="c1", person_id="p1", referral_id="r1", need_code="UNACCOMPANIED_CHILD",
                   placed_at=T0)


def _release(state):
    return on_released(state, hold_id="h1", case_id="c1", person_id="p1", referral_id="r2",
                       need_code="UNACCOMPANIED_CHILD", released_at=T0, release_reason="COMPLETED_FINAL",
                       outcome_code="CHILD_PLACED_IN_CARE")


STEPS = {"placed": lambda s: on_placed(s, PLACED), "released": _release}


@pytest.mark.parametrize("order", [p for n in (2, 3, 4) for p in itertools.product(STEPS, repeat=n)
                                   if "placed" in p and "released" in p], ids="-".join)
def test_placed_and_released_in_any_order_and_any_repetition_end_released(order):
    state = None
    for step in order:
        state = STEPS[step](state)
    assert state.status == RELEASED
    assert state.referral_id == "r1", "the referral that opened the hold is kept"
    assert state.release_referral_id == "r2" and state.outcome_code == "CHILD_PLACED_IN_CARE"
    assert state.placed_at == T0


def test_placed_twice_is_one_active_hold():
    assert on_placed(on_placed(None, PLACED), PLACED) == PLACED and PLACED.status == ACTIVE


@pytest.mark.parametrize(("status", "open_"), [("requested", True), ("received", True), ("accepted", True),
                                               ("in-progress", True), ("on-hold", True), ("completed", False),
                                               ("cancelled", False), ("failed", False), ("rejected", False)])
def test_open_referral_statuses(status, open_):
    assert referral_is_open(status) is open_


def test_override_only_for_child_protection_and_a_child():
    consent.check_override(recipient_agency_type="child_protection", treated_as_child=True)
    with pytest.raises(consent.OverrideNotAllowed):
        consent.check_override(recipient_agency_type="health", treated_as_child=True)
    with pytest.raises(consent.OverrideNotAllowed):
        consent.check_override(recipient_agency_type="child_protection", treated_as_child=False)


def test_covers_needs_the_agency_type_and_purpose():
    grants = [consent.ConsentGrant("asylum_office", "referral", "consent"),
              consent.ConsentGrant("child_protection", "referral", "mandatory_override"),
              consent.ConsentGrant("health", "follow_up", "consent")]
    assert consent.covers(grants, agency_type="asylum_office", purpose="referral")
    assert consent.covers(grants, agency_type="child_protection", purpose="referral")
    assert not consent.covers(grants, agency_type="health", purpose="referral")
    assert not consent.covers(grants, agency_type="anti_trafficking", purpose="referral")
    # An override is only ever child protection's: one recorded for anyone else covers nothing.
    assert not consent.covers([consent.ConsentGrant("health", "referral", "mandatory_override")],
                              agency_type="health", purpose="referral")


def test_scope_is_distinct_and_stable():
    g = consent.ConsentGrant
    assert consent.scope([g("health", "referral", "consent"), g("asylum_office", "referral", "consent"),
                          g("health", "referral", "consent")]) == [g("asylum_office", "referral", "consent"),
                                                                   g("health", "referral", "consent")]


def test_a_hold_bearing_need_is_pending_until_a_hold_answers_it():
    needs = ["UNACCOMPANIED_CHILD", "MEDICAL_URGENT", "INTERNATIONAL_PROTECTION"]
    assert pending_holds(T0, needs, []) == ["UNACCOMPANIED_CHILD", "INTERNATIONAL_PROTECTION"]
    assert pending_holds(T0, needs, [PLACED]) == ["INTERNATIONAL_PROTECTION"], "an active hold answers"
    released_after = _release(PLACED)
    assert released_after.released_at == T0
    assert pending_holds(T0, ["UNACCOMPANIED_CHILD"], [released_after]) == []
    released_before = HoldState(**{**released_after.__dict__, "released_at": T0 - timedelta(days=30)})
    assert pending_holds(T0, ["UNACCOMPANIED_CHILD"], [released_before]) == ["UNACCOMPANIED_CHILD"], \
        "a hold released before this screening does not answer it"
    assert pending_holds(T0, ["MEDICAL_URGENT", "DISABILITY"], []) == []
