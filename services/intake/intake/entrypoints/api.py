"""Intake REST API (thin: validation and rendering here, use cases in service_layer).

Every route needs a Bearer token whose roles grant the route's permission (enlace_platform.access). A case
and everything in it belong to the agency that registered it; any other agency gets 404, except that a
receiving agency may read one person's details while it holds an open referral about that person and
consent covers it. An erased person's data is gone: 410.
"""

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from enlace_platform import firewall
from enlace_platform.access import Allowed, Permission, check
from enlace_platform.audit import Purpose, note_objects
from enlace_platform.auth import Principal
from enlace_platform.crypto import purge_freed_pages
from enlace_platform.idempotency import Idempotency
from enlace_platform.limits import EARLIEST, SINGLE_LINE, Id, IdPath, IdQuery
from enlace_platform.problems import Problem, ProblemDetails
from enlace_platform.runtime import DbSession, ReadSession
from intake.adapters.orm import CaseRow, PersonRow, ProtectionHoldRow, ReferralViewRow, RelationshipRow
from intake.adapters.vault import ERASURE_TABLES, Document, PersonRecord, Vault
from intake.domain.consent import AGENCY_TYPES, BASES, MANDATORY_OVERRIDE, PURPOSES
from intake.domain.encounter import DOCUMENT_TYPES, LEGAL_GUARDIAN, PARENT, RELATIONSHIP_KINDS, age_in_years
from intake.domain.screening import TRAFFICKING_INDICATORS, ScreeningAnswers
from intake.service_layer import services

router = APIRouter(tags=["cases"], dependencies=[Purpose("case_management")])

Reader = Annotated[Principal, Allowed(Permission.READ_CASES)]
Writer = Annotated[Principal, Allowed(Permission.WRITE_CASES)]
RemovalOfficer = Annotated[Principal, Allowed(Permission.ORDER_REMOVAL)]
Eraser = Annotated[Principal, Allowed(Permission.ERASE_PERSON)]
ConsentReader = Annotated[Principal, Allowed(Permission.READ_CONSENTS)]
ConsentWithdrawer = Annotated[Principal, Allowed(Permission.WITHDRAW_CONSENT)]


def _vault(request: Request) -> Vault:
    return Vault.of(request.app.state.runtime)


PersonVault = Annotated[Vault, Depends(_vault)]

ERASED_TYPE = "https://enlace.example/problems/erased"
GONE = {410: {"model": ProblemDetails, "description": "The person was erased (problem type .../erased)"}}

Alpha3 = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 3166-1 alpha-3, or ICAO XXA (stateless) or XXX (undetermined)")]
Language = Annotated[str, Field(pattern=r"^[a-z]{2,3}$")]
Sex = Literal["female", "male", "other", "unknown"]
# One line of text without control characters. PostgreSQL refuses NUL in text: the failed INSERT would be a
# 500 whose logged error quotes the statement's parameters, names included.
Line = Annotated[str, Field(pattern=r"^[^\x00-\x1f\x7f]*$")]
NoNul = Annotated[str, Field(pattern=r"^[^\x00]*$")]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _field_error(path: tuple[Any, ...], message: str) -> RequestValidationError:
    """A 422 naming the field, for checks that span several fields of the body."""
    return RequestValidationError([{"loc": ("body", *path), "msg": message, "type": "value_error"}])


# --- encounters ------------------------------------------------------------------------------

class DocumentIn(_In):
    type: Literal[DOCUMENT_TYPES]  # type: ignore[valid-type]
    number: Line = Field(min_length=1, max_length=64)
    issuing_country: Alpha3 | None = None


class DocumentOut(BaseModel):
    type: str
    number: str
    issuing_country: str | None


def _not_in_future(value: date | None) -> date | None:
    if value is not None and value > datetime.now(UTC).date():
        raise ValueError("date_of_birth is in the future")
    return value


class PersonIn(_In):
    given_names: Line = Field(min_length=1, max_length=200)
    family_names: Line = Field(min_length=1, max_length=200)
    sex: Sex
    date_of_birth: date | None = None
    estimated_age: int | None = Field(None, ge=0, le=120, description="In years, when the date of birth is unknown")
    age_disputed: bool = Field(False, description="The person's age is uncertain or disputed: treated as a child "
                                                  "until an age assessment concludes")
    nationality: Alpha3 | None = None
    languages: list[Language] = Field(default_factory=list, max_length=10,
                                      description="ISO 639-1 or 639-3 codes, lower case")
    documents: list[DocumentIn] = Field(default_factory=list, max_length=10)

    _dob = field_validator("date_of_birth")(_not_in_future)

    @model_validator(mode="after")
    def _some_age(self):
        if self.date_of_birth is None and self.estimated_age is None and not self.age_disputed:
            raise ValueError("give date_of_birth or estimated_age, or set age_disputed")
        return self


MAX_PERSONS = 50  # in one encounter


