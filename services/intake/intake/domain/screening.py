"""Screening: a person's facts and questionnaire answers in, protection needs out. Pure and deterministic.

The decisions live in the versioned rule set (``domain/rules/<version>.json``, applied by
``domain/rules.py``); this module turns a person, the encounter's relationships and the answers into the
facts the rules read. Unanswered questions are ``None``: never taken as "no".
"""

from dataclasses import dataclass, fields
from functools import cache
from typing import Any

from intake.domain.rules import (
    CURRENT_RULES_VERSION, NEED_CODES, ProtectionNeed, RuleSet, Urgency, parse_rule_set, rule_set_document,
)

__all__ = ["NEED_CODES", "RULES_VERSION", "TRAFFICKING_INDICATORS", "PersonFacts", "ProtectionNeed",
           "ScreeningAnswers", "Urgency", "age_band", "current_rules", "evaluate", "facts_of", "rules"]

RULES_VERSION = CURRENT_RULES_VERSION

# Structured trafficking indicators (after the UNODC/IOM indicator lists); codes, never free text.
TRAFFICKING_INDICATORS = (
    "DEBT_BONDAGE", "DOCUMENTS_WITHHELD", "FORCED_LABOUR", "SEXUAL_EXPLOITATION", "MOVEMENT_RESTRICTED",
    "THREATS_AGAINST_PERSON_OR_FAMILY", "DECEPTIVE_RECRUITMENT", "TRAVEL_ARRANGED_BY_THIRD_PARTY",
    "NO_CONTROL_OF_EARNINGS", "SOMEONE_ELSE_SPEAKS_FOR_PERSON", "COACHED_ANSWERS", "UNAWARE_OF_DESTINATION",
)


@dataclass(frozen=True)
class PersonFacts:
    """What the encounter says about the person (not the questionnaire)."""

    age_years: int | None
    age_disputed: bool = False
    parent_or_guardian_in_group: bool = False
    other_relative_in_group: bool = False
    unrelated_adult_in_group: bool = False
    child_relative_in_group: bool = False  # a relative or "legal guardian" in the group who is a child too
    recorded_as_stateless: bool = False  # nationality XXA (ICAO Doc 9303)
    nationality_unspecified: bool = False  # nationality XXX: could not be determined
    holds_identity_document: bool = True

    @property
    def treated_as_child(self) -> bool:
        # Uncertain or disputed age: the person is treated as a child until an age assessment concludes.
        return self.age_disputed or self.age_years is None or self.age_years < 18

    @property
    def age_description(self) -> str:
        if self.age_disputed:
            return "age disputed, treated as a child until an age assessment concludes"
        if self.age_years is None:
            return "age unknown, treated as a child until an age assessment concludes"
        return f"aged {self.age_years}"


@dataclass(frozen=True)
class ScreeningAnswers:
    """The questionnaire, one question per field; None = not answered."""

    fear_of_return: bool | None = None
    wishes_to_seek_asylum: bool | None = None
    travelling_with_parent_or_guardian: bool | None = None
    travelling_with_other_relative: bool | None = None
    travelling_with_unrelated_adult: bool | None = None
    trafficking_indicators: tuple[str, ...] = ()
    sexual_violence_disclosed: bool | None = None
    sexual_violence_within_72h: bool | None = None
    urgent_medical_need: bool | None = None
    disability: bool | None = None
    pregnant: bool | None = None
    pregnancy_high_risk: bool | None = None
    considers_self_stateless: bool | None = None
    birth_registered: bool | None = None
    stranded_wishes_to_return: bool | None = None
    kidnapped: bool | None = None
    extorted: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}


def _fact_types() -> dict[str, type]:
    known: dict[str, type] = {f.name: (tuple if f.name == "trafficking_indicators" else bool)
                              for f in fields(ScreeningAnswers)}
    known.update({f.name: bool for f in fields(PersonFacts) if f.name != "age_years"})
    known.update(treated_as_child=bool, relative_present=bool, age_description=str, age_years=int)
    return known


FACT_TYPES = _fact_types()


def facts_of(person: PersonFacts, answers: ScreeningAnswers) -> dict[str, Any]:
    facts: dict[str, Any] = {f.name: getattr(person, f.name) for f in fields(PersonFacts)}
    facts.update({f.name: getattr(answers, f.name) for f in fields(ScreeningAnswers)})
    facts["treated_as_child"] = person.treated_as_child
    facts["age_description"] = person.age_description
    # A relative who is not registered still counts for "separated" (CRC GC6 §8), but a parent or
    # guardian counts only when registered in the group: a claim alone does not establish care. When the
    # relatives registered with the child are all children, "travels with another relative" means them.
    declared = answers.travelling_with_other_relative is True and not person.child_relative_in_group
    facts["relative_present"] = person.other_relative_in_group or declared
    return facts


def rules(version: str) -> RuleSet:
    return _rules(version)


@cache
def _rules(version: str) -> RuleSet:
    return parse_rule_set(rule_set_document(version), FACT_TYPES)


def current_rules() -> RuleSet:
    return rules(RULES_VERSION)


def evaluate(person: PersonFacts, answers: ScreeningAnswers, rule_set: RuleSet | None = None) -> list[ProtectionNeed]:
    return (rule_set or current_rules()).evaluate(facts_of(person, answers))


def age_band(person: PersonFacts) -> str:
    if person.age_disputed:
        return "disputed-treated-as-child"
    if person.age_years is None:
        return "unknown-treated-as-child"
    if person.age_years < 12:
        return "0-11"
    if person.age_years < 18:
        return "12-17"
    if person.age_years < 60:
        return "18-59"
    return "60+"
