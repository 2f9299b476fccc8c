"""Screening rules v2, table-driven: every rule of the data file is exercised, and the table proves it."""

import copy

import pytest

from intake.domain.encounter import Relationship, person_facts
from intake.domain.rules import NEED_CODES, InvalidRuleSet, parse_rule_set, rule_set_document
from intake.domain.screening import (
    FACT_TYPES, RULES_VERSION, TRAFFICKING_INDICATORS, PersonFacts, ScreeningAnswers, Urgency, age_band,
    current_rules, evaluate,
)

ADULT = PersonFacts(30)
CHILD = PersonFacts(15)
A = ScreeningAnswers

# id, person, answers, {need code: (urgency, rule ids that must have fired)}
CASES = [
    ("uac-alone", CHILD, A(), {"UNACCOMPANIED_CHILD": ("immediate", {"UAC-1"})}),
    ("uac-infant", PersonFacts(0), A(), {"UNACCOMPANIED_CHILD": ("immediate", {"UAC-1"})}),
    ("uac-17", PersonFacts(17), A(), {"UNACCOMPANIED_CHILD": ("immediate", {"UAC-1"})}),
    ("uac-with-unrelated-adult", PersonFacts(15, unrelated_adult_in_group=True), A(),
     {"UNACCOMPANIED_CHILD": ("immediate", {"UAC-1"})}),
    ("uac-claims-parent-not-registered", CHILD, A(travelling_with_parent_or_guardian=True),
     {"UNACCOMPANIED_CHILD": ("immediate", {"UAC-1"})}),
    ("uac-age-unknown", PersonFacts(None), A(), {"UNACCOMPANIED_CHILD": ("immediate", {"UAC-1"})}),
    ("uac-disputed-claims-adult", PersonFacts(25, age_disputed=True), A(),
     {"UNACCOMPANIED_CHILD": ("immediate", {"UAC-1"})}),
    ("uac-denies-registered-parent", PersonFacts(12, parent_or_guardian_in_group=True),
     A(travelling_with_parent_or_guardian=False), {"UNACCOMPANIED_CHILD": ("immediate", {"UAC-2"})}),
    ("child-with-parent", PersonFacts(9, parent_or_guardian_in_group=True), A(), {}),
    ("child-with-parent-confirms", PersonFacts(9, parent_or_guardian_in_group=True),
     A(travelling_with_parent_or_guardian=True), {}),
    ("separated-relative-in-group", PersonFacts(14, other_relative_in_group=True), A(),
     {"SEPARATED_CHILD": ("immediate", {"SEP-1"})}),
    ("separated-relative-declared", CHILD, A(travelling_with_other_relative=True),
     {"SEPARATED_CHILD": ("immediate", {"SEP-1"})}),
    ("separated-disputed-age", PersonFacts(20, age_disputed=True, other_relative_in_group=True), A(),
     {"SEPARATED_CHILD": ("immediate", {"SEP-1"})}),
    ("uac-siblings-alone", PersonFacts(12, child_relative_in_group=True), A(travelling_with_other_relative=True),
     {"UNACCOMPANIED_CHILD": ("immediate", {"UAC-1"})}),
    ("separated-adult-relative-and-sibling", PersonFacts(12, other_relative_in_group=True,
                                                         child_relative_in_group=True), A(),
     {"SEPARATED_CHILD": ("immediate", {"SEP-1"})}),
    ("adult-18-alone", PersonFacts(18), A(), {}),
    ("adult-nothing", ADULT, A(travelling_with_parent_or_guardian=False), {}),
    ("fear", ADULT, A(fear_of_return=True), {"INTERNATIONAL_PROTECTION": ("high", {"IP-1"})}),
    ("asylum", ADULT, A(wishes_to_seek_asylum=True), {"INTERNATIONAL_PROTECTION": ("high", {"IP-1"})}),
    ("no-fear-answered", ADULT, A(fear_of_return=False, wishes_to_seek_asylum=False), {}),
    ("trafficking-control", ADULT, A(trafficking_indicators=("DEBT_BONDAGE",)),
     {"TRAFFICKING_PRESUMED": ("immediate", {"TRF-1"})}),
    ("trafficking-two-weak", ADULT, A(trafficking_indicators=("DECEPTIVE_RECRUITMENT", "COACHED_ANSWERS")),
     {"TRAFFICKING_PRESUMED": ("high", {"TRF-2"})}),
    ("trafficking-one-weak-adult", ADULT, A(trafficking_indicators=("DECEPTIVE_RECRUITMENT",)), {}),
    ("trafficking-one-weak-child", PersonFacts(16, parent_or_guardian_in_group=True),
     A(trafficking_indicators=("UNAWARE_OF_DESTINATION",)), {"TRAFFICKING_PRESUMED": ("immediate", {"TRF-3"})}),
    ("sgbv-recent", ADULT, A(sexual_violence_disclosed=True, sexual_violence_within_72h=True),
     {"SGBV_SURVIVOR": ("immediate", {"SGBV-1"}), "MEDICAL_URGENT": ("immediate", {"MED-2"})}),
    ("sgbv-older", ADULT, A(sexual_violence_disclosed=True, sexual_violence_within_72h=False),
     {"SGBV_SURVIVOR": ("high", {"SGBV-2"})}),
    ("sgbv-timing-unknown", ADULT, A(sexual_violence_disclosed=True), {"SGBV_SURVIVOR": ("high", {"SGBV-2"})}),
    ("medical", ADULT, A(urgent_medical_need=True), {"MEDICAL_URGENT": ("immediate", {"MED-1"})}),
    ("pregnancy-high-risk", ADULT, A(pregnant=True, pregnancy_high_risk=True),
     {"MEDICAL_URGENT": ("high", {"MED-3"})}),
    ("pregnancy-routine", ADULT, A(pregnant=True, pregnancy_high_risk=False), {}),
    ("medical-and-pregnancy", ADULT, A(urgent_medical_need=True, pregnant=True, pregnancy_high_risk=True),
     {"MEDICAL_URGENT": ("immediate", {"MED-1", "MED-3"})}),
    ("disability", ADULT, A(disability=True), {"DISABILITY": ("standard", {"DIS-1"})}),
    ("stateless-declared", ADULT, A(considers_self_stateless=True), {"STATELESSNESS_RISK": ("standard", {"STL-1"})}),
    ("recorded-stateless", PersonFacts(30, recorded_as_stateless=True), A(),
     {"STATELESSNESS_RISK": ("standard", {"STL-2"})}),
    ("nationality-unspecified-no-document", PersonFacts(30, nationality_unspecified=True,
                                                        holds_identity_document=False), A(),
     {"STATELESSNESS_RISK": ("standard", {"STL-3"})}),
    ("nationality-unspecified-but-document", PersonFacts(30, nationality_unspecified=True), A(), {}),
    ("no-nationality-recorded-no-document", PersonFacts(30, holds_identity_document=False), A(), {}),
    ("birth-unregistered", ADULT, A(birth_registered=False), {"STATELESSNESS_RISK": ("standard", {"STL-4"})}),
    ("stranded-return", ADULT, A(stranded_wishes_to_return=True),
     {"STRANDED_ASSISTED_RETURN": ("standard", {"RET-1"})}),
    ("stranded-but-fears-return", ADULT, A(stranded_wishes_to_return=True, fear_of_return=True),
     {"INTERNATIONAL_PROTECTION": ("high", {"IP-1"})}),
    ("stranded-but-seeks-asylum", ADULT, A(stranded_wishes_to_return=True, wishes_to_seek_asylum=True),
     {"INTERNATIONAL_PROTECTION": ("high", {"IP-1"})}),
    ("kidnapped", ADULT, A(kidnapped=True), {"CRIME_VICTIM": ("high", {"CRM-1"})}),
    ("extorted", ADULT, A(extorted=True), {"CRIME_VICTIM": ("standard", {"CRM-2"})}),
    ("kidnapped-and-extorted", ADULT, A(kidnapped=True, extorted=True),
     {"CRIME_VICTIM": ("high", {"CRM-1", "CRM-2"})}),
    ("everything-child", PersonFacts(16, unrelated_adult_in_group=True),
     A(fear_of_return=True, trafficking_indicators=("DOCUMENTS_WITHHELD", "DECEPTIVE_RECRUITMENT", "COACHED_ANSWERS"),
       sexual_violence_disclosed=True, sexual_violence_within_72h=True, disability=True, kidnapped=True),
     {"UNACCOMPANIED_CHILD": ("immediate", {"UAC-1"}), "INTERNATIONAL_PROTECTION": ("high", {"IP-1"}),
      "TRAFFICKING_PRESUMED": ("immediate", {"TRF-1", "TRF-2", "TRF-3"}),
      "SGBV_SURVIVOR": ("immediate", {"SGBV-1"}), "MEDICAL_URGENT": ("immediate", {"MED-2"}),
      "DISABILITY": ("standard", {"DIS-1"}), "CRIME_VICTIM": ("high", {"CRM-1"})}),
]


