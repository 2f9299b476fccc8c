"""The information barrier between protection and enforcement, in one place.

An enforcement agency (the migration authority, and any agency the directory marks as enforcement) that
sent a protection referral, or registered its case, learns only that the referral exists, its status,
whether a protection hold is active, and an outcome code from a short public list. It never learns notes,
reasons, routing or deadlines. A referral of a sensitive need (asylum, trafficking, sexual violence, crime
victims) it is not shown at all, its own included (:func:`referral_shown`): a shelter's identity is what a
trafficker looks for, and whether such a referral exists (say, because screening opened none of its own as
one was open elsewhere) says that a claim or a victim is known. It learns of those only through the person's
protection holds.

Every rendering of a referral, history row, hold or webhook to an agency goes through :func:`project`,
which reads :data:`TABLE`; docs/security.md shows the same table and a test keeps the two equal.
A withheld field is rendered as null, never left out, so every answer keeps its schema.

Which viewer an agency is depends on its part in the record: the receiver and the coordinator do the
protection work and see it all (:func:`viewer_in`); an enforcement agency that only sent the referral (or
registered the case) is the enforcement viewer. What it wrote itself (its notes, its own cancellation's
reason) stays visible to it (:data:`Rule.IF_OWN`).
"""

from collections.abc import Collection, Mapping
from enum import StrEnum
from typing import Any

# Agency types that decide removals; the directory may mark other agencies as enforcement too.
ENFORCEMENT_TYPES = frozenset({"migration_authority"})

# Needs whose very code, or whose receiver, endangers the person if it reaches the enforcement side.
SENSITIVE_NEEDS = frozenset({"INTERNATIONAL_PROTECTION", "TRAFFICKING_PRESUMED", "SGBV_SURVIVOR", "CRIME_VICTIM"})

# The outcome codes an enforcement agency may learn: none of them discloses a claim or a victim.
PUBLIC_OUTCOMES = frozenset({
    "CHILD_PLACED_IN_CARE", "CHILD_REUNIFIED_WITH_FAMILY", "MEDICAL_CARE_PROVIDED", "ASSISTED_RETURN_COMPLETED",
    "SERVICE_DECLINED_BY_PERSON",
})

# Event types an enforcement agency hears about: lifecycle changes and holds. A note, a reassignment,
# a missed deadline or an escalation says something about the work itself, so it is not sent at all.
ENFORCEMENT_EVENT_TYPES = frozenset({
    "referral.requested.v1", "referral.received.v1", "referral.accepted.v1", "referral.rejected.v1",
    "referral.started.v1", "referral.put_on_hold.v1", "referral.completed.v1", "referral.cancelled.v1",
    "referral.failed.v1", "protection_hold.placed.v1", "protection_hold.released.v1",
})


class Viewer(StrEnum):
    PROTECTION = "protection"  # a protection actor party to the referral, or the coordinator: sees it all
    ENFORCEMENT = "enforcement"  # an enforcement agency: existence, status, hold, public outcome


class Rule(StrEnum):
    ALWAYS = "always"
    NEVER = "never"
    IF_NOT_SENSITIVE = "if the need is not sensitive"
    IF_PUBLIC_OUTCOME = "if the outcome is on the public list"
    IF_OWN = "if your agency wrote it"


_A, _N, _S, _O, _W = Rule.ALWAYS, Rule.NEVER, Rule.IF_NOT_SENSITIVE, Rule.IF_PUBLIC_OUTCOME, Rule.IF_OWN

# What an enforcement viewer sees of each record kind, field by field. Protection viewers see every field.
# A field missing here is a defect: project() refuses to render it (fail closed).
TABLE: dict[str, dict[str, Rule]] = {
    "referral": {
        "id": _A, "case_id": _A, "person_id": _A, "status": _A, "jurisdiction": _A,
        "from_agency_id": _A, "coordinator_agency_id": _A, "created_at": _A, "closed_at": _A,
        "allowed_actions": _A, "hold_active": _A,
        "need_code": _S, "urgency": _S, "to_agency_id": _S, "to_agency_type": _S, "to_service_id": _S,
        "accepted_at": _S, "is_lead": _S, "version": _S, "updated_at": _S,
        "outcome_code": _O,
        "previous_referral_id": _N, "next_referral_id": _N, "routing": _N, "routing_reasons": _N,
        "escalation_reason": _N, "clock": _N, "due_at": _N, "overdue": _N, "reason_code": _N,
    },
    "history": {
        "at": _A, "action": _A, "from_status": _A, "to_status": _A,
        "outcome_code": _O,
        "actor_agency_id": _W, "actor_subject": _W, "reason_code": _W, "reason_text": _W, "note": _W,
        "text_erased": _W, "text_withheld": _W,
        "seq": _N, "to_agency_id": _N,
    },
    "hold": {
        "id": _A, "hold_id": _A, "case_id": _A, "person_id": _A, "referral_id": _A, "active": _A, "status": _A,
        "placed_at": _A, "released_at": _A, "from_agency_id": _A, "open_referral_id": _A,
        "need_code": _S, "to_agency_id": _S, "not_before": _S,
        "outcome_code": _O,
        "release_reason": _N, "released_by_referral_id": _N,
    },
    "case_referral": {  # intake's view of a case's referrals, fed by referral events
        "referral_id": _A, "person_id": _A, "status": _A, "updated_at": _A,
        "need_code": _S, "to_agency_id": _S, "to_agency_type": _S,
        "outcome_code": _O,
    },
    "webhook": {  # the thin webhook payload's data
        "event_id": _A, "referral_id": _A, "case_id": _A, "status": _A, "links": _A, "hold_id": _A,
    },
}

