"""Routing policy: each protection need goes to one eligible service, and every decision explains itself."""

from dataclasses import replace

import pytest

from referral.domain.routing import CaseFacts, DirectoryService, lead_rank as _lead_rank, route

CHILD = DirectoryService(service_id="mx-chp-dif-cp", agency_id="MX-DIF", need_codes=("UNACCOMPANIED_CHILD",),
                         area="MX-CHP", age_min=0, age_max=17, languages=("es", "mam"), capacity=5, active=True, agency_type="child_protection")
ASYLUM = DirectoryService(service_id="mx-chp-comar", agency_id="MX-COMAR",
                          need_codes=("INTERNATIONAL_PROTECTION",), area="MX-CHP", age_min=0, age_max=120,
                          languages=("es", "en", "fr"), capacity=40, active=True, agency_type="asylum_office")
TRAFFICKING = DirectoryService(service_id="mx-chp-fevimtra", agency_id="MX-FEVIMTRA",
                               need_codes=("TRAFFICKING_PRESUMED",), area="MX-CHP", age_min=18, age_max=120,
                               languages=("es",), capacity=3, active=True, agency_type="anti_trafficking")

# The person consented to referrals to every agency type these tables use (consent has its own table below).
CONSENTED = frozenset({"child_protection", "asylum_office", "anti_trafficking", "health"})
ADULT = CaseFacts(jurisdiction="MX-CHP", age_band="18-59", languages=("es",), consented_agency_types=CONSENTED)
TEEN = CaseFacts(jurisdiction="MX-CHP", age_band="12-17", languages=("es",), consented_agency_types=CONSENTED)
DISPUTED = CaseFacts(jurisdiction="MX-CHP", age_band="disputed-treated-as-child", languages=("es",),
                     consented_agency_types=CONSENTED)


def _chosen(decision):
    return decision.service.service_id if decision.service else None


def _assert_explained_choice(decision, service: DirectoryService) -> None:
    assert decision.service == service
    assert decision.reasons, "a decision without reasons is not explainable"
    assert service.service_id in decision.reasons[-1]


def _assert_coordinator(decision, need_code: str) -> None:
    assert decision.service is None
    assert decision.need_code == need_code
    assert "coordinator" in decision.reasons[-1]


def _skip_reason(decision, service_id: str) -> str:
    matches = [r for r in decision.reasons if r.startswith(service_id)]
    assert len(matches) == 1, decision.reasons
    return matches[0]


ELIGIBLE = [
    ("child-0-17", "UNACCOMPANIED_CHILD", TEEN, [CHILD, ASYLUM, TRAFFICKING], CHILD),
    ("young-child", "UNACCOMPANIED_CHILD", replace(TEEN, age_band="0-11"), [CHILD], CHILD),
    ("disputed-served-as-child", "UNACCOMPANIED_CHILD", DISPUTED, [CHILD], CHILD),
    ("asylum-adult", "INTERNATIONAL_PROTECTION", ADULT, [CHILD, ASYLUM, TRAFFICKING], ASYLUM),
    ("asylum-older", "INTERNATIONAL_PROTECTION", replace(ADULT, age_band="60+"), [ASYLUM], ASYLUM),
    ("trafficking-adult", "TRAFFICKING_PRESUMED", ADULT, [CHILD, ASYLUM, TRAFFICKING], TRAFFICKING),
    ("one-shared-language-is-enough", "INTERNATIONAL_PROTECTION",
     replace(ADULT, languages=("ht", "fr")), [ASYLUM], ASYLUM),
    ("languages-unknown-do-not-block", "INTERNATIONAL_PROTECTION", replace(ADULT, languages=()), [ASYLUM], ASYLUM),
    ("capacity-one-is-enough", "UNACCOMPANIED_CHILD", TEEN, [replace(CHILD, capacity=1)],
     replace(CHILD, capacity=1)),
]


@pytest.mark.parametrize(("need", "case", "directory", "expected"), [c[1:] for c in ELIGIBLE],
                         ids=[c[0] for c in ELIGIBLE])
def test_route_picks_the_eligible_service(need, case, directory, expected):
    decision = route(need, case, directory)
    assert decision.need_code == need
    _assert_explained_choice(decision, expected)
    assert expected.agency_id in decision.reasons[-1]