@pytest.mark.parametrize(("person", "answers", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rules_table(person, answers, expected):
    needs = evaluate(person, answers)
    assert [n.code for n in needs] == list(dict.fromkeys(n.code for n in needs)), "one need per code"
    assert {n.code for n in needs} == set(expected)
    for need in needs:
        urgency, rule_ids = expected[need.code]
        assert need.urgency is Urgency(urgency), need
        assert set(need.rule_ids) == rule_ids, need
        assert need.reasons and all(isinstance(r, str) and r.strip() for r in need.reasons)
        assert not any("{" in r for r in need.reasons), "every placeholder was filled"


def test_every_rule_in_the_data_file_is_exercised_by_the_table():
    fired = {rid for _, person, answers, _ in CASES for n in evaluate(person, answers) for rid in n.rule_ids}
    expected = {rid for *_, exp in CASES for _, ids in exp.values() for rid in ids}
    assert fired == expected == current_rules().rule_ids


def test_every_need_code_of_the_catalog_can_be_found():
    found = {code for *_, exp in CASES for code in exp}
    assert found == set(NEED_CODES)


def test_reasons_explain_the_unaccompanied_child():
    [need] = evaluate(PersonFacts(15, unrelated_adult_in_group=True), A())
    assert need.reasons == ("treated as a child: aged 15", "no parent or legal guardian in the registered group",
                            "no other relative travels with the child", "travels with an adult who is not a relative")


def test_an_unrelated_adult_the_child_names_is_noted_too():
    [need] = evaluate(CHILD, A(travelling_with_unrelated_adult=True))
    assert need.code == "UNACCOMPANIED_CHILD" and "travels with an adult who is not a relative" in need.reasons


def test_disputed_age_reason_says_why_the_person_is_a_child():
    [need] = evaluate(PersonFacts(25, age_disputed=True), A())
    assert "age disputed" in need.reasons[0] and "age assessment" in need.reasons[0]


def test_trafficking_reason_names_the_matched_indicators():
    [need] = evaluate(ADULT, A(trafficking_indicators=("DEBT_BONDAGE", "FORCED_LABOUR")))
    assert need.reasons == ("trafficking indicator of exploitation or control: DEBT_BONDAGE, FORCED_LABOUR",)


def test_sgbv_within_72_hours_is_flagged():
    needs = {n.code: n for n in evaluate(ADULT, A(sexual_violence_disclosed=True, sexual_violence_within_72h=True))}
    assert needs["SGBV_SURVIVOR"].flags == ("VIOLENCE_WITHIN_72H",)
    older = {n.code: n for n in evaluate(ADULT, A(sexual_violence_disclosed=True, sexual_violence_within_72h=False))}
    assert older["SGBV_SURVIVOR"].flags == ()


def test_unanswered_is_not_no():
    # birth_registered unanswered must not look like "never registered".
    assert evaluate(ADULT, A(birth_registered=None)) == []
    assert evaluate(ADULT, A(birth_registered=True)) == []


def test_evaluation_is_deterministic():
    person, answers = CASES[-1][1], CASES[-1][2]
    assert evaluate(person, answers) == evaluate(person, answers)


def test_indicators_in_the_rules_are_the_questionnaire_codes():
    used = {c for r in current_rules().rules for c in _any_of_codes(r.when)}
    assert used == set(TRAFFICKING_INDICATORS)


def _any_of_codes(node):
    if "any_of" in node:
        yield from node["any_of"]
    for key in ("all", "any"):
        for child in node.get(key, ()):
            yield from _any_of_codes(child)
    if "not" in node:
        yield from _any_of_codes(node["not"])


def test_a_new_rule_set_does_not_change_what_the_current_one_says():
    document = copy.deepcopy(rule_set_document(RULES_VERSION))
    document["version"] = "v4-test"
    for rule in document["rules"]:
        if rule["id"] == "IP-1":
            rule["urgency"] = "immediate"
    v3 = parse_rule_set(document, FACT_TYPES)
    [under_v3] = evaluate(ADULT, A(fear_of_return=True), v3)
    [under_v2] = evaluate(ADULT, A(fear_of_return=True))
    assert (under_v3.urgency, under_v2.urgency) == (Urgency.IMMEDIATE, Urgency.HIGH)
    assert rule_set_document(RULES_VERSION)["version"] == RULES_VERSION


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d["rules"][0]["when"]["all"].append({"fact": "favourite_colour", "is": True}), "unknown fact"),
    (lambda d: d["rules"][0].update(need="HUNGRY"), "unknown need"),
    (lambda d: d["rules"][0].update(urgency="whenever"), "whenever"),
    (lambda d: d["rules"][1].update(id=d["rules"][0]["id"]), "unique"),
    (lambda d: d["rules"][0]["when"]["all"].append({"fact": "kidnapped", "any_of": ["X"]}), "list fact"),
    (lambda d: d["rules"][0]["when"]["all"].append({"fact": "kidnapped", "is": True, "reason": "{nope}"}),
     "placeholder"),
    (lambda d: d["rules"][0].pop("when"), "badly shaped"),
])
def test_a_broken_rule_file_is_refused(mutate, message):
    document = copy.deepcopy(rule_set_document(RULES_VERSION))
    mutate(document)
    with pytest.raises(InvalidRuleSet, match=message):
        parse_rule_set(document, FACT_TYPES)