class RelationshipIn(_In):
    from_person: int = Field(ge=0, le=MAX_PERSONS - 1,
                             description="Index in `persons` of the person who is <kind> of to_person")
    to_person: int = Field(ge=0, le=MAX_PERSONS - 1, description="Index in `persons`")
    kind: Literal[RELATIONSHIP_KINDS] = Field(  # type: ignore[valid-type]
        description="from_person is the parent / legal_guardian / other_relative / unrelated_adult of to_person")


class CaseIn(_In):
    place: Line = Field(min_length=1, max_length=200, description="Where the encounter happened")
    encountered_at: AwareDatetime = Field(ge=EARLIEST)
    persons: list[PersonIn] = Field(min_length=1, max_length=MAX_PERSONS)
    relationships: list[RelationshipIn] = Field(default_factory=list, max_length=200,
                                                description="How members of the group are related")

    @field_validator("encountered_at")
    @classmethod
    def _not_in_the_future(cls, value: datetime) -> datetime:
        if value > datetime.now(UTC) + timedelta(hours=1):  # an hour of clock skew between systems
            raise ValueError("encountered_at is in the future")
        return value


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
    documents: list[DocumentOut]
    version: int


class RelationshipOut(BaseModel):
    from_person_id: str
    to_person_id: str
    kind: str


class HoldOut(BaseModel):
    hold_id: str
    person_id: str
    referral_id: str | None = Field(description="The referral that opened the hold")
    need_code: str | None
    status: Literal["active", "released"]
    placed_at: AwareDatetime | None
    not_before: AwareDatetime | None
    released_at: AwareDatetime | None
    release_reason: str | None
    outcome_code: str | None


class ReferralOut(BaseModel):
    referral_id: str
    person_id: str
    need_code: str | None = Field(description="Null for an enforcement agency when the need is sensitive (firewall)")
    status: str
    to_agency_id: str | None
    to_agency_type: str | None
    outcome_code: str | None = Field(description="The receiving agency's outcome code, once completed")
    updated_at: AwareDatetime


class ErasedPersonOut(BaseModel):
    """A person whose data was erased: only that they were, and when."""

    id: str
    erased: Literal[True] = True
    erased_at: AwareDatetime


class CaseOut(BaseModel):
    id: str
    agency_id: str
    jurisdiction: str
    place: str
    encountered_at: AwareDatetime
    persons: list[PersonOut | ErasedPersonOut]
    relationships: list[RelationshipOut]
    holds: list[HoldOut] = Field(description="Protection holds on persons of this case, active and released")
    referrals: list[ReferralOut] = Field(description="Referrals of this case as the referral service reported them; "
                                                     "an enforcement agency is shown only those it sent (firewall)")


class PersonNameOut(BaseModel):
    id: str
    given_names: str
    family_names: str


class CaseSummaryOut(BaseModel):
    id: str
    jurisdiction: str
    place: str
    encountered_at: AwareDatetime
    persons: list[PersonNameOut | ErasedPersonOut]


class PersonPatch(_In):
    given_names: Line | None = Field(None, min_length=1, max_length=200)
    family_names: Line | None = Field(None, min_length=1, max_length=200)
    sex: Sex | None = None
    date_of_birth: date | None = None
    estimated_age: int | None = Field(None, ge=0, le=120)
    age_disputed: bool | None = None
    nationality: Alpha3 | None = None
    languages: list[Language] | None = Field(None, max_length=10)
    documents: list[DocumentIn] | None = Field(None, max_length=10, description="Replaces the whole list")

    _dob = field_validator("date_of_birth")(_not_in_future)

    @field_validator("given_names", "family_names", "sex", "age_disputed", "languages", "documents")
    @classmethod
    def _not_null(cls, value):
        if value is None:
            raise ValueError("may be left out, but not null")
        return value


class PersonVersionOut(BaseModel):
    version: int
    snapshot: dict[str, Any] = Field(description="The person's record as it was in this version")
    changed_fields: list[str]
    changed_by: str
    changed_by_agency_id: str
    changed_at: AwareDatetime


def _person_out(view: services.PersonView) -> PersonOut | ErasedPersonOut:
    person, r = view.row, view.record
    if r is None:
        return _erased_out(person)
    return PersonOut(id=person.id, given_names=r.given_names, family_names=r.family_names, sex=r.sex,
                     date_of_birth=r.date_of_birth, estimated_age=r.estimated_age,
                     age_disputed=r.age_disputed, nationality=r.nationality, languages=r.languages,
                     documents=[DocumentOut(type=d.type, number=d.number, issuing_country=d.issuing_country)
                                for d in r.documents], version=person.version)


def _erased_out(person: PersonRow) -> ErasedPersonOut:
    return ErasedPersonOut(id=person.id, erased_at=person.erased_at or datetime.now(UTC))


def _gone(exc: services.Gone) -> Problem:
    return Problem(410, title="Erased", type_=ERASED_TYPE,
                   detail=f"Person {exc.person_id} was erased: their data no longer exists in readable form.",
                   person_id=exc.person_id, erased_at=exc.erased_at.isoformat() if exc.erased_at else None)


