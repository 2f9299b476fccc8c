"""Referral's own tables: the service directory (Open Referral HSDS style) and referrals."""

import uuid
from datetime import UTC, datetime

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel


def _now() -> datetime:
    return datetime.now(UTC)


class AgencyRow(SQLModel, table=True):
    __tablename__ = "referral_agency"

    id: str = Field(primary_key=True)
    name: str
    type: str
    jurisdiction: str = Field(index=True)


class ServiceRow(SQLModel, table=True):
    __tablename__ = "referral_service"

    id: str = Field(primary_key=True)
    agency_id: str = Field(foreign_key="referral_agency.id", index=True)
    name: str
    need_codes: list[str] = Field(sa_column=Column(JSON, nullable=False))
    area: str
    age_min: int = 0
    age_max: int = 120
    languages: list[str] = Field(sa_column=Column(JSON, nullable=False))
    opening_hours: str = ""
    capacity: int = 0
    active: bool = True


class ReferralRow(SQLModel, table=True):
    __tablename__ = "referral_referral"
    # A redelivered screening event does not duplicate its referrals. (Re-screening the same person
    # still opens new ones; the referral issue replaces this with "one open referral per need".)
    __table_args__ = (UniqueConstraint("case_id", "need_code", "screening_id"),)

    id: str = Field(default_factory=lambda: str(uuid.uuid4()), primary_key=True)
    case_id: str = Field(index=True)
    screening_id: str
    person_id: str
    need_code: str
    urgency: str
    status: str = "requested"
    from_agency_id: str = Field(index=True)
    to_agency_id: str | None = Field(default=None, index=True, description="None: in the coordinator's queue")
    to_service_id: str | None = None
    is_lead: bool = False
    routing_reasons: list[str] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=_now)


TABLES = [AgencyRow.__table__, ServiceRow.__table__, ReferralRow.__table__]
