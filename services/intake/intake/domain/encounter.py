"""Encounters: who was met together, and how they are related. Pure."""

from collections.abc import Collection, Iterable
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


def treated_as_child(date_of_birth: date | None, estimated_age: int | None, age_disputed: bool, today: date) -> bool:
    """Under 18, age unknown, or age disputed: a child until an age assessment concludes."""
    age = age_in_years(date_of_birth, estimated_age, today)
    return age_disputed or age is None or age < 18


def person_facts(*, person_id: str, date_of_birth: date | None, estimated_age: int | None, age_disputed: bool,
                 nationality: str | None, document_count: int, relationships: Iterable[Relationship],
                 today: date, children: Collection[str] = ()) -> PersonFacts:
    """The encounter's facts about one person: age, and who of the group cares for or travels with them.

    ``children`` are the ids of the group's members treated as children. A child registered as someone's
    legal guardian or other relative is not an adult who cares for them (CRC GC6 paras. 7-8: a separated
    child is one accompanied by other *adult* family members): siblings travelling alone are unaccompanied.
    A parent counts whatever their age (a young mother is still her baby's parent).
    """
    parent_or_guardian = other_relative = unrelated_adult = child_relative = False
    for rel in relationships:
        if person_id not in (rel.from_person_id, rel.to_person_id):
            continue
        other = rel.to_person_id if rel.from_person_id == person_id else rel.from_person_id
        if rel.kind in (PARENT, LEGAL_GUARDIAN) and rel.to_person_id == person_id:
            if rel.kind == LEGAL_GUARDIAN and other in children:
                child_relative = True  # a child is nobody's guardian
            else:
                parent_or_guardian = True
        elif rel.kind == UNRELATED_ADULT:
            unrelated_adult = True
        elif other in children:
            child_relative = True  # a sibling, cousin, or the person's own child or ward
        elif rel.kind == OTHER_RELATIVE:
            other_relative = True
    return PersonFacts(
        age_years=age_in_years(date_of_birth, estimated_age, today), age_disputed=age_disputed,
        parent_or_guardian_in_group=parent_or_guardian, other_relative_in_group=other_relative,
        unrelated_adult_in_group=unrelated_adult, child_relative_in_group=child_relative,
        recorded_as_stateless=nationality == STATELESS,
        nationality_unspecified=nationality == UNSPECIFIED_NATIONALITY,
        holds_identity_document=document_count > 0)
