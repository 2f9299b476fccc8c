"""What a withdrawn consent ends (event catalog, consent.changed.v1). Pure."""

from referral.domain.codes import MANDATORY_NEEDS
from referral.domain.lifecycle import OPEN, Status


def cancelled_by_withdrawal(status: str, need_code: str, to_agency_type: str | None, withdrawn_type: str) -> bool:
    """An open referral sent to the agency type the person no longer consents to, unless its need is
    mandatory (child protection acts without consent, by law). A queued referral has no agency type yet:
    it waits for consent and stays."""
    return Status(status) in OPEN and to_agency_type == withdrawn_type and need_code not in MANDATORY_NEEDS
