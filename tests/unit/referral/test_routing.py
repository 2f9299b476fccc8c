"""Routing policy: each protection need goes to one eligible service, and every decision explains itself."""

from dataclasses import replace

import pytest

from referral.domain.routing import CaseFacts, DirectoryService, route
from referral.service_layer.handlers import _lead_rank

CHILD = DirectoryService(service_id="mx-chp-dif-cp", agency_id="MX-DIF", need_codes=("UNACCOMPANIED_CHILD",),
                         area="MX-CHP", age_min=0, age_max=17, languages=("es", "mam"), capacity=5, active=True)
ASYLUM = DirectoryService(service_id="mx-chp-comar", agency_id="MX-COMAR",
                          need_codes=("INTERNATIONAL_PROTECTION",), area="MX-CHP", age_min=0, age_max=120,
                          languages=("es", "en", "fr"), capacity=40, active=True)
TRAFFICKING = DirectoryService(service_id="mx-chp-fevimtra", agency_id="MX-FEVIMTRA",
                               need_codes=("TRAFFICKING_PRESUMED",), area="MX-CHP", age_min=18, age_max=120,
                               languages=("es",), capacity=3, active=True)

ADULT = CaseFacts(jurisdiction="MX-CHP", age_band="18-59", languages=("es",))
TEEN = CaseFacts(jurisdiction="MX-CHP", age_band="12-17", languages=("es",))
DISPUTED = CaseFacts(jurisdiction="MX-CHP", age_band="disputed-treated-as-child", languages=("es",))


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
                                capacity=1, active=True)
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
