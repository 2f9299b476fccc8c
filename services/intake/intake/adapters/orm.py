"""Intake's own tables. Personal data stays here, sealed with the person's key (adapters/vault.py); other
services learn codes and ids only.

Columns documented "sealed" hold ``enc1:`` values (AES-GCM under the person's data key, see
enlace_platform.crypto): once the person is erased (key shredded) they are noise."""

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel
from enlace_platform.crypto import SubjectKey
from enlace_platform.agencies import KnownAgency


def _id() -> str:
    return str(uuid.uuid4())


def _now() -> datetime:
    return datetime.now(UTC)


class CaseRow(SQLModel, table=True):
    __tablename__ = "intake_case"

    id: str = Field(default_factory=_id, primary_key=True)
    agency_id: str = Field(index=True, description="The registering migration authority")
    jurisdiction: str
    place: str
    encountered_at: datetime
    created_at: datetime = Field(default_factory=_now)
    last_activity_at: datetime = Field(default_factory=_now, index=True,
                                       description="The latest write about the case: the retention clock")


class PersonRow(SQLModel, table=True):
    __tablename__ = "intake_person"

    id: str = Field(default_factory=_id, primary_key=True)
    case_id: str = Field(foreign_key="intake_case.id", index=True)
    position: int = Field(default=0, description="Order of registration within the case")
    given_names: str = Field(description="Sealed")
    family_names: str = Field(description="Sealed")
    sex: str = Field(description="Sealed")
    date_of_birth: str | None = Field(default=None, description="Sealed ISO date")
    estimated_age: str | None = Field(default=None, description="Sealed number of years")
    age_disputed: bool = False
    nationality: str | None = Field(default=None, description="Sealed")
    languages: Any = Field(default=None, sa_column=Column(JSON, nullable=False), description="Sealed JSON list")
    version: int = 1
    updated_at: datetime = Field(default_factory=_now)
    erased_at: datetime | None = Field(default=None, index=True,
                                       description="Set when the person's key was shredded: nothing of them opens")


class PersonDocumentRow(SQLModel, table=True):
    __tablename__ = "intake_person_document"

    id: str = Field(default_factory=_id, primary_key=True)
    person_id: str = Field(foreign_key="intake_person.id", index=True)
    case_id: str = Field(foreign_key="intake_case.id", index=True)
    position: int = 0
    type: str = Field(description="Sealed")
    number: str = Field(description="Sealed; searched through intake_search_token")
    issuing_country: str | None = Field(default=None, description="Sealed")


class PersonVersionRow(SQLModel, table=True):
    """Every version of a person's record, the first one included: the history is never rewritten."""

    __tablename__ = "intake_person_version"
    __table_args__ = (UniqueConstraint("person_id", "version"),)

    id: str = Field(default_factory=_id, primary_key=True)
    person_id: str = Field(foreign_key="intake_person.id", index=True)
    version: int
    snapshot: Any = Field(sa_column=Column(JSON, nullable=False), description="Sealed JSON of the record")
    changed_fields: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    changed_by: str
    changed_by_agency_id: str
    changed_at: datetime = Field(default_factory=_now)


class RelationshipRow(SQLModel, table=True):
    """from_person is <kind> of to_person (parent, legal_guardian, other_relative, unrelated_adult)."""

    __tablename__ = "intake_relationship"

    id: str = Field(default_factory=_id, primary_key=True)
    case_id: str = Field(foreign_key="intake_case.id", index=True)
    from_person_id: str = Field(foreign_key="intake_person.id")
    to_person_id: str = Field(foreign_key="intake_person.id")
    kind: str


class ScreeningRow(SQLModel, table=True):
    """One screening result. Stored with its rules version and reasons; never recomputed."""

    __tablename__ = "intake_screening"

    id: str = Field(default_factory=_id, primary_key=True)
    case_id: str = Field(foreign_key="intake_case.id", index=True)
    person_id: str = Field(foreign_key="intake_person.id", index=True)
    rules_version: str
    answers: Any = Field(sa_column=Column(JSON, nullable=False), description="Sealed JSON: they describe violence")
    facts: Any = Field(default=None, sa_column=Column(JSON, nullable=False), description="Sealed JSON")
    needs: Any = Field(sa_column=Column(JSON, nullable=False),
                       description="Sealed JSON: the needs with their reasons, rules and flags")
    need_codes: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False),
                             description="[{code, urgency}], as case.screened.v1 publishes them")
    age_band: str = ""
    consent_scope: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    screened_by: str
    created_at: datetime = Field(default_factory=_now)


