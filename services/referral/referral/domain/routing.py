"""Routing: which directory service should take a protection need. Pure and explainable.

A service is eligible when it serves the need, in the case's jurisdiction, is active, has room
(open referrals below capacity), the person's whole age band lies inside its age range, it shares a
language with the person (unknown languages do not block), its agency did not already reject this
need, and the person's consent scope covers its agency type (mandatory needs go without consent).
The first eligible service wins (by the need's preferred agency type, then by id); every decision lists why it chose and why each other lost.
"""

from dataclasses import dataclass

from referral.domain.codes import (
    CONSENT_MISSING, MANDATORY_NEEDS, NEED_CODES, NO_ELIGIBLE_AGENCY, URGENCIES,  # noqa: F401 (re-exported)
)


@dataclass(frozen=True)
class DirectoryService:
    service_id: str
    agency_id: str
    need_codes: tuple[str, ...]
    area: str
    age_min: int
    age_max: int
    languages: tuple[str, ...]
    capacity: int
    active: bool
    agency_type: str = ""
    open_referrals: int = 0


@dataclass(frozen=True)
class CaseFacts:
    jurisdiction: str
    age_band: str
    languages: tuple[str, ...]
    # Agency types the person's consent covers for purpose `referral`.
    consented_agency_types: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Exclusion:
    service_id: str
    agency_id: str
    code: str  # OTHER_AREA, INACTIVE, NO_CAPACITY, AGE, LANGUAGE, ALREADY_REJECTED, CONSENT
    detail: str


@dataclass(frozen=True)
class RoutingDecision:
    need_code: str
    service: DirectoryService | None
    reasons: tuple[str, ...]
    exclusions: tuple[Exclusion, ...] = ()
    # Set when no service was chosen: why the coordinator must act.
    escalation_reason: str | None = None
    chosen_because: str | None = None

    def explanation(self) -> dict:
        """The stored and returned form of the decision."""
        return {
            "need_code": self.need_code,
            "chosen_service_id": self.service.service_id if self.service else None,
            "chosen_agency_id": self.service.agency_id if self.service else None,
            "chosen_because": self.chosen_because,
            "escalation_reason": self.escalation_reason,
            "excluded": [{"service_id": e.service_id, "agency_id": e.agency_id, "code": e.code, "detail": e.detail}
                         for e in self.exclusions],
        }


def age_range(age_band: str) -> tuple[int, int]:
    """Raises ValueError for a band outside the contract."""
    if age_band in ("disputed-treated-as-child", "unknown-treated-as-child"):
        return (0, 17)  # an uncertain age is served as a child's
    if age_band.endswith("+"):
        return (int(age_band[:-1]), 120)
    low, high = age_band.split("-")
    return (int(low), int(high))


def ineligibility(service: DirectoryService, need_code: str, case: CaseFacts,
                  excluded_agencies: frozenset[str] = frozenset()) -> tuple[str, str] | None:
    """(code, detail) of the first reason the service cannot take the need, or None."""
    low, high = age_range(case.age_band)
    if service.area != case.jurisdiction:
        return "OTHER_AREA", f"serves {service.area}, case is in {case.jurisdiction}"
    if not service.active:
        return "INACTIVE", "inactive"
    if service.agency_id in excluded_agencies:
        return "ALREADY_REJECTED", "its agency already rejected this need"
    if service.capacity <= 0 or service.open_referrals >= service.capacity:
        return "NO_CAPACITY", f"no capacity ({service.open_referrals} open of {max(service.capacity, 0)})"
    if low < service.age_min or high > service.age_max:
        return "AGE", f"serves ages {service.age_min}-{service.age_max}, person is {case.age_band}"
    if case.languages and not set(case.languages) & set(service.languages):
        return "LANGUAGE", f"no shared language ({', '.join(case.languages)})"
    if need_code not in MANDATORY_NEEDS and service.agency_type not in case.consented_agency_types:
        return "CONSENT", f"no consent to refer to a {service.agency_type or 'unknown'} agency"
    return None


# Where one need is served by several agency types, which type should take it first. Sexual violence
# goes to health first: post-exposure prophylaxis must start within 72 hours.
PREFERRED_AGENCY_TYPES = {
    "SGBV_SURVIVOR": ("health", "psychosocial"),
    "CRIME_VICTIM": ("anti_trafficking", "psychosocial"),
    "STRANDED_ASSISTED_RETURN": ("return_assistance", "child_protection"),
}


def _preference(need_code: str, agency_type: str) -> int:
    order = PREFERRED_AGENCY_TYPES.get(need_code, ())
    return order.index(agency_type) if agency_type in order else len(order)


def route(need_code: str, case: CaseFacts, directory: list[DirectoryService],
          excluded_agencies: frozenset[str] = frozenset()) -> RoutingDecision:
    reasons: list[str] = []
    exclusions: list[Exclusion] = []
    for service in sorted(directory, key=lambda s: (_preference(need_code, s.agency_type), s.service_id)):
        if need_code not in service.need_codes:
            continue  # services for other needs are not candidates at all
        why_not = ineligibility(service, need_code, case, excluded_agencies)
        if why_not is None:
            because = (f"{service.service_id} ({service.agency_id}) serves {need_code} in {case.jurisdiction}, "
                       f"age band {case.age_band}, has capacity and is active")
            reasons.append(because)
            return RoutingDecision(need_code, service, tuple(reasons), tuple(exclusions), None, because)
        exclusions.append(Exclusion(service.service_id, service.agency_id, *why_not))
        reasons.append(f"{service.service_id} skipped: {why_not[1]}")
    # Consent is checked last: if consent is all that stood in the way, the coordinator must obtain it.
    escalation = CONSENT_MISSING if any(e.code == "CONSENT" for e in exclusions) else NO_ELIGIBLE_AGENCY
    reasons.append(f"no eligible service for {need_code} in {case.jurisdiction}: coordinator queue ({escalation})")
    return RoutingDecision(need_code, None, tuple(reasons), tuple(exclusions), escalation, None)


# Lead order: the need whose agency should coordinate the others, most protective first.
LEAD_PRIORITY = ["UNACCOMPANIED_CHILD", "SEPARATED_CHILD", "TRAFFICKING_PRESUMED", "INTERNATIONAL_PROTECTION"]


def lead_rank(code: str) -> int:
    return LEAD_PRIORITY.index(code) if code in LEAD_PRIORITY else len(LEAD_PRIORITY)