INELIGIBLE = [
    # id, need, case, the only candidate, words the skip reason must contain
    ("wrong-jurisdiction", "UNACCOMPANIED_CHILD", TEEN, replace(CHILD, area="GT"), ("GT", "MX-CHP")),
    ("inactive", "UNACCOMPANIED_CHILD", TEEN, replace(CHILD, active=False), ("inactive",)),
    ("zero-capacity", "UNACCOMPANIED_CHILD", TEEN, replace(CHILD, capacity=0), ("capacity",)),
    ("negative-capacity", "UNACCOMPANIED_CHILD", TEEN, replace(CHILD, capacity=-2), ("capacity",)),
    ("child-service-for-adult", "UNACCOMPANIED_CHILD", ADULT, CHILD, ("0-17", "18-59")),
    ("adult-service-for-teen", "TRAFFICKING_PRESUMED", TEEN, TRAFFICKING, ("18-120", "12-17")),
    ("adult-service-for-disputed-age", "TRAFFICKING_PRESUMED", DISPUTED, TRAFFICKING,
     ("disputed-treated-as-child",)),
    ("adult-service-for-older", "TRAFFICKING_PRESUMED", replace(ADULT, age_band="60+"),
     replace(TRAFFICKING, age_max=59), ("60+",)),
    ("no-shared-language", "INTERNATIONAL_PROTECTION", replace(ADULT, languages=("ar", "ps")), ASYLUM,
     ("language", "ar")),
]


@pytest.mark.parametrize(("need", "case", "service", "words"), [c[1:] for c in INELIGIBLE],
                         ids=[c[0] for c in INELIGIBLE])
def test_route_skips_ineligible_service_and_escalates(need, case, service, words):
    decision = route(need, case, [service])
    _assert_coordinator(decision, need)
    why = _skip_reason(decision, service.service_id)
    for word in words:
        assert word in why, why


@pytest.mark.parametrize(("need", "case", "service", "words"), [c[1:] for c in INELIGIBLE],
                         ids=[c[0] for c in INELIGIBLE])
def test_route_falls_through_to_the_next_eligible_service(need, case, service, words):
    # The ineligible service sorts first; an eligible one behind it must still be found.
    fallback = DirectoryService(service_id="zz-fallback", agency_id="MX-FALLBACK", need_codes=(need,),
                                area=case.jurisdiction, age_min=0, age_max=120, languages=case.languages or ("es",),
                                capacity=1, active=True, agency_type=service.agency_type)
    assert service.service_id < fallback.service_id
    decision = route(need, case, [fallback, service])
    _assert_explained_choice(decision, fallback)
    _skip_reason(decision, service.service_id)


def test_empty_directory_goes_to_the_coordinator():
    decision = route("UNACCOMPANIED_CHILD", TEEN, [])
    _assert_coordinator(decision, "UNACCOMPANIED_CHILD")
    assert "UNACCOMPANIED_CHILD" in decision.reasons[-1]


def test_services_for_other_needs_are_neither_chosen_nor_listed():
    decision = route("UNACCOMPANIED_CHILD", ADULT, [ASYLUM, TRAFFICKING])
    _assert_coordinator(decision, "UNACCOMPANIED_CHILD")
    assert not any(ASYLUM.service_id in r or TRAFFICKING.service_id in r for r in decision.reasons)


def test_every_losing_service_is_explained():
    closed = replace(CHILD, service_id="a-closed", active=False)
    full = replace(CHILD, service_id="b-full", capacity=0)
    elsewhere = replace(CHILD, service_id="c-elsewhere", area="MX-TAB")
    winner = replace(CHILD, service_id="d-winner")
    decision = route("UNACCOMPANIED_CHILD", TEEN, [winner, elsewhere, full, closed])
    _assert_explained_choice(decision, winner)
    assert [r.split()[0] for r in decision.reasons] == ["a-closed", "b-full", "c-elsewhere", "d-winner"]


def test_choice_does_not_depend_on_directory_order():
    a = replace(CHILD, service_id="a-first", agency_id="AG-A")
    b = replace(CHILD, service_id="b-second", agency_id="AG-B")
    assert _chosen(route("UNACCOMPANIED_CHILD", TEEN, [a, b])) == _chosen(route("UNACCOMPANIED_CHILD", TEEN, [b, a]))


def test_lead_rank_puts_the_most_protective_need_first():
    codes = ["INTERNATIONAL_PROTECTION", "SOME_NEW_NEED", "TRAFFICKING_PRESUMED", "UNACCOMPANIED_CHILD",
             "SEPARATED_CHILD"]
    assert sorted(codes, key=_lead_rank) == ["UNACCOMPANIED_CHILD", "SEPARATED_CHILD", "TRAFFICKING_PRESUMED",
                                             "INTERNATIONAL_PROTECTION", "SOME_NEW_NEED"]
    assert _lead_rank("UNACCOMPANIED_CHILD") < _lead_rank("INTERNATIONAL_PROTECTION")
    assert min(["INTERNATIONAL_PROTECTION", "UNACCOMPANIED_CHILD"], key=_lead_rank) == "UNACCOMPANIED_CHILD"
    assert min(["INTERNATIONAL_PROTECTION", "TRAFFICKING_PRESUMED"], key=_lead_rank) == "TRAFFICKING_PRESUMED"
    assert _lead_rank("SOME_NEW_NEED") > _lead_rank("INTERNATIONAL_PROTECTION")


