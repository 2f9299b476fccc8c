"""The code lists of docs/event-catalog.md that the referral service uses. Pure data."""

NEED_CODES = frozenset({
    "INTERNATIONAL_PROTECTION", "UNACCOMPANIED_CHILD", "SEPARATED_CHILD", "TRAFFICKING_PRESUMED", "SGBV_SURVIVOR",
    "MEDICAL_URGENT", "DISABILITY", "STATELESSNESS_RISK", "STRANDED_ASSISTED_RETURN", "CRIME_VICTIM",
})
URGENCIES = frozenset({"immediate", "high", "standard"})
AGE_BANDS = frozenset({"0-11", "12-17", "18-59", "60+", "disputed-treated-as-child", "unknown-treated-as-child"})
AGENCY_TYPES = frozenset({
    "migration_authority", "asylum_office", "child_protection", "anti_trafficking", "health", "psychosocial",
    "return_assistance", "coordinator",
})
COORDINATOR = "coordinator"

# Routed to child protection whether or not the person consented (by law).
MANDATORY_NEEDS = frozenset({"UNACCOMPANIED_CHILD", "SEPARATED_CHILD"})
# A referral for one of these opens a protection hold: no removal while it is active.
HOLD_BEARING_NEEDS = frozenset({"INTERNATIONAL_PROTECTION", "UNACCOMPANIED_CHILD", "SEPARATED_CHILD",
                                "TRAFFICKING_PRESUMED"})
TRAFFICKING = "TRAFFICKING_PRESUMED"

CONSENT_PURPOSE_REFERRAL = "referral"
CONSENT_PURPOSES = frozenset({"referral", "follow_up"})
CONSENT_BASES = frozenset({"consent", "mandatory_override"})

# person.erased.v1 reason_code: an erasure request or order, or the end of the retention period.
ERASURE_REASONS = frozenset({"ERASURE_REQUEST", "RETENTION_EXPIRED"})

CONSENT_WITHDRAWN = "CONSENT_WITHDRAWN"  # the system's reason when a withdrawal cancels a referral
# Reject / cancel / fail need one of these, plus free text that stays in this service.
REASON_CODES = frozenset({
    "OUT_OF_MANDATE", "NO_CAPACITY", "PERSON_NOT_REACHABLE", "PERSON_DECLINED", "DUPLICATE", "CONSENT_WITHDRAWN",
    "REFERRED_IN_ERROR", "OTHER",
})

# Completion outcomes; the final ones release a protection hold (except trafficking: the clock does).
FINAL_OUTCOMES = frozenset({
    "REFUGEE_STATUS_GRANTED", "COMPLEMENTARY_PROTECTION_GRANTED", "ASYLUM_CLAIM_REJECTED_FINAL",
    "ASYLUM_CLAIM_WITHDRAWN", "CHILD_PLACED_IN_CARE", "CHILD_REUNIFIED_WITH_FAMILY",
    "TRAFFICKING_VICTIM_NOT_IDENTIFIED",
})
# The hold-bearing need each final outcome resolves: a final outcome of another need (an asylum decision
# reported on a child-protection referral) closes the referral but does not release its hold.
FINAL_OUTCOME_RESOLVES = {
    **dict.fromkeys(("REFUGEE_STATUS_GRANTED", "COMPLEMENTARY_PROTECTION_GRANTED", "ASYLUM_CLAIM_REJECTED_FINAL",
                     "ASYLUM_CLAIM_WITHDRAWN"), frozenset({"INTERNATIONAL_PROTECTION"})),
    **dict.fromkeys(("CHILD_PLACED_IN_CARE", "CHILD_REUNIFIED_WITH_FAMILY"),
                    frozenset({"UNACCOMPANIED_CHILD", "SEPARATED_CHILD"})),
    "TRAFFICKING_VICTIM_NOT_IDENTIFIED": frozenset({"TRAFFICKING_PRESUMED"}),
}
OUTCOME_CODES = FINAL_OUTCOMES | {
    "ASYLUM_CLAIM_REGISTERED", "TRAFFICKING_VICTIM_IDENTIFIED", "MEDICAL_CARE_PROVIDED",
    "PSYCHOSOCIAL_SUPPORT_PROVIDED", "ASSISTED_RETURN_COMPLETED", "STATELESSNESS_PROCEDURE_OPENED", "CRIME_REPORTED",
    "SERVICE_DECLINED_BY_PERSON",
}

# Why the coordinator must act (referral.escalated.v1 reason_code).
OVERDUE = "OVERDUE"
NO_ELIGIBLE_AGENCY = "NO_ELIGIBLE_AGENCY"
CONSENT_MISSING = "CONSENT_MISSING"
REJECTED_NO_ALTERNATIVE = "REJECTED_NO_ALTERNATIVE"
ESCALATION_REASONS = frozenset({OVERDUE, NO_ELIGIBLE_AGENCY, CONSENT_MISSING, REJECTED_NO_ALTERNATIVE})

# Deadline clocks (referral.overdue.v1 reason_code).
ACCEPT_DEADLINE = "ACCEPT_DEADLINE"
COMPLETE_DEADLINE = "COMPLETE_DEADLINE"

# Why a hold ended (protection_hold.released.v1 release_reason).
COMPLETED_FINAL = "COMPLETED_FINAL"
CANCELLED_BY_COORDINATOR = "CANCELLED_BY_COORDINATOR"
REFLECTION_PERIOD_ENDED = "REFLECTION_PERIOD_ENDED"


def coordinator_of(jurisdiction: str) -> str:
    """Each jurisdiction has one coordinator agency, <CC>-COORD (event catalog)."""
    return f"{jurisdiction}-COORD"
