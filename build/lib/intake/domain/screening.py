"""Screening: questionnaire answers in, protection needs out. Pure and deterministic.

This is the walking-skeleton rule set; the full, data-driven and versioned rules engine
comes with the intake issue. Every need carries the reasons that produced it.
"""

from dataclasses import dataclass, field
from enum import StrEnum

RULES_VERSION = "skeleton-1"


class Urgency(StrEnum):
    IMMEDIATE = "immediate"
    HIGH = "high"
    STANDARD = "standard"


@dataclass(frozen=True)
class ScreeningAnswers:
    fear_of_return: bool = False
    travelling_with_parent_or_guardian: bool | None = None
    trafficking_indicators: tuple[str, ...] = ()


@dataclass(frozen=True)
class PersonFacts:
    age_years: int | None
    age_disputed: bool = False

    @property
    def treated_as_child(self) -> bool:
        # Uncertain or disputed age: the person is treated as a child until assessed.
        return self.age_disputed or self.age_years is None or self.age_years < 18


@dataclass(frozen=True)
class ProtectionNeed:
    code: str
    urgency: Urgency
    reasons: tuple[str, ...] = field(default_factory=tuple)


def evaluate(person: PersonFacts, answers: ScreeningAnswers) -> list[ProtectionNeed]:
    needs: list[ProtectionNeed] = []
    if person.treated_as_child and answers.travelling_with_parent_or_guardian is not True:
        # Until a parent or legal guardian is established, the child is protected as unaccompanied.
        companion = ("not travelling with a parent or legal guardian"
                     if answers.travelling_with_parent_or_guardian is False
                     else "no parent or legal guardian established (question not answered)")
        reasons = ["treated as a child (under 18, or age uncertain or disputed)", companion]
        needs.append(ProtectionNeed("UNACCOMPANIED_CHILD", Urgency.IMMEDIATE, tuple(reasons)))
    if answers.fear_of_return:
        needs.append(ProtectionNeed("INTERNATIONAL_PROTECTION", Urgency.HIGH,
                                    ("expressed fear of return or wish to seek asylum",)))
    if answers.trafficking_indicators:
        needs.append(ProtectionNeed("TRAFFICKING_PRESUMED", Urgency.IMMEDIATE,
                                    tuple(f"trafficking indicator: {i}" for i in answers.trafficking_indicators)))
    return needs


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