# --- the rules added with the referral issue ------------------------------------------------------

TEEN_ONLY = replace(CHILD, service_id="mx-teen", age_min=16, age_max=17)

AGE_INSIDE = [
    # id, age band, service age range, eligible?
    ("child-0-11-into-16-17", "0-11", (16, 17), False),
    ("band-12-17-into-16-17", "12-17", (16, 17), False),  # a 12-year-old could be in this band
    ("band-12-17-into-0-17", "12-17", (0, 17), True),
    ("band-12-17-into-12-17", "12-17", (12, 17), True),
    ("disputed-into-0-17", "disputed-treated-as-child", (0, 17), True),
    ("unknown-into-0-17", "unknown-treated-as-child", (0, 17), True),
    ("disputed-into-12-17", "disputed-treated-as-child", (12, 17), False),
    ("adult-into-0-120", "18-59", (0, 120), True),
    ("adult-into-18-59", "18-59", (18, 59), True),
    ("older-into-18-59", "60+", (18, 59), False),
    ("older-into-18-120", "60+", (18, 120), True),
]


@pytest.mark.parametrize(("band", "ages", "eligible"), [c[1:] for c in AGE_INSIDE], ids=[c[0] for c in AGE_INSIDE])
def test_the_whole_age_band_must_lie_inside_the_service_age_range(band, ages, eligible):
    service = replace(CHILD, age_min=ages[0], age_max=ages[1])
    decision = route("UNACCOMPANIED_CHILD", replace(TEEN, age_band=band), [service])
    assert (decision.service == service) is eligible, decision.reasons
    if not eligible:
        assert [e.code for e in decision.exclusions] == ["AGE"]
        assert decision.escalation_reason == "NO_ELIGIBLE_AGENCY"


CAPACITY = [
    ("room-left", 5, 4, True),
    ("exactly-full", 5, 5, False),
    ("over-full", 5, 7, False),
    ("no-places", 0, 0, False),
]


@pytest.mark.parametrize(("capacity", "open_now", "eligible"), [c[1:] for c in CAPACITY], ids=[c[0] for c in CAPACITY])
def test_open_referrals_count_against_capacity(capacity, open_now, eligible):
    service = replace(CHILD, capacity=capacity, open_referrals=open_now)
    decision = route("UNACCOMPANIED_CHILD", TEEN, [service])
    assert (decision.service is not None) is eligible
    if not eligible:
        assert decision.exclusions[0].code == "NO_CAPACITY" and f"{open_now} open" in decision.exclusions[0].detail


CONSENT = [
    # id, need, consented types, service, chosen?, escalation reason
    ("mandatory-child-without-consent", "UNACCOMPANIED_CHILD", frozenset(), CHILD, True, None),
    ("mandatory-separated-without-consent", "SEPARATED_CHILD", frozenset(),
     replace(CHILD, need_codes=("SEPARATED_CHILD",)), True, None),
    ("asylum-without-consent", "INTERNATIONAL_PROTECTION", frozenset(), ASYLUM, False, "CONSENT_MISSING"),
    ("asylum-consent-for-another-type", "INTERNATIONAL_PROTECTION", frozenset({"health"}), ASYLUM, False,
     "CONSENT_MISSING"),
    ("asylum-with-consent", "INTERNATIONAL_PROTECTION", frozenset({"asylum_office"}), ASYLUM, True, None),
    ("trafficking-without-consent", "TRAFFICKING_PRESUMED", frozenset(), TRAFFICKING, False, "CONSENT_MISSING"),
]


@pytest.mark.parametrize(("need", "consented", "service", "chosen", "escalation"), [c[1:] for c in CONSENT],
                         ids=[c[0] for c in CONSENT])
def test_consent_scope_decides_except_for_mandatory_needs(need, consented, service, chosen, escalation):
    decision = route(need, replace(ADULT if need != "UNACCOMPANIED_CHILD" and need != "SEPARATED_CHILD" else TEEN,
                                   consented_agency_types=consented), [service])
    assert (decision.service == service) is chosen
    assert decision.escalation_reason == escalation
    if escalation:
        assert decision.exclusions[0].code == "CONSENT"


def test_no_eligible_agency_beats_consent_missing_only_when_consent_was_not_the_obstacle():
    full = replace(ASYLUM, capacity=1, open_referrals=1)
    no_consent = replace(ADULT, consented_agency_types=frozenset())
    assert route("INTERNATIONAL_PROTECTION", no_consent, [full]).escalation_reason == "NO_ELIGIBLE_AGENCY"
    other = replace(ASYLUM, service_id="b-asylum")
    assert route("INTERNATIONAL_PROTECTION", no_consent, [full, other]).escalation_reason == "CONSENT_MISSING"