def test_relationships_of_the_encounter_make_the_facts():
    from datetime import date

    rels = [Relationship("mother", "girl", "parent"), Relationship("uncle", "boy", "other_relative"),
            Relationship("stranger", "teen", "unrelated_adult")]
    today = date(2026, 11, 28)

    def facts(pid, **kw):
        return person_facts(person_id=pid, date_of_birth=kw.get("dob"), estimated_age=kw.get("age", 10),
                            age_disputed=False, nationality="HND", document_count=0, relationships=rels, today=today)

    assert facts("girl").parent_or_guardian_in_group and not facts("girl").other_relative_in_group
    assert not facts("mother").parent_or_guardian_in_group, "being a parent is not having one"
    assert facts("boy").other_relative_in_group and facts("uncle").other_relative_in_group
    assert facts("teen").unrelated_adult_in_group and not facts("teen").parent_or_guardian_in_group
    assert facts("x", dob=date(2008, 11, 29)).age_years == 17
    assert facts("x", dob=date(2008, 11, 28)).age_years == 18
    assert not facts("girl").holds_identity_document and not facts("girl").recorded_as_stateless
    stateless = person_facts(person_id="s", date_of_birth=None, estimated_age=30, age_disputed=False,
                             nationality="XXA", document_count=1, relationships=[], today=today)
    assert stateless.recorded_as_stateless and not stateless.nationality_unspecified


