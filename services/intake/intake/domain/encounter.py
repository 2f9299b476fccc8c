"""Encounters: who was met together, and how they are related. Pure."""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from intake.domain.screening import PersonFacts

# "from_person is <kind> of to_person". other_relative and unrelated_adult read both ways.
PARENT = "parent"
LEGAL_GUARDIAN = "legal_guardian"
OTHER_RELATIVE = "other_relative"
UNRELATED_ADULT = "unrelated_adult"
RELATIONSHIP_KINDS = (PARENT, LEGAL_GUARDIAN, OTHER_RELATIVE, UNRELATED_ADULT)
# ICAO Doc 9303 codes that ISO 3166 lacks.
STATELESS = "XXA"
UNSPECIFIED_NATIONALITY = "XXX"
DOCUMENT_TYPES = ("passport", "national_id", "birth_certificate", "travel_document", "residence_permit", "other")


@dataclass(frozen=True)
class Relationship:
    from_person_id: str
    to_person_id: str
    kind: str


def age_in_years(date_of_birth: date | None, estimated_age: int | None, today: date) -> int | None:
    if date_of_birth is None:
        return estimated_age
    dob = date_of_birth
    return today.year - dob.year - ((today.month, today.day) < (dob.month, dob.day))


def person_facts(*, person_id: str, date_of_birth: date | None, estimated_age: int | None, age_disputed: bool,
                 nationality: str | None, document_count: int, relationships: Iterable[Relationship],
                 today: date) -> PersonFacts:
    """The encounter's facts about one person: age, and who of the group cares for or travels with them."""
    parent_or_guardian = other_relative = unrelated_adult = False
    for rel in relationships:
        if rel.kind in (PARENT, LEGAL_GUARDIAN):
            parent_or_guardian |= rel.to_person_id == person_id
        elif person_id in (rel.from_person_id, rel.to_person_id):
            other_relative |= rel.kind == OTHER_RELATIVE
            unrelated_adult |= rel.kind == UNRELATED_ADULT
    return PersonFacts(
        age_years=age_in_years(date_of_birth, estimated_age, today), age_disputed=age_disputed,
        parent_or_guardian_in_group=parent_or_guardian, other_relative_in_group=other_relative,
        unrelated_adult_in_group=unrelated_adult, recorded_as_stateless=nationality == STATELESS,
        nationality_unspecified=nationality == UNSPECIFIED_NATIONALITY,
        holds_identity_document=document_count > 0)