def test_agencies_that_already_rejected_are_skipped():
    second = replace(CHILD, service_id="z-second", agency_id="MX-OTHER")
    decision = route("UNACCOMPANIED_CHILD", TEEN, [CHILD, second], excluded_agencies=frozenset({"MX-DIF"}))
    assert decision.service == second
    assert [(e.service_id, e.code) for e in decision.exclusions] == [("mx-chp-dif-cp", "ALREADY_REJECTED")]
    decision = route("UNACCOMPANIED_CHILD", TEEN, [CHILD, second],
                     excluded_agencies=frozenset({"MX-DIF", "MX-OTHER"}))
    assert decision.service is None and decision.escalation_reason == "NO_ELIGIBLE_AGENCY"


def test_explanation_names_the_choice_and_every_excluded_candidate():
    closed = replace(CHILD, service_id="a-closed", active=False)
    decision = route("UNACCOMPANIED_CHILD", TEEN, [CHILD, closed, ASYLUM])
    explained = decision.explanation()
    assert explained["chosen_service_id"] == CHILD.service_id and explained["chosen_agency_id"] == "MX-DIF"
    assert CHILD.service_id in explained["chosen_because"]
    assert explained["excluded"] == [{"service_id": "a-closed", "agency_id": "MX-DIF", "code": "INACTIVE",
                                      "detail": "inactive"}]
    assert explained["escalation_reason"] is None


# --- the demo directory ---------------------------------------------------------------------------

def _demo_directory():
    import json
    from pathlib import Path

    doc = json.loads((Path(__file__).resolve().parents[3] / "deploy/demo/agencies.json").read_text())
    return doc["agencies"], [
        DirectoryService(service_id=s["id"], agency_id=a["id"], need_codes=tuple(s["need_codes"]), area=s["area"],
                         age_min=s["age_min"], age_max=s["age_max"], languages=tuple(s["languages"]),
                         capacity=s["capacity"], active=s["active"], agency_type=a["type"])
        for a in doc["agencies"] for s in a["services"]]


COUNTRIES = ["MX", "GT", "CR", "PA"]
REQUIRED_TYPES = {"migration_authority", "asylum_office", "child_protection", "anti_trafficking", "health",
                  "psychosocial", "return_assistance", "coordinator"}


@pytest.mark.parametrize("country", COUNTRIES)
def test_demo_directory_has_every_agency_type_in_each_country(country):
    agencies, _ = _demo_directory()
    assert {a["type"] for a in agencies if a["jurisdiction"] == country} == REQUIRED_TYPES
    assert [a["id"] for a in agencies if a["jurisdiction"] == country and a["type"] == "coordinator"] == [
        f"{country}-COORD"]


@pytest.mark.parametrize("country", COUNTRIES)
@pytest.mark.parametrize("age_band", ["0-11", "12-17", "18-59", "60+", "disputed-treated-as-child"])
def test_demo_directory_routes_every_need_in_each_country(country, age_band):
    from referral.domain.codes import AGENCY_TYPES, NEED_CODES

    _, directory = _demo_directory()
    facts = CaseFacts(jurisdiction=country, age_band=age_band, languages=("es",),
                      consented_agency_types=frozenset(AGENCY_TYPES))
    child_needs = {"UNACCOMPANIED_CHILD", "SEPARATED_CHILD"}
    needs = NEED_CODES if age_band in ("0-11", "12-17", "disputed-treated-as-child") else NEED_CODES - child_needs
    unrouted = [need for need in sorted(needs) if route(need, facts, directory).service is None]
    assert unrouted == []


def test_demo_directory_sends_no_adult_to_child_protection():
    _, directory = _demo_directory()
    facts = CaseFacts(jurisdiction="MX", age_band="18-59", languages=("es",),
                      consented_agency_types=frozenset({"child_protection"}))
    decision = route("UNACCOMPANIED_CHILD", facts, directory)
    assert decision.service is None
    assert {e.code for e in decision.exclusions if e.service_id.startswith("MX-")} == {"AGE"}


def test_sexual_violence_goes_to_health_first_then_psychosocial():
    psi = replace(CHILD, service_id="a-psi", agency_id="MX-PSI", agency_type="psychosocial",
                  need_codes=("SGBV_SURVIVOR",), age_min=0, age_max=120)
    health = replace(psi, service_id="z-health", agency_id="MX-SSA", agency_type="health")
    facts = replace(ADULT, consented_agency_types=frozenset({"psychosocial", "health"}))
    assert route("SGBV_SURVIVOR", facts, [psi, health]).service == health
    assert route("SGBV_SURVIVOR", facts, [psi, replace(health, active=False)]).service == psi