# What the referral events told intake passes the firewall (enlace_platform.firewall) on its way out: an
# enforcement agency sees a referral's existence, status, hold and public outcome, never a sensitive need or
# its receiver. What the agency recorded itself (persons, screenings and the needs its rules derived) stays.

def _hold_out(h: ProtectionHoldRow, viewer: firewall.Viewer) -> HoldOut:
    return HoldOut(**firewall.project("hold", {
        "hold_id": h.hold_id, "person_id": h.person_id, "referral_id": h.referral_id, "need_code": h.need_code,
        "status": h.status, "placed_at": h.placed_at, "not_before": h.not_before, "released_at": h.released_at,
        "release_reason": h.release_reason, "outcome_code": h.outcome_code}, viewer, need_code=h.need_code))


def _referral_out(r: ReferralViewRow, viewer: firewall.Viewer) -> ReferralOut:
    return ReferralOut(**firewall.project("case_referral", {
        "referral_id": r.referral_id, "person_id": r.person_id, "need_code": r.need_code, "status": r.status,
        "to_agency_id": r.to_agency_id, "to_agency_type": r.to_agency_type, "outcome_code": r.outcome_code,
        "updated_at": r.occurred_at}, viewer, need_code=r.need_code))


def _blocking_hold(h: ProtectionHoldRow, viewer: firewall.Viewer) -> dict[str, Any]:
    return BlockingHold(**firewall.project("hold", {
        "hold_id": h.hold_id, "referral_id": h.referral_id, "need_code": h.need_code, "not_before": h.not_before},
        viewer, need_code=h.need_code)).model_dump(mode="json")


def _named_hold(h: dict[str, Any], *, with_referral: bool) -> str:
    about = [h["need_code"]] if h["need_code"] else []
    if with_referral:
        about.append(f"referral {h['referral_id']}")
    return f"hold {h['hold_id']}" + (f" ({', '.join(about)})" if about else "")


async def _case_out(request: Request, session, vault: Vault, case: CaseRow, principal: Principal) -> CaseOut:
    viewer = firewall.viewer_for(principal)
    persons = await services.persons_of(session, vault, case.id)
    note_objects(request, "person", [p.row.id for p in persons])
    return CaseOut(
        id=case.id, agency_id=case.agency_id, jurisdiction=case.jurisdiction, place=case.place,
        encountered_at=case.encountered_at,
        persons=[_person_out(p) for p in persons],
        relationships=[RelationshipOut(from_person_id=r.from_person_id, to_person_id=r.to_person_id, kind=r.kind)
                       for r in await services.relationships_of(session, case.id)],
        holds=[_hold_out(h, viewer) for h in await services.holds_of(session, case.id)],
        referrals=[_referral_out(r, viewer) for r in await services.referrals_of(session, case.id, principal)],
    )


def _not_found(what: str, ident: str) -> Problem:
    return Problem(404, detail=f"No {what} {ident} visible to your agency.")


def _known_age(person: PersonIn) -> int | None:
    """The age when it is not in doubt (not disputed), else None."""
    if person.age_disputed:
        return None
    return age_in_years(person.date_of_birth, person.estimated_age, datetime.now(UTC).date())


def _check_relationships(body: CaseIn) -> None:
    """Indexes in range, one relationship per pair of persons, and a parent or guardian older than the child."""
    related: dict[frozenset[int], int] = {}
    for i, rel in enumerate(body.relationships):
        for name in ("from_person", "to_person"):
            if getattr(rel, name) >= len(body.persons):
                raise _field_error(("relationships", i, name), "no person with this index in persons")
        if rel.from_person == rel.to_person:
            raise _field_error(("relationships", i, "to_person"), "a person cannot be related to themself")
        pair = frozenset((rel.from_person, rel.to_person))
        if pair in related:
            raise _field_error(("relationships", i), f"persons {rel.from_person} and {rel.to_person} are already "
                                                     f"related by relationships/{related[pair]}: give one "
                                                     "relationship per pair of persons")
        related[pair] = i
        if rel.kind in (PARENT, LEGAL_GUARDIAN):
            elder, child = _known_age(body.persons[rel.from_person]), _known_age(body.persons[rel.to_person])
            if elder is not None and child is not None and elder <= child:
                raise _field_error(("relationships", i, "from_person"),
                                   f"from_person is the {rel.kind} of to_person, so must be older (aged {elder}, "
                                   f"to_person aged {child}): check the direction")


@router.post("/cases", status_code=status.HTTP_201_CREATED, response_model=CaseOut,
             summary="Register an encounter: one person or a family group, and how its members are related")
