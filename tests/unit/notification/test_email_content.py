"""What an e-mail says: enough to act on, nothing personal, no need code."""

import pytest

from notification.domain.email import email_content

DATA = {"referral_id": "3f1c2b9e-8a8d-4a3e-9b7e-0d6a2f4c5e11", "case_id": "c1", "person_id": "p-77",
        "need_code": "SGBV_SURVIVOR", "urgency": "immediate", "from_agency_id": "MX-INM", "to_agency_id": "MX-SALUD",
        "coordinator_agency_id": "MX-COORD", "due_at": "2026-11-29T10:00:00+00:00", "reason_code": "ACCEPT_DEADLINE"}
LINK = "http://127.0.0.1:8002/referrals/3f1c2b9e-8a8d-4a3e-9b7e-0d6a2f4c5e11"


@pytest.mark.parametrize("event_type", ["referral.requested.v1", "referral.reassigned.v1", "referral.overdue.v1",
                                        "referral.escalated.v1"])
def test_no_need_code_and_no_person_in_subject_or_body(event_type):
    content = email_content(event_type, DATA, LINK)
    for leak in ("SGBV", "SURVIVOR", "p-77", "c1"):
        assert leak not in content.subject and leak not in content.body
    assert content.subject.startswith("[Enlace] ")
    assert DATA["referral_id"] in content.body and LINK in content.body and event_type in content.body


def test_new_referral_names_urgency_and_deadline():
    content = email_content("referral.requested.v1", DATA, LINK)
    assert content.subject == "[Enlace] New referral for your agency (urgency: immediate)"
    assert "Urgency: immediate" in content.body and "Deadline: 2026-11-29T10:00:00+00:00" in content.body


def test_a_referral_handed_over_is_new_for_its_receiver():
    content = email_content("referral.reassigned.v1", DATA, LINK)
    assert content.subject == "[Enlace] New referral for your agency (urgency: immediate)"
    assert "coordinator's queue" not in content.body


def test_standard_urgency_stays_out_of_the_subject_and_unknown_urgency_is_dropped():
    assert "urgency" not in email_content("referral.requested.v1", {**DATA, "urgency": "standard"}, LINK).subject
    body = email_content("referral.requested.v1", {**DATA, "urgency": "<script>"}, LINK).body
    assert "<script>" not in body


def test_escalation_carries_its_reason_code_and_a_queued_referral_says_so():
    assert "Reason: ACCEPT_DEADLINE" in email_content("referral.overdue.v1", DATA, LINK).body
    assert "Reason" not in email_content("referral.requested.v1", DATA, LINK).body
    queued = email_content("referral.requested.v1", {**DATA, "to_agency_id": None}, LINK)
    assert "coordinator's queue" in queued.body