def test_age_bands():
    assert [age_band(PersonFacts(a)) for a in (0, 11, 12, 17, 18, 59, 60)] == \
           ["0-11", "0-11", "12-17", "12-17", "18-59", "18-59", "60+"]
    assert age_band(PersonFacts(None)) == "unknown-treated-as-child"
    assert age_band(PersonFacts(30, age_disputed=True)) == "disputed-treated-as-child"


def test_a_child_is_not_the_caregiver_of_a_child():
    """Siblings of 16 and 12 alone: both unaccompanied, even when the elder is registered as guardian."""
    from datetime import date

    today = date(2026, 11, 28)
    rels = [Relationship("sister16", "brother12", "other_relative"), Relationship("aunt", "girl", "other_relative"),
            Relationship("brother17", "boy8", "legal_guardian"), Relationship("mother16", "baby", "parent")]
    children = {"sister16", "brother12", "girl", "brother17", "boy8", "mother16", "baby"}

    def facts(pid, age):
        return person_facts(person_id=pid, date_of_birth=None, estimated_age=age, age_disputed=False,
                            nationality="HND", document_count=0, relationships=rels, today=today, children=children)

    for pid, age in (("sister16", 16), ("brother12", 12), ("boy8", 8), ("brother17", 17)):
        person = facts(pid, age)
        assert not person.other_relative_in_group and not person.parent_or_guardian_in_group, pid
        assert person.child_relative_in_group, pid
        [need] = evaluate(person, A(travelling_with_other_relative=True))
        assert need.code == "UNACCOMPANIED_CHILD", pid
        assert any("who is a child too" in r for r in need.reasons), need.reasons
    assert facts("girl", 10).other_relative_in_group, "an adult aunt is a relative who counts"
    assert facts("baby", 0).parent_or_guardian_in_group, "a young mother is still her baby's parent"
    assert not facts("mother16", 16).parent_or_guardian_in_group, "being a parent is not having one"


def test_every_rule_file_still_loads_under_its_own_version():
    from intake.domain.rules import RULES_DIR
    from intake.domain.screening import rules

    versions = sorted(p.stem for p in RULES_DIR.glob("*.json"))
    assert RULES_VERSION in versions and "v2" in versions
    for version in versions:
        assert rules(version).version == version


# A released rule file never changes: results name their version, and a version must keep meaning what it
# meant. To change a rule, add a new file and a new CURRENT_RULES_VERSION, and its digest here.
RELEASED_RULE_FILES = {
    "v2": "2d9443439ba8e0c2448716d188be46e6b2623a2f8e2f963cdd31e68a0878fb18",
    "v3": "66ca1004a613d4135f7ca989f4e35f984923177580d8a7eff18ba009be0bb30b",
}


def test_a_released_rule_file_is_never_edited_in_place():
    import hashlib

    from intake.domain.rules import RULES_DIR

    on_disk = {p.stem: hashlib.sha256(p.read_bytes()).hexdigest() for p in RULES_DIR.glob("*.json")}
    assert on_disk == RELEASED_RULE_FILES