class ConsentRow(SQLModel, table=True):
    __tablename__ = "intake_consent"

    id: str = Field(default_factory=_id, primary_key=True)
    case_id: str = Field(foreign_key="intake_case.id", index=True)
    person_id: str = Field(foreign_key="intake_person.id", index=True)
    recipient_agency_type: str
    purpose: str
    basis: str = Field(description="consent or mandatory_override")
    status: str = Field(default="granted", description="granted or withdrawn")
    reason: str | None = Field(default=None, description="Sealed: why a mandatory override was applied")
    recorded_by: str = Field(description="The user who recorded the consent or applied the override")
    recorded_by_agency_id: str
    granted_at: datetime = Field(default_factory=_now)
    withdrawn_at: datetime | None = None
    withdrawn_by: str | None = None


class SearchTokenRow(SQLModel, table=True):
    """Blind index: HMAC-SHA256 of a person's normalised name words and whole document numbers, under a key
    derived from the key-encryption key. Rows are deleted on erasure."""

    __tablename__ = "intake_search_token"

    id: str = Field(default_factory=_id, primary_key=True)
    person_id: str = Field(foreign_key="intake_person.id", index=True)
    case_id: str = Field(foreign_key="intake_case.id", index=True)
    token: str = Field(index=True, description="hex HMAC of 'name:<word>' or 'document:<number>'")


class ProtectionHoldRow(SQLModel, table=True):
    """A protection hold as learnt from referral.protection_hold; released holds are kept."""

    __tablename__ = "intake_protection_hold"

    hold_id: str = Field(primary_key=True)
    case_id: str = Field(index=True)
    person_id: str = Field(index=True)
    referral_id: str | None = None
    need_code: str | None = None
    placed_at: datetime | None = None
    not_before: datetime | None = None
    status: str = "active"
    released_at: datetime | None = None
    release_reason: str | None = None
    release_referral_id: str | None = None
    outcome_code: str | None = None


class ReferralViewRow(SQLModel, table=True):
    """What intake knows of a referral: its status, sender, receiver and outcome code; never its notes."""

    __tablename__ = "intake_referral"

    referral_id: str = Field(primary_key=True)
    case_id: str = Field(index=True)
    person_id: str = Field(index=True)
    need_code: str
    status: str
    from_agency_id: str | None = Field(default=None, description="None: recorded before intake kept the sender")
    sender_entitled: bool | None = Field(
        default=None, description="Whether the sender might refer this person, by intake's own records (it "
                                  "registered the case, coordinates its jurisdiction, or works on an entitled "
                                  "referral for the person), decided when intake first learnt the sender. False: "
                                  "the referral grants nothing and its hold blocks nothing. None: not decided yet")
    to_agency_id: str | None = Field(default=None, index=True)
    to_agency_type: str | None = None
    outcome_code: str | None = None
    last_event_type: str
    occurred_at: datetime


class RemovalOrderRow(SQLModel, table=True):
    """Removal orders, the refused ones included: every attempt under a hold stays on record."""

    __tablename__ = "intake_removal_order"

    id: str = Field(default_factory=_id, primary_key=True)
    case_id: str = Field(foreign_key="intake_case.id", index=True)
    person_id: str = Field(foreign_key="intake_person.id", index=True)
    destination_country: str
    status: str = Field(description="accepted or refused")
    blocking_hold_ids: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    requested_by: str
    requested_by_agency_id: str
    requested_at: datetime = Field(default_factory=_now)


TABLES = [SubjectKey.__table__, CaseRow.__table__, PersonRow.__table__, PersonDocumentRow.__table__, PersonVersionRow.__table__,
          RelationshipRow.__table__, ScreeningRow.__table__, ConsentRow.__table__, ProtectionHoldRow.__table__,
          ReferralViewRow.__table__, RemovalOrderRow.__table__, SearchTokenRow.__table__, KnownAgency.__table__]
