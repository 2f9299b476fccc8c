"""Intake's own tables. Personal data stays here; other services learn codes and ids only."""

import uuid
from datetime import UTC, date, datetime

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel


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


class PersonRow(SQLModel, table=True):
    __tablename__ = "intake_person"

    id: str = Field(default_factory=_id, primary_key=True)
    case_id: str = Field(foreign_key="intake_case.id", index=True)
    given_names: str
    family_names: str
    sex: str
    date_of_birth: date | None = None
    estimated_age: int | None = None
    age_disputed: bool = False
    nationality: str | None = None
    languages: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class ScreeningRow(SQLModel, table=True):
    __tablename__ = "intake_screening"

    id: str = Field(default_factory=_id, primary_key=True)
    case_id: str = Field(foreign_key="intake_case.id", index=True)
    person_id: str = Field(foreign_key="intake_person.id", index=True)
    rules_version: str
    answers: dict = Field(sa_column=Column(JSON, nullable=False))
    needs: list = Field(sa_column=Column(JSON, nullable=False))
    screened_by: str
    created_at: datetime = Field(default_factory=_now)


TABLES = [CaseRow.__table__, PersonRow.__table__, ScreeningRow.__table__]