async def register_case(request: Request, body: CaseIn, principal: Writer, session: DbSession, vault: PersonVault,
                        idempotency: Idempotency) -> CaseOut:
    previous = await idempotency.previous_resource(session)
    if previous is not None:
        case = await services.get_case_for(session, principal, previous)
        note_objects(request, "case", [case.id])
        return await _case_out(request, session, vault, case, principal)
    _check_relationships(body)
    case = CaseRow(id=str(uuid.uuid4()), agency_id="", jurisdiction="", place=body.place,
                   encountered_at=body.encountered_at)
    idempotency.record(session, resource_id=case.id)
    persons = [(PersonRow(case_id=case.id, given_names="", family_names="", sex=""), _record(p)) for p in body.persons]
    relationships = [RelationshipRow(case_id=case.id, from_person_id=persons[r.from_person][0].id,
                                     to_person_id=persons[r.to_person][0].id, kind=r.kind) for r in body.relationships]
    # Named before the commit, so their audit rows are written by the transaction that creates them.
    note_objects(request, "case", [case.id])
    note_objects(request, "person", [person.id for person, _ in persons])
    await services.register_case(session, vault, principal, case, persons, relationships=relationships)
    return _registered_case_out(case, persons, relationships)


def _registered_case_out(case: CaseRow, persons: list[tuple[PersonRow, PersonRecord]],
                         relationships: list[RelationshipRow]) -> CaseOut:
    """What registration wrote, from memory: reading it back would cost another turn at the write lock, and a
    new case has no holds or referrals yet."""
    return CaseOut(
        id=case.id, agency_id=case.agency_id, jurisdiction=case.jurisdiction, place=case.place,
        encountered_at=case.encountered_at,
        persons=[_person_out(services.PersonView(row, record)) for row, record in persons],
        relationships=[RelationshipOut(from_person_id=r.from_person_id, to_person_id=r.to_person_id, kind=r.kind)
                       for r in relationships],
        holds=[], referrals=[],
    )


def _record(p: PersonIn) -> PersonRecord:
    return PersonRecord(**p.model_dump(exclude={"documents"}),
                        documents=[Document(**d.model_dump()) for d in p.documents])


class CaseSearchIn(_In):
    """Search terms travel in the body: a name or a document number in a URL ends up in access logs and traces."""

    name: str | None = Field(None, min_length=2, max_length=200, pattern=SINGLE_LINE,
                             description="Part of a person's names; case and accents are ignored")
    document_number: str | None = Field(None, min_length=1, max_length=64, pattern=SINGLE_LINE,
                                        description="A whole document number; case is ignored")
    limit: int = Field(50, ge=1, le=200)


async def _summaries(request: Request, session, vault: Vault, cases: list[CaseRow]) -> list[CaseSummaryOut]:
    out = []
    note_objects(request, "case", [c.id for c in cases])
    for case in cases:
        persons = await services.persons_of(session, vault, case.id)
        note_objects(request, "person", [p.row.id for p in persons])
        out.append(CaseSummaryOut(id=case.id, jurisdiction=case.jurisdiction, place=case.place,
                                  encountered_at=case.encountered_at,
                                  persons=[_erased_out(p.row) if p.record is None else
                                           PersonNameOut(id=p.row.id, given_names=p.record.given_names,
                                                         family_names=p.record.family_names) for p in persons]))
    return out


@router.post("/cases/search", response_model=list[CaseSummaryOut],
             summary="Search your agency's own cases by a person's name or document number (terms in the body, "
                     "never in the URL)")
async def search_cases(request: Request, body: CaseSearchIn, principal: Reader, session: ReadSession,
                       vault: PersonVault) -> list[CaseSummaryOut]:
    cases = await services.search_cases(session, vault, principal, name=body.name,
                                        document_number=body.document_number, limit=body.limit)
    return await _summaries(request, session, vault, cases)


@router.get("/cases", response_model=list[CaseSummaryOut],
            summary="Your agency's own cases, latest encounter first. To search by name or document number, "
                    "use POST /cases/search")
async def list_cases(request: Request, principal: Reader, session: DbSession, vault: PersonVault,
                     limit: Annotated[int, Query(ge=1, le=200)] = 50) -> list[CaseSummaryOut]:
    for term in ("name", "document_number"):
        if term in request.query_params:  # refused, not silently ignored: the caller expects a search
            raise RequestValidationError([{
                "loc": ("query", term), "type": "value_error",
                "msg": "personal data never goes in a URL (access logs, traces): search with POST /cases/search"}])
    cases = await services.search_cases(session, vault, principal, name=None, document_number=None, limit=limit)
    return await _summaries(request, session, vault, cases)


@router.get("/cases/{case_id}", response_model=CaseOut,
            summary="Read a case registered by your agency, with its holds and referral outcomes")
async def read_case(request: Request, case_id: IdPath, principal: Reader, session: DbSession,
                    vault: PersonVault) -> CaseOut:
    try:
        case = await services.get_case_for(session, principal, case_id)
    except services.NotFound:
        raise _not_found("case", case_id) from None
    return await _case_out(request, session, vault, case, principal)


@router.get("/cases/{case_id}/persons/{person_id}", response_model=PersonOut, responses=GONE,
            summary="Read one person: the registering agency, or a receiving agency with an open referral "
                    "about this person that the person's consent (or the child-protection override) covers")
