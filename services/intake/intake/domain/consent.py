"""Consent: per person, per purpose, per recipient agency type; withdrawable. Pure rules."""

from collections.abc import Iterable
from dataclasses import dataclass

AGENCY_TYPES = ("migration_authority", "asylum_office", "child_protection", "anti_trafficking", "health",
                "psychosocial", "return_assistance", "coordinator")
PURPOSES = ("referral", "follow_up")
CONSENT = "consent"
MANDATORY_OVERRIDE = "mandatory_override"
BASES = (CONSENT, MANDATORY_OVERRIDE)
GRANTED = "granted"
WITHDRAWN = "withdrawn"
CHILD_PROTECTION = "child_protection"
REFERRAL = "referral"

# Agency types that receive no protection referral. Withdrawing a consent to refer to any other type cancels
# that type's open referrals (the referral service), protection work included: asylum, anti-trafficking, child
# protection, and health and psychosocial care, which take survivors of sexual violence and crime victims. A type
# added later counts as protection until it is listed here (fail closed).
NON_PROTECTION_TYPES = frozenset({"migration_authority", "return_assistance", "coordinator"})


def enforcement_may_withdraw(*, recipient_agency_type: str, purpose: str) -> bool:
    """Whether an enforcement agency may record this withdrawal: not one that would cancel protection referrals,
    or it could end an asylum claim it may not cancel itself. Decided by the consent alone, never by whether
    referrals exist, so the answer tells nothing. The person withdraws through the protection agency or the
    jurisdiction's coordinator, who records it."""
    return purpose != REFERRAL or recipient_agency_type in NON_PROTECTION_TYPES


@dataclass(frozen=True)
class ConsentGrant:
    recipient_agency_type: str
    purpose: str
    basis: str


class OverrideNotAllowed(ValueError):
    pass


def check_override(*, recipient_agency_type: str, treated_as_child: bool) -> None:
    """Child protection may act without consent, by law, for a child only (CRC art. 3, 20)."""
    if recipient_agency_type != CHILD_PROTECTION:
        raise OverrideNotAllowed("a mandatory override is for recipient_agency_type child_protection only")
    if not treated_as_child:
        raise OverrideNotAllowed("a mandatory override applies only to a person treated as a child")


def scope(active: Iterable[ConsentGrant]) -> list[ConsentGrant]:
    """What the active consents allow: distinct, in a stable order."""
    return sorted(set(active), key=lambda g: (g.recipient_agency_type, g.purpose, g.basis))


def covers(active: Iterable[ConsentGrant], *, agency_type: str, purpose: str) -> bool:
    for grant in active:
        if grant.recipient_agency_type != agency_type or grant.purpose != purpose:
            continue
        if grant.basis == CONSENT or (grant.basis == MANDATORY_OVERRIDE and agency_type == CHILD_PROTECTION):
            return True
    return False
