"""Referral's own tables: the service directory (Open Referral HSDS style), referrals with their
history and notes, protection holds, and what routing needs to know about persons (consent scope)."""

import uuid
from datetime import UTC, datetime

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel
from enlace_platform.crypto import SubjectKey


def _now() -> datetime:
    return datetime.now(UTC)


def _uuid() -> str:
    return str(uuid.uuid4())


class AgencyRow(SQLModel, table=True):
    __tablename__ = "referral_agency"

    id: str = Field(primary_key=True)
    name: str
    type: str
    jurisdiction: str = Field(index=True)
    # On the enforcement side of the information barrier (enlace_platform.firewall); by default a migration
    # authority is, and the jurisdiction's coordinator may mark any agency.
    enforcement: bool = False


class ServiceRow(SQLModel, table=True):
    __tablename__ = "referral_service"

    id: str = Field(primary_key=True)
    agency_id: str = Field(foreign_key="referral_agency.id", index=True)
    name: str
    need_codes: list[str] = Field(sa_column=Column(JSON, nullable=False))
    area: str = Field(index=True)
    age_min: int = 0
    age_max: int = 120
    languages: list[str] = Field(sa_column=Column(JSON, nullable=False))
    opening_hours: str = ""
    capacity: int = 0
    active: bool = True


class ReferralRow(SQLModel, table=True):
    __tablename__ = "referral_referral"
    # One open referral per person and need: open_key is "<person>|<need>" while open, NULL once closed.
    # Routing counts each service's open referrals (capacity) from the index on (to_service_id, status) alone.
    __table_args__ = (UniqueConstraint("open_key"),
                      Index("ix_referral_referral_to_service_id_status", "to_service_id", "status"))

    id: str = Field(default_factory=_uuid, primary_key=True)
    case_id: str = Field(index=True)
    screening_id: str | None = Field(default=None, index=True, description="None for a manual referral")
    person_id: str = Field(index=True)
    need_code: str
    urgency: str
    status: str = "requested"
    version: int = Field(default=1, description="Optimistic lock: every change is UPDATE ... WHERE version = v")
    is_lead: bool = False
    jurisdiction: str = Field(index=True)
    age_band: str
    languages: list[str] = Field(sa_column=Column(JSON, nullable=False))
    from_agency_id: str = Field(index=True)
    to_agency_id: str | None = Field(default=None, index=True, description="None: in the coordinator's queue")
    to_agency_type: str | None = None
    to_service_id: str | None = None
    coordinator_agency_id: str
    previous_referral_id: str | None = None
    routing: dict = Field(sa_column=Column(JSON, nullable=False), description="The routing decision, explained")
    routing_reasons: list[str] = Field(sa_column=Column(JSON, nullable=False))
    escalation_reason: str | None = Field(default=None, description="Set while the coordinator must act")
    clock: str | None = None
    due_at: datetime | None = Field(default=None, index=True)
    clock_fired_at: datetime | None = Field(default=None, description="The running clock's breach was published")
    reason_code: str | None = None
    outcome_code: str | None = None
    open_key: str | None = None
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)
    accepted_at: datetime | None = None
    closed_at: datetime | None = None


class HistoryRow(SQLModel, table=True):
    __tablename__ = "referral_history"

    id: str = Field(default_factory=_uuid, primary_key=True)
    referral_id: str = Field(index=True)
    seq: int = Field(description="Order within the referral: 1, 2, 3 ...")
    at: datetime = Field(default_factory=_now)
    action: str
    from_status: str | None
    to_status: str
    actor_agency_id: str | None = Field(description="None: the system (routing, clocks)")
    actor_subject: str | None = None
    reason_code: str | None = None
    # The free text is about the person: sealed with the person's key (enlace_platform.crypto); see sealing.py.
    reason_text: str | None = Field(default=None, description="Sealed")
    outcome_code: str | None = None
    note: str | None = Field(default=None, description="Sealed")
    to_agency_id: str | None = Field(default=None, index=True)  # who was ever addressed (audit scope)
    text_sealed: bool = Field(default=False, description="reason_text and note hold sealed values (or none); false "
                                                         "only for rows written before sealing, until start-up")
    text_erased: bool = Field(default=False, description="The person was erased: the free text is gone for good")


class HoldRow(SQLModel, table=True):
    __tablename__ = "referral_protection_hold"
    # One active hold per (person, need): active_key is "<person>|<need>" while active, NULL once released.
    __table_args__ = (UniqueConstraint("active_key"),)

    id: str = Field(default_factory=_uuid, primary_key=True)
    case_id: str = Field(index=True)
    person_id: str = Field(index=True)
    need_code: str
    referral_id: str = Field(description="The referral that opened it")
    from_agency_id: str
    to_agency_id: str | None = None
    jurisdiction: str
    placed_at: datetime = Field(default_factory=_now)
    not_before: datetime | None = Field(default=None, index=True)
    active_key: str | None = None
    released_at: datetime | None = None
    release_reason: str | None = None
    released_by_referral_id: str | None = None
    outcome_code: str | None = None


class ConsentRow(SQLModel, table=True):
    """What the person's consent (or a mandatory override) allows, kept current from intake's events."""
    __tablename__ = "referral_consent"

    person_id: str = Field(primary_key=True)
    recipient_agency_type: str = Field(primary_key=True)
    purpose: str = Field(primary_key=True)
    basis: str
    granted: bool
    updated_at: datetime = Field(default_factory=_now)


class CasePersonRow(SQLModel, table=True):
    """Who registered each person's case, and where: what decides who may open a manual referral for them.
    Learnt from intake's case.registered.v1 and case.screened.v1; a person not here does not exist for referral."""
    __tablename__ = "referral_case_person"

    person_id: str = Field(primary_key=True)
    case_id: str = Field(index=True)
    registering_agency_id: str
    jurisdiction: str
    learnt_at: datetime = Field(default_factory=_now)


class ScreeningRow(SQLModel, table=True):
    """Screenings already routed: the same screening arriving again changes nothing."""
    __tablename__ = "referral_screening"

    screening_id: str = Field(primary_key=True)
    case_id: str
    person_id: str
    routed_at: datetime = Field(default_factory=_now)


TABLES = [SubjectKey.__table__, AgencyRow.__table__, ServiceRow.__table__, ReferralRow.__table__, HistoryRow.__table__,
          HoldRow.__table__, ConsentRow.__table__, ScreeningRow.__table__, CasePersonRow.__table__]