async def read_person(case_id: IdPath, person_id: IdPath, principal: Reader, session: DbSession,
                      vault: PersonVault) -> PersonOut:
    try:
        return _person_out(await services.person_for_reader(session, vault, principal, case_id, person_id))
    except services.NotFound:
        raise _not_found("person", person_id) from None
    except services.Gone as exc:
        raise _gone(exc) from None


@router.patch("/cases/{case_id}/persons/{person_id}", response_model=PersonOut, responses=GONE,
              summary="Correct or complete a person's record; every earlier version is kept")
async def update_person(case_id: IdPath, person_id: IdPath, body: PersonPatch, principal: Writer,
                        session: DbSession, vault: PersonVault) -> PersonOut:
    changes = body.model_dump(exclude_unset=True)
    if "documents" in changes:
        changes["documents"] = [d.model_dump() for d in body.documents or []]
    try:
        case = await services.get_case_for(session, principal, case_id)
        current = (await services.person_for_reader(session, vault, principal, case.id, person_id)).record
        merged = {f: changes.get(f, getattr(current, f)) for f in ("date_of_birth", "estimated_age", "age_disputed")}
        if merged["date_of_birth"] is None and merged["estimated_age"] is None and not merged["age_disputed"]:
            raise _field_error(("estimated_age",), "the person would have no date_of_birth, estimated_age "
                                                   "or age_disputed")
        view = await services.update_person(session, vault, principal, case.id, person_id, changes)
    except services.NotFound:
        raise _not_found("person", person_id) from None
    except services.Gone as exc:
        raise _gone(exc) from None
    return _person_out(view)


@router.get("/cases/{case_id}/persons/{person_id}/history", response_model=list[PersonVersionOut], responses=GONE,
            summary="Every version of a person's record, oldest first")
async def person_history(case_id: IdPath, person_id: IdPath, principal: Reader,
                         session: DbSession, vault: PersonVault) -> list[PersonVersionOut]:
    try:
        versions = await services.person_history(session, vault, principal, case_id, person_id)
    except services.NotFound:
        raise _not_found("person", person_id) from None
    except services.Gone as exc:
        raise _gone(exc) from None
    return [_version_out(v) for v in versions]


def _version_out(view: services.VersionView) -> PersonVersionOut:
    v = view.row
    return PersonVersionOut(version=v.version, snapshot=view.snapshot, changed_fields=v.changed_fields,
                            changed_by=v.changed_by, changed_by_agency_id=v.changed_by_agency_id,
                            changed_at=v.changed_at)


# --- screening -------------------------------------------------------------------------------

YesNo = bool | None


class ScreeningIn(_In):
    """The questionnaire. Leave out (or null) what was not asked: unanswered is never read as "no"."""

    person_id: Id
    fear_of_return: YesNo = Field(None, description="Fears harm if returned to the country of origin")
    wishes_to_seek_asylum: YesNo = None
    travelling_with_parent_or_guardian: YesNo = Field(
        None, description="Says a parent or legal guardian travels with them (counts only together with a "
                          "parent/legal_guardian relationship registered in the group)")
    travelling_with_other_relative: YesNo = None
    travelling_with_unrelated_adult: YesNo = None
    trafficking_indicators: list[Literal[TRAFFICKING_INDICATORS]] = Field(  # type: ignore[valid-type]
        default_factory=list, max_length=len(TRAFFICKING_INDICATORS), description="Structured indicators observed")
    sexual_violence_disclosed: YesNo = Field(None, description="No details are recorded, only the disclosure")
    sexual_violence_within_72h: YesNo = Field(None, description="Only with sexual_violence_disclosed")
    urgent_medical_need: YesNo = None
    disability: YesNo = None
    pregnant: YesNo = None
    pregnancy_high_risk: YesNo = Field(None, description="Only with pregnant: high-risk or near term")
    considers_self_stateless: YesNo = None
    birth_registered: YesNo = None
    stranded_wishes_to_return: YesNo = Field(None, description="Stranded and wishes to return home")
    kidnapped: YesNo = Field(None, description="Victim of kidnapping on the route")
    extorted: YesNo = Field(None, description="Victim of extortion on the route")

    @field_validator("sexual_violence_within_72h", "pregnancy_high_risk")
    @classmethod
    def _needs_its_question(cls, value: bool | None, info: ValidationInfo):
        parent = {"sexual_violence_within_72h": "sexual_violence_disclosed",
                  "pregnancy_high_risk": "pregnant"}[info.field_name]
        if value is True and info.data.get(parent) is not True:
            raise ValueError(f"only when {parent} is true")
        return value

    @field_validator("trafficking_indicators", mode="before")
    @classmethod
    def _null_is_not_asked(cls, value):
        return [] if value is None else value  # like every other question: null means not asked

    @field_validator("trafficking_indicators")
    @classmethod
    def _distinct(cls, value: list[str]):
        if len(set(value)) != len(value):
            raise ValueError("each indicator at most once")
        return value

    def answers(self) -> ScreeningAnswers:
        data = self.model_dump(exclude={"person_id"})
        data["trafficking_indicators"] = tuple(data["trafficking_indicators"])
        return ScreeningAnswers(**data)