# History actions an enforcement viewer sees as rows (status changes); the others are left out whole.
ENFORCEMENT_HISTORY_ACTIONS = frozenset({
    "route", "receive", "accept", "reject", "start", "hold", "resume", "complete", "cancel", "fail",
})

# History actions whose codes and free text are the acting agency's own words: its rows of these are its own
# record (Rule.IF_OWN). A "route" row is not: routing chose its receiver and reasons, not the sender.
OWN_RECORD_ACTIONS = frozenset({"note", "cancel"})

# The parts in a record (enlace_platform's referral roles) that do the protection work and see it all.
PROTECTION_PARTS = frozenset({"receiver", "coordinator"})


def is_enforcement(agency_type: str, marked_enforcement: bool | None = None) -> bool:
    """The directory's mark when it has one, else the agency type's default."""
    return marked_enforcement if marked_enforcement is not None else agency_type in ENFORCEMENT_TYPES


def viewer_of(agency_type: str, marked_enforcement: bool | None = None) -> Viewer:
    return Viewer.ENFORCEMENT if is_enforcement(agency_type, marked_enforcement) else Viewer.PROTECTION


def viewer_for(principal) -> Viewer:
    """The viewer an authenticated agency is (an ``enlace_platform.auth.Principal``)."""
    return viewer_of(principal.agency_type, principal.enforcement)


def viewer_in(principal, parts: Collection[str]) -> Viewer:
    """The viewer an agency is on one record, given its parts in it ("receiver", "sender", "coordinator"):
    a receiver or coordinator sees it all, whatever its type; otherwise as :func:`viewer_for`."""
    if PROTECTION_PARTS & {str(part) for part in parts}:
        return Viewer.PROTECTION
    return viewer_for(principal)


def is_own_record(action: str, actor_agency_id: str | None, agency_id: str) -> bool:
    """A history row the viewer's agency wrote with its own words (its note, its cancellation)."""
    return actor_agency_id == agency_id and action in OWN_RECORD_ACTIONS


def visible(kind: str, field: str, viewer: Viewer, *, need_code: str | None, outcome_code: str | None = None,
            own: bool = False) -> bool:
    if viewer is Viewer.PROTECTION:
        return True
    rule = TABLE[kind].get(field)
    if rule is None:
        raise KeyError(f"firewall: field {kind}.{field} has no rule; add it to firewall.TABLE")
    if rule is Rule.ALWAYS:
        return True
    if rule is Rule.IF_NOT_SENSITIVE:
        return need_code is not None and need_code not in SENSITIVE_NEEDS
    if rule is Rule.IF_PUBLIC_OUTCOME:
        return outcome_code in PUBLIC_OUTCOMES
    if rule is Rule.IF_OWN:
        return own
    return False


def project(kind: str, record: Mapping[str, Any], viewer: Viewer, *, need_code: str | None,
            own: bool = False) -> dict[str, Any]:
    """The record as the viewer may see it: withheld fields become null.

    ``need_code`` is the referral's need even when the record does not carry it (a history row); ``own``: the
    viewer's agency wrote this record (:func:`is_own_record`)."""
    if viewer is Viewer.PROTECTION:
        return dict(record)
    outcome = record.get("outcome_code")
    out: dict[str, Any] = {}
    for field, value in record.items():
        out[field] = value if visible(kind, field, viewer, need_code=need_code, outcome_code=outcome, own=own) else None
    return out


def referral_shown(viewer: Viewer, need_code: str | None) -> bool:
    """Whether the viewer is shown the referral at all: an enforcement viewer is never shown one of a sensitive
    need (nor one whose need is unknown: fail closed). Its holds stay visible: a hold is what stops a removal."""
    return viewer is Viewer.PROTECTION or (need_code is not None and need_code not in SENSITIVE_NEEDS)


def event_visible(event_type: str, viewer: Viewer) -> bool:
    return viewer is Viewer.PROTECTION or event_type in ENFORCEMENT_EVENT_TYPES


def history_row_visible(action: str, viewer: Viewer, *, own: bool = False) -> bool:
    """Whether the viewer gets the row at all; ``own``: its agency wrote it (:func:`is_own_record`)."""
    return viewer is Viewer.PROTECTION or own or action in ENFORCEMENT_HISTORY_ACTIONS
