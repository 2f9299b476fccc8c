"""Intake REST API (thin: validation and authorization here, use cases in service_layer)."""

from datetime import date
from typing import Annotated, Literal

from fastapi import APIRouter, status
from pydantic import AwareDatetime, BaseModel, Field, model_validator
from sqlmodel import select

from enlace_platform.auth import CurrentPrincipal
from enlace_platform.problems import Problem
from enlace_platform.runtime import DbSession
from intake.adapters.orm import CaseRow, PersonRow
from intake.domain.screening import ScreeningAnswers
from intake.service_layer import services

router = APIRouter(tags=["cases"])


class PersonIn(BaseModel):
    given_names: str = Field(min_length=1, max_length=200)
    family_names: str = Field(min_length=1, max_length=200)
    sex: Literal["female", "male", "other", "unknown"]
    date_of_birth: date | None = None
    estimated_age: int | None = Field(None, ge=0, le=120)
    age_disputed: bool = False
    nationality: str | None = Field(None, pattern=r"^[A-Z]{3}$", description="ISO 3166-1 alpha-3")
    languages: list[Annotated[str, Field(pattern=r"^[a-z]{2,3}$")]] = Field(
        default_factory=list, max_length=10, description="ISO 639-1 or 639-3 codes, lower case")

    @model_validator(mode="after")
    def _some_age(self):
        if self.date_of_birth is None and self.estimated_age is None and not self.age_disputed:
            raise ValueError("give date_of_birth or estimated_age, or set age_disputed")
        return self


class CaseIn(BaseModel):
    place: str = Field(min_length=1, max_length=200, description="Where the encounter happened")
    encountered_at: AwareDatetime
    persons: list[PersonIn] = Field(min_length=1, max_length=50)


class PersonOut(BaseModel):
    id: str
    given_names: str
    family_names: str
    sex: str
    date_of_birth: date | None
    estimated_age: int | None
    age_disputed: bool
    nationality: str | None
    languages: list[str]


class CaseOut(BaseModel):
    id: str
    agency_id: str
    jurisdiction: str
    place: str
    encountered_at: AwareDatetime
    persons: list[PersonOut]


class ScreeningIn(BaseModel):
    person_id: str
    fear_of_return: bool = False
    travelling_with_parent_or_guardian: bool | None = None
    trafficking_indicators: list[str] = Field(default_factory=list)


class NeedOut(BaseModel):
    code: str
    urgency: str
    reasons: list[str]


class ScreeningOut(BaseModel):
    id: str
    case_id: str
    person_id: str
    rules_version: str
    needs: list[NeedOut]


def _not_found(what: str, ident: str) -> Problem:
    return Problem(404, detail=f"No {what} {ident} visible to your agency.")


@router.post("/cases", status_code=status.HTTP_201_CREATED, response_model=CaseOut,
             summary="Register an encounter: one person or a family group")
async def register_case(body: CaseIn, principal: CurrentPrincipal, session: DbSession) -> CaseOut:
    case = CaseRow(agency_id="", jurisdiction="", place=body.place,
                   encountered_at=body.encountered_at)
    persons = [PersonRow(case_id=case.id, **p.model_dump()) for p in body.persons]
    await services.register_case(session, principal, case, persons)
    return _case_out(case, persons)


@router.get("/cases/{case_id}", response_model=CaseOut, summary="Read a case registered by your agency")
async def read_case(case_id: str, principal: CurrentPrincipal, session: DbSession) -> CaseOut:
    try:
        case = await services.get_case_for(session, principal, case_id)
    except services.NotFound:
        raise _not_found("case", case_id) from None
    persons = (await session.exec(select(PersonRow).where(PersonRow.case_id == case.id))).all()
    return _case_out(case, list(persons))


@router.post("/cases/{case_id}/screenings", status_code=status.HTTP_201_CREATED, response_model=ScreeningOut,
             summary="Record a screening for one person; the rules turn answers into protection needs")
async def record_screening(case_id: str, body: ScreeningIn, principal: CurrentPrincipal,
                           session: DbSession) -> ScreeningOut:
    answers = ScreeningAnswers(
        fear_of_return=body.fear_of_return,
        travelling_with_parent_or_guardian=body.travelling_with_parent_or_guardian,
        trafficking_indicators=tuple(body.trafficking_indicators),
    )
    try:
        screening = await services.record_screening(session, principal, case_id, body.person_id, answers)
    except services.NotFound as exc:
        raise _not_found("case or person", str(exc)) from None
    return ScreeningOut(id=screening.id, case_id=screening.case_id, person_id=screening.person_id,
                        rules_version=screening.rules_version, needs=[NeedOut(**n) for n in screening.needs])


def _case_out(case: CaseRow, persons: list[PersonRow]) -> CaseOut:
    return CaseOut(id=case.id, agency_id=case.agency_id, jurisdiction=case.jurisdiction, place=case.place,
                   encountered_at=case.encountered_at,
                   persons=[PersonOut(**p.model_dump(exclude={"case_id"})) for p in persons])