class NeedOut(BaseModel):
    code: str
    urgency: Literal["immediate", "high", "standard"]
    reasons: list[str] = Field(description="Why the rules found this need")
    rule_ids: list[str] = Field(description="The rules (of rules_version) that found it")
    flags: list[str] = Field(description="e.g. VIOLENCE_WITHIN_72H")


class ConsentScopeOut(BaseModel):
    recipient_agency_type: str
    purpose: str
    basis: str


class ScreeningOut(BaseModel):
    id: str
    case_id: str
    person_id: str
    rules_version: str
    age_band: str
    needs: list[NeedOut]
    answers: dict[str, Any] | None = Field(description="The questionnaire; null once the person was erased (the "
                                                       "needs then keep their codes and urgency only)")
    consent_scope: list[ConsentScopeOut] = Field(description="What the person's consents allowed when screened")
    screened_by: str
    created_at: AwareDatetime


def _screening_out(view: services.ScreeningView) -> ScreeningOut:
    s = view.row
    return ScreeningOut(id=s.id, case_id=s.case_id, person_id=s.person_id, rules_version=s.rules_version,
                        age_band=s.age_band,
                        needs=[NeedOut(**{"reasons": [], "rule_ids": [], "flags": [], **n}) for n in view.needs],
                        answers=view.answers, consent_scope=s.consent_scope, screened_by=s.screened_by,
                        created_at=s.created_at)


@router.post("/cases/{case_id}/screenings", status_code=status.HTTP_201_CREATED, response_model=ScreeningOut,
             responses=GONE,
             summary="Screen one person: the rules turn the answers and the group's relationships into needs. "
                     "Each screening is a new result; earlier results are never recomputed")
async def record_screening(request: Request, case_id: IdPath, body: ScreeningIn, principal: Writer, session: DbSession,
                           vault: PersonVault, idempotency: Idempotency) -> ScreeningOut:
    note_objects(request, "person", [body.person_id])
    try:
        previous = await idempotency.previous_resource(session)
        if previous is not None:
            return _screening_out(await services.get_screening(session, vault, principal, case_id, previous))
        screening_id = str(uuid.uuid4())
        idempotency.record(session, resource_id=screening_id)
        screening = await services.record_screening(session, vault, principal, case_id, body.person_id,
                                                    body.answers(), screening_id=screening_id)
    except services.NotFound as exc:
        raise _not_found("case or person", str(exc)) from None
    except services.Gone as exc:
        raise _gone(exc) from None
    return _screening_out(screening)


@router.get("/cases/{case_id}/screenings", response_model=list[ScreeningOut],
            summary="The case's screening results, oldest first, each as it was computed")
async def list_screenings(request: Request, case_id: IdPath, principal: Reader, session: DbSession, vault: PersonVault,
                          person_id: IdQuery = None) -> list[ScreeningOut]:
    try:
        views = await services.list_screenings(session, vault, principal, case_id, person_id)
    except services.NotFound:
        raise _not_found("case", case_id) from None
    note_objects(request, "person", sorted({v.row.person_id for v in views}))
    return [_screening_out(v) for v in views]


# --- consent ---------------------------------------------------------------------------------

class ConsentIn(_In):
    recipient_agency_type: Literal[AGENCY_TYPES]  # type: ignore[valid-type]
    purpose: Literal[PURPOSES]  # type: ignore[valid-type]
    basis: Literal[BASES] = Field("consent", description="consent: the person agreed. mandatory_override: "  # type: ignore[valid-type]
                                                         "child protection acts without consent, by law "
                                                         "(child_protection and a person treated as a child only)")
    reason: NoNul | None = Field(None, min_length=1, max_length=1000, validate_default=True,
                               description="Required for a mandatory override: its legal ground")

    @field_validator("reason")
    @classmethod
    def _override_needs_reason(cls, value: str | None, info: ValidationInfo):
        if info.data.get("basis") == MANDATORY_OVERRIDE and not (value and value.strip()):
            raise ValueError("a mandatory override needs its reason")
        if info.data.get("basis") != MANDATORY_OVERRIDE and value is not None:
            raise ValueError("only a mandatory override takes a reason")
        return value


class ConsentOut(BaseModel):
    id: str
    person_id: str
    recipient_agency_type: str
    purpose: str
    basis: str
    status: Literal["granted", "withdrawn"]
    reason: str | None
    recorded_by: str = Field(description="Who recorded the consent or applied the override")
    recorded_by_agency_id: str
    granted_at: AwareDatetime
    withdrawn_at: AwareDatetime | None
    withdrawn_by: str | None


class ConsentsOut(BaseModel):
    items: list[ConsentOut] = Field(description="Every consent and override, withdrawn ones included")
    scope: list[ConsentScopeOut] = Field(description="What the active ones allow now")


