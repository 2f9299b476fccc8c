"""Screening rules: answers in, protection needs (with urgency and reasons) out."""

import pytest

from intake.domain.screening import PersonFacts, ProtectionNeed, ScreeningAnswers, Urgency, age_band, evaluate


def _codes(needs: list[ProtectionNeed]) -> list[str]:
    return [n.code for n in needs]


def _need(needs: list[ProtectionNeed], code: str) -> ProtectionNeed:
    matches = [n for n in needs if n.code == code]
    assert len(matches) == 1, f"expected exactly one {code}, got {_codes(needs)}"
    return matches[0]


CASES = [
    # id, person, answers, expected codes (order-insensitive)
    ("unaccompanied-15", PersonFacts(15), ScreeningAnswers(travelling_with_parent_or_guardian=False),
     {"UNACCOMPANIED_CHILD"}),
    ("unaccompanied-0", PersonFacts(0), ScreeningAnswers(travelling_with_parent_or_guardian=False),
     {"UNACCOMPANIED_CHILD"}),
    ("unaccompanied-17", PersonFacts(17), ScreeningAnswers(travelling_with_parent_or_guardian=False),
     {"UNACCOMPANIED_CHILD"}),
    ("adult-18-alone", PersonFacts(18), ScreeningAnswers(travelling_with_parent_or_guardian=False), set()),
    ("adult-40-alone", PersonFacts(40), ScreeningAnswers(travelling_with_parent_or_guardian=False), set()),
    ("disputed-claims-adult-alone", PersonFacts(25, age_disputed=True),
     ScreeningAnswers(travelling_with_parent_or_guardian=False), {"UNACCOMPANIED_CHILD"}),
    ("age-unknown-alone", PersonFacts(None), ScreeningAnswers(travelling_with_parent_or_guardian=False),
     {"UNACCOMPANIED_CHILD"}),
    ("child-with-parent", PersonFacts(9), ScreeningAnswers(travelling_with_parent_or_guardian=True), set()),
    ("disputed-with-parent", PersonFacts(16, age_disputed=True),
     ScreeningAnswers(travelling_with_parent_or_guardian=True), set()),
    ("adult-fear", PersonFacts(30), ScreeningAnswers(fear_of_return=True), {"INTERNATIONAL_PROTECTION"}),
    ("child-with-parent-fear", PersonFacts(10),
     ScreeningAnswers(fear_of_return=True, travelling_with_parent_or_guardian=True), {"INTERNATIONAL_PROTECTION"}),
    ("adult-trafficking", PersonFacts(22), ScreeningAnswers(trafficking_indicators=("debt bondage",)),
     {"TRAFFICKING_PRESUMED"}),
    ("everything", PersonFacts(16),
     ScreeningAnswers(fear_of_return=True, travelling_with_parent_or_guardian=False,
                      trafficking_indicators=("documents withheld", "recruited with false job offer")),
     {"UNACCOMPANIED_CHILD", "INTERNATIONAL_PROTECTION", "TRAFFICKING_PRESUMED"}),
    ("nothing-adult", PersonFacts(35), ScreeningAnswers(), set()),
    # Companionship not established: the child is protected as unaccompanied until it is.
    ("child-companion-unanswered", PersonFacts(12), ScreeningAnswers(), {"UNACCOMPANIED_CHILD"}),
    ("disputed-companion-unanswered", PersonFacts(19, age_disputed=True), ScreeningAnswers(fear_of_return=True),
     {"UNACCOMPANIED_CHILD", "INTERNATIONAL_PROTECTION"}),
    ("nothing-adult-with-family", PersonFacts(35), ScreeningAnswers(travelling_with_parent_or_guardian=True), set()),
]


@pytest.mark.parametrize(("person", "answers", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_evaluate_table(person, answers, expected):
    needs = evaluate(person, answers)
    codes = _codes(needs)
    assert set(codes) == expected
    assert len(codes) == len(set(codes)), "a need appears at most once"
    for need in needs:
        assert need.reasons, f"{need.code} carries no reasons"
        assert all(isinstance(r, str) and r.strip() for r in need.reasons)
        assert isinstance(need.urgency, Urgency)


def test_unaccompanied_child_is_immediate_and_explains_both_facts():
    need = _need(evaluate(PersonFacts(14), ScreeningAnswers(travelling_with_parent_or_guardian=False)),
                 "UNACCOMPANIED_CHILD")
    assert need.urgency is Urgency.IMMEDIATE
    text = " ".join(need.reasons).lower()
    assert "child" in text
    assert "parent" in text or "guardian" in text


def test_disputed_age_is_treated_as_a_child_whatever_the_claimed_age():
    for claimed in (18, 25, 70):
        person = PersonFacts(claimed, age_disputed=True)
        assert person.treated_as_child
        need = _need(evaluate(person, ScreeningAnswers(travelling_with_parent_or_guardian=False)),
                     "UNACCOMPANIED_CHILD")
        assert need.urgency is Urgency.IMMEDIATE
        assert any("disputed" in r or "uncertain" in r for r in need.reasons)


def test_fear_of_return_is_international_protection():
    need = _need(evaluate(PersonFacts(30), ScreeningAnswers(fear_of_return=True)), "INTERNATIONAL_PROTECTION")
    assert need.urgency in (Urgency.IMMEDIATE, Urgency.HIGH)
    assert any("fear" in r or "asylum" in r for r in need.reasons)


def test_trafficking_gives_one_reason_per_indicator():
    indicators = ("documents withheld by employer", "debt bondage", "movement restricted")
    need = _need(evaluate(PersonFacts(27), ScreeningAnswers(trafficking_indicators=indicators)),
                 "TRAFFICKING_PRESUMED")
    assert need.urgency is Urgency.IMMEDIATE
    assert len(need.reasons) == len(indicators)
    for indicator, reason in zip(indicators, need.reasons, strict=True):
        assert indicator in reason


def test_evaluate_is_deterministic():
    person = PersonFacts(16, age_disputed=True)
    answers = ScreeningAnswers(fear_of_return=True, travelling_with_parent_or_guardian=False,
                               trafficking_indicators=("a", "b"))
    assert evaluate(person, answers) == evaluate(person, answers)


@pytest.mark.parametrize(("person", "band"), [
    (PersonFacts(0), "0-11"),
    (PersonFacts(11), "0-11"),
    (PersonFacts(12), "12-17"),
    (PersonFacts(17), "12-17"),
    (PersonFacts(18), "18-59"),
    (PersonFacts(59), "18-59"),
    (PersonFacts(60), "60+"),
    (PersonFacts(95), "60+"),
    (PersonFacts(None), "unknown-treated-as-child"),
    (PersonFacts(30, age_disputed=True), "disputed-treated-as-child"),
    (PersonFacts(8, age_disputed=True), "disputed-treated-as-child"),
])
def test_age_band(person, band):
    assert age_band(person) == band


@pytest.mark.parametrize("age", [None, *range(0, 100)])
def test_age_band_agrees_with_treated_as_child(age):
    # A band for minors must go with treated_as_child, and an adult band never does.
    for disputed in (False, True):
        person = PersonFacts(age, age_disputed=disputed)
        child_band = age_band(person) in {"0-11", "12-17", "disputed-treated-as-child", "unknown-treated-as-child"}
        assert child_band == person.treated_as_child
