"""What a withdrawn consent ends (event catalog, consent.changed.v1). Pure."""

from referral.domain.codes import MANDATORY_NEEDS
from referral.domain.lifecycle import OPEN, Status


def cancelled_by_withdrawal(status: str, need_code: str, to_agency_type: str | None, withdrawn_type: str) -> bool:
    """An open referral sent to the agency type the person no longer consents to, unless its need is
    mandatory (child protection acts without consent, by law). A queued referral has no agency type yet:
    it waits for consent and stays."""
    return Status(status) in OPEN and to_agency_type == withdrawn_type and need_code not in MANDATORY_NEEDS


def withheld_from_receiver(need_code: str, receiver_type: str | None, withdrawn_types: frozenset[str]) -> bool:
    """The receiving agency lost read access to the person: their consent to share with its agency type was
    withdrawn (the referral was cancelled, or had already ended). Mandatory needs are shared by law."""
    return receiver_type in withdrawn_types and need_code not in MANDATORY_NEEDS