def _consent_out(view: services.ConsentView) -> ConsentOut:
    return ConsentOut(**{**view.row.model_dump(include=set(ConsentOut.model_fields)), "reason": view.reason})


@router.post("/cases/{case_id}/persons/{person_id}/consents", status_code=status.HTTP_201_CREATED,
             response_model=ConsentOut,
             responses={200: {"model": ConsentOut, "description": "The same consent was already active"},
                        409: {"model": ProblemDetails,
                              "description": "An override for an adult or another agency type"},
                        **GONE},
             summary="Record a person's consent for a purpose and recipient agency type, or apply the "
                     "mandatory child-protection override")
async def grant_consent(case_id: IdPath, person_id: IdPath, body: ConsentIn, principal: Writer,
                        session: DbSession, vault: PersonVault, idempotency: Idempotency,
                        response: Response) -> ConsentOut:
    if body.basis == MANDATORY_OVERRIDE:
        check(principal, Permission.OVERRIDE_CONSENT)  # supervisors only
    try:
        previous = await idempotency.previous_resource(session)
        if previous is not None:
            return _consent_out(await services.get_consent(session, vault, principal, case_id, previous))
        consent_id = str(uuid.uuid4())
        consent, created = await services.grant_consent(
            session, vault, principal, case_id, person_id, recipient_agency_type=body.recipient_agency_type,
            purpose=body.purpose, basis=body.basis, reason=body.reason, consent_id=consent_id,
            remember=lambda resource_id: idempotency.record(session, resource_id=resource_id))
    except services.NotFound:
        raise _not_found("person", person_id) from None
    except services.Refused as exc:
        raise Problem(409, detail=str(exc)) from None
    except services.Gone as exc:
        raise _gone(exc) from None
    if not created:
        response.status_code = status.HTTP_200_OK
    return _consent_out(consent)


@router.get("/cases/{case_id}/persons/{person_id}/consents", response_model=ConsentsOut, responses=GONE,
            summary="A person's consents and overrides, and what they allow now: the registering agency, or the "
                    "coordinator of the case's jurisdiction")
async def list_consents(case_id: IdPath, person_id: IdPath, principal: ConsentReader, session: DbSession,
                        vault: PersonVault) -> ConsentsOut:
    try:
        views = await services.list_consents(session, vault, principal, case_id, person_id)
    except services.NotFound:
        raise _not_found("person", person_id) from None
    except services.Gone as exc:
        raise _gone(exc) from None
    return ConsentsOut(items=[_consent_out(c) for c in views], scope=services.scope_of_rows(v.row for v in views))


@router.post("/cases/{case_id}/persons/{person_id}/consents/{consent_id}/withdrawal", response_model=ConsentOut,
             responses={403: {"model": ProblemDetails,
                              "description": "An enforcement agency records no withdrawal of a consent to refer to a "
                                             "protection agency type: the person withdraws through that agency or "
                                             "the coordinator"},
                        **GONE},
             summary="Withdraw a consent (or an override applied in error): the registering agency, or the "
                     "coordinator of the case's jurisdiction; withdrawing twice changes nothing")
async def withdraw_consent(request: Request, case_id: IdPath, person_id: IdPath, consent_id: IdPath,
                           principal: ConsentWithdrawer, session: DbSession, vault: PersonVault) -> ConsentOut:
    note_objects(request, "person", [person_id])
    try:
        return _consent_out(await services.withdraw_consent(session, vault, principal, case_id, person_id, consent_id))
    except services.NotFound:
        raise _not_found("consent", consent_id) from None
    except services.WithdrawalRefused as refused:
        raise Problem(403, detail=f"An enforcement agency does not record the withdrawal of a consent to refer to "
                                  f"{refused} agencies: it would cancel protection referrals, which only the "
                                  "protection side may end. The person withdraws it through that agency or the "
                                  "coordinator of the jurisdiction, who records it here.") from None
    except services.Gone as exc:
        raise _gone(exc) from None


# --- removal safeguard -----------------------------------------------------------------------

class RemovalOrderIn(_In):
    destination_country: Alpha3


class RemovalOrderOut(BaseModel):
    id: str
    case_id: str
    person_id: str
    destination_country: str
    status: Literal["accepted"]
    requested_by: str
    requested_by_agency_id: str
    requested_at: AwareDatetime


class BlockingHold(BaseModel):
    hold_id: str
    referral_id: str | None
    need_code: str | None = Field(description="Null for an enforcement agency when the need is sensitive (firewall)")
    not_before: AwareDatetime | None


class PendingHold(BaseModel):
    need_code: str
    screening_id: str = Field(description="The screening that found the need")


class RemovalRefused(ProblemDetails):
    holds: list[BlockingHold] = Field(description="The active protection holds and the referrals behind them")
    pending_holds: list[PendingHold] = Field(
        description="Hold-bearing needs of the person's latest screening whose hold has not reached intake yet: "
                    "the referral service holds the person for each of them")
    removal_order_id: str = Field(description="The refused attempt, kept on record")


