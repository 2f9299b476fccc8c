"""Routing: which directory service should take a protection need. Pure and explainable.

Walking-skeleton policy: jurisdiction, need served, age range, language, capacity and active
status, first eligible wins. Every decision lists its reasons, including why others lost.
"""

from dataclasses import dataclass

# The need codes and urgencies of the case.screened.v1 contract.
NEED_CODES = frozenset({
    "INTERNATIONAL_PROTECTION", "UNACCOMPANIED_CHILD", "SEPARATED_CHILD", "TRAFFICKING_PRESUMED", "SGBV_SURVIVOR",
    "MEDICAL_URGENT", "DISABILITY", "STATELESSNESS_RISK", "STRANDED_ASSISTED_RETURN", "CRIME_VICTIM",
})
URGENCIES = frozenset({"immediate", "high", "standard"})


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


@dataclass(frozen=True)
class CaseFacts:
    jurisdiction: str
    age_band: str
    languages: tuple[str, ...]


@dataclass(frozen=True)
class RoutingDecision:
    need_code: str
    service: DirectoryService | None
    reasons: tuple[str, ...]


def age_range(age_band: str) -> tuple[int, int]:
    """Raises ValueError for a band outside the contract."""
    if age_band in ("disputed-treated-as-child", "unknown-treated-as-child"):
        return (0, 17)  # an uncertain age is served as a child's
    if age_band.endswith("+"):
        return (int(age_band[:-1]), 120)
    low, high = age_band.split("-")
    return (int(low), int(high))


def ineligibility(service: DirectoryService, need_code: str, case: CaseFacts) -> str | None:
    low, high = age_range(case.age_band)
    if need_code not in service.need_codes:
        return "does not serve this need"
    if service.area != case.jurisdiction:
        return f"serves {service.area}, case is in {case.jurisdiction}"
    if not service.active:
        return "inactive"
    if service.capacity <= 0:
        return "no capacity"
    if high < service.age_min or low > service.age_max:
        return f"serves ages {service.age_min}-{service.age_max}, person is {case.age_band}"
    if case.languages and not set(case.languages) & set(service.languages):
        return f"no shared language ({', '.join(case.languages)})"
    return None


def route(need_code: str, case: CaseFacts, directory: list[DirectoryService]) -> RoutingDecision:
    reasons: list[str] = []
    for service in sorted(directory, key=lambda s: s.service_id):
        why_not = ineligibility(service, need_code, case)
        if why_not is None:
            reasons.append(f"{service.service_id} ({service.agency_id}) serves {need_code} in {case.jurisdiction}, "
                           f"age band {case.age_band}, has capacity and is active")
            return RoutingDecision(need_code, service, tuple(reasons))
        if why_not != "does not serve this need":
            reasons.append(f"{service.service_id} skipped: {why_not}")
    reasons.append(f"no eligible service for {need_code} in {case.jurisdiction}: coordinator queue")
    return RoutingDecision(need_code, None, tuple(reasons))
