"""Which referrals a withdrawn consent cancels: open ones to that agency type, never a mandatory need."""

import pytest

from referral.domain.consent import cancelled_by_withdrawal, withheld_from_receiver
from referral.domain.lifecycle import OPEN, TERMINAL


@pytest.mark.parametrize("status", sorted(OPEN))
def test_an_open_referral_to_the_withdrawn_type_is_cancelled(status):
    assert cancelled_by_withdrawal(status, "STRANDED_ASSISTED_RETURN", "child_protection", "child_protection")


@pytest.mark.parametrize("status", sorted(OPEN))
@pytest.mark.parametrize("need", ["UNACCOMPANIED_CHILD", "SEPARATED_CHILD"])
def test_mandatory_child_protection_goes_on(status, need):
    assert not cancelled_by_withdrawal(status, need, "child_protection", "child_protection")


@pytest.mark.parametrize("status", sorted(TERMINAL))
def test_what_already_ended_stays_as_it_ended(status):
    assert not cancelled_by_withdrawal(status, "MEDICAL_URGENT", "health", "health")


def test_other_agency_types_and_the_queue_are_untouched():
    assert not cancelled_by_withdrawal("accepted", "MEDICAL_URGENT", "health", "psychosocial")
    assert not cancelled_by_withdrawal("requested", "SGBV_SURVIVOR", None, "health")  # waits for consent


def test_the_receiver_of_a_withdrawn_type_loses_the_free_text_except_for_mandatory_needs():
    withdrawn = frozenset({"health"})
    assert withheld_from_receiver("MEDICAL_URGENT", "health", withdrawn)
    assert not withheld_from_receiver("MEDICAL_URGENT", "health", frozenset())
    assert not withheld_from_receiver("SGBV_SURVIVOR", "psychosocial", withdrawn)
    assert not withheld_from_receiver("UNACCOMPANIED_CHILD", "child_protection", frozenset({"child_protection"}))
    assert not withheld_from_receiver("MEDICAL_URGENT", None, withdrawn)  # queued: no receiver