@router.post("/cases/{case_id}/persons/{person_id}/removal-orders", status_code=status.HTTP_201_CREATED,
             response_model=RemovalOrderOut,
             responses={409: {"model": RemovalRefused,
                              "description": "The person is under an active protection hold (non-refoulement)"},
                        **GONE},
             summary="Order a person's removal; refused while any protection hold on the person is active")
async def request_removal(case_id: IdPath, person_id: IdPath, body: RemovalOrderIn, principal: RemovalOfficer,
                          session: DbSession, idempotency: Idempotency) -> RemovalOrderOut:
    try:
        previous = await idempotency.previous_resource(session)
        if previous is not None:
            order = await services.get_removal_order(session, principal, case_id, previous)
        else:
            order = await services.request_removal(
                session, principal, case_id, person_id, destination_country=body.destination_country,
                order_id=str(uuid.uuid4()), remember=lambda resource_id: idempotency.record(session, resource_id=resource_id))
    except services.NotFound:
        raise _not_found("person", person_id) from None
    except services.Gone as exc:
        raise _gone(exc) from None
    except services.RemovalBlocked as blocked:
        holds = [_blocking_hold(h, firewall.viewer_for(principal)) for h in blocked.holds]
        pending = [PendingHold(need_code=code, screening_id=blocked.screening.id).model_dump()
                   for code in blocked.pending]
        reasons = []
        if holds:
            named = "; ".join(_named_hold(h, with_referral=True) for h in holds)
            reasons.append(f"the person is under active protection hold(s): {named}")
        if pending:
            reasons.append(f"screening {blocked.screening.id} found {', '.join(blocked.pending)}, for which the "
                           "referral service places a protection hold that has not reached intake yet")
        raise Problem(409, detail=f"Removal refused: {'; and '.join(reasons)}.", holds=holds, pending_holds=pending,
                      removal_order_id=blocked.order.id) from None
    return RemovalOrderOut(**order.model_dump(include=set(RemovalOrderOut.model_fields)))


# --- erasure ---------------------------------------------------------------------------------

class ErasureIn(_In):
    reason_code: Literal["ERASURE_REQUEST"] = Field(description="A supervisor acts on a request or order to erase")


class OpenReferral(BaseModel):
    referral_id: str
    need_code: str | None = Field(description="Null for an enforcement agency when the need is sensitive (firewall)")
    status: str
    to_agency_id: str | None


class ErasureRefused(ProblemDetails):
    holds: list[BlockingHold] = Field(description="Active protection holds on the person")
    pending_holds: list[str] = Field(description="Hold-bearing needs whose hold has not reached intake yet")
    open_referrals: list[OpenReferral] = Field(description="Referrals about the person a receiving agency still "
                                                           "works; an enforcement agency is shown only those it sent")


@router.post("/cases/{case_id}/persons/{person_id}/erasure", response_model=ErasedPersonOut,
             responses={409: {"model": ErasureRefused, "description": "A protection hold (active or pending) or an "
                                                                      "open referral: erasing would break them"}},
             summary="Erase a person (crypto-shredding: their key is destroyed, so every sealed copy of their data "
                     "is unreadable) and publish person.erased.v1. Erasing twice gives the same result")
async def erase_person(request: Request, case_id: IdPath, person_id: IdPath, body: ErasureIn, principal: Eraser,
                       session: DbSession, vault: PersonVault) -> ErasedPersonOut:
    try:
        person = await services.erase_person(session, vault, principal, case_id, person_id)
    except services.NotFound:
        raise _not_found("person", person_id) from None
    except services.ErasureBlocked as blocked:
        viewer = firewall.viewer_for(principal)
        holds = [_blocking_hold(h, viewer) for h in blocked.holds]
        referrals = [OpenReferral(**firewall.project("case_referral", {
            "referral_id": r.referral_id, "need_code": r.need_code, "status": r.status,
            "to_agency_id": r.to_agency_id}, viewer, need_code=r.need_code)).model_dump()
            for r in services.referrals_shown_to(principal, blocked.referrals)]
        named = [_named_hold(h, with_referral=False) for h in holds]
        named += [f"a pending hold for {code}" for code in blocked.pending]
        named += [f"open referral {r['referral_id']} ({', '.join(filter(None, (r['need_code'], r['status'])))})"
                  for r in referrals]
        # Another agency's referral is not named to an enforcement agency (firewall): then the detail names none.
        blockers = f" while the person has {'; '.join(named)}" if named else ""
        raise Problem(409, detail=f"Erasure refused{blockers}: erasing would break the removal safeguard or a "
                                  "receiving agency's work.",
                      holds=holds, pending_holds=blocked.pending, open_referrals=referrals) from None
    erased = _erased_out(person)
    await session.close()  # its read transaction would keep the checkpoint from truncating the log
    await purge_freed_pages(request.app.state.runtime.engine, tables=ERASURE_TABLES)
    return erased
