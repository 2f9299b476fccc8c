"""The service directory (Open Referral HSDS style): any agency reads it; the coordinator of a
jurisdiction creates, updates and deletes the agencies and services of that jurisdiction.

The directory is also every service's word on who an agency is (enlace_platform.agencies): each change of an
agency reaches this replica's token check at once, and the other services by agency.changed.v1."""

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field, model_validator
from sqlmodel import col, select

from enlace_platform import firewall
from enlace_platform.access import Allowed, Permission
from enlace_platform.agencies import default_enforcement
from enlace_platform.audit import Purpose
from enlace_platform.auth import Principal
from enlace_platform.idempotency import Idempotency
from enlace_platform.limits import MAX_INT, SINGLE_LINE, Id, IdPath, IdQuery
from enlace_platform.problems import Problem, ProblemDetails
from enlace_platform.runtime import DbSession
from referral.adapters.directory import agency_of, open_counts, stage_agency_changed
from referral.adapters.orm import AgencyRow, ReferralRow, ServiceRow
from referral.domain.codes import AGENCY_TYPES, COORDINATOR, NEED_CODES
from referral.domain.lifecycle import OPEN

router = APIRouter(tags=["directory"], dependencies=[Purpose("directory")])

DirectoryReader = Annotated[Principal, Allowed(Permission.READ_DIRECTORY)]
# Also object-level: only the coordinator agency of the jurisdiction concerned (_require_coordinator).
DirectoryManager = Annotated[Principal, Allowed(Permission.MANAGE_DIRECTORY)]

NeedCode = Literal[tuple(sorted(NEED_CODES))]
AgencyType = Literal[tuple(sorted(AGENCY_TYPES))]
LanguageCode = Annotated[str, Field(pattern=r"^[a-z]{2,3}$")]

WRITE_ERRORS = {403: {"model": ProblemDetails, "description": "Only the coordinator of that jurisdiction may change it"},
                409: {"model": ProblemDetails, "description": "Still in use (open referrals or services)"}}


class AgencyIn(BaseModel):
    id: str = Field(min_length=2, max_length=64, pattern=r"^[A-Z]{2}-[A-Z0-9-]+$", examples=["MX-CASA"])
    name: str = Field(min_length=1, max_length=200, pattern=SINGLE_LINE)
    type: AgencyType
    jurisdiction: str = Field(min_length=2, max_length=16, pattern=SINGLE_LINE, examples=["MX"])
    enforcement: bool | None = Field(None, description="On the enforcement side of the information barrier "
                                                        "(docs/security.md); default: true for a migration "
                                                        "authority, else false")


class AgencyUpdate(BaseModel):
    name: str | None = Field(None, min_length=1, max_length=200, pattern=SINGLE_LINE)
    enforcement: bool | None = Field(None, description="Mark or unmark the agency as enforcement")


class AgencyOut(BaseModel):
    id: str
    name: str
    type: str
    jurisdiction: str
    enforcement: bool


class ServiceFields(BaseModel):
    name: str = Field(min_length=1, max_length=200, pattern=SINGLE_LINE)
    need_codes: list[NeedCode] = Field(min_length=1, max_length=len(NEED_CODES))
    age_min: int = Field(0, ge=0, le=120)
    age_max: int = Field(120, ge=0, le=120)
    languages: list[LanguageCode] = Field(min_length=1, max_length=20)
    opening_hours: str = Field("", max_length=200, pattern=SINGLE_LINE, examples=["Mo-Fr 08:00-17:00", "24/7"])
    capacity: int = Field(ge=0, le=MAX_INT, description="How many open referrals the service takes at once")
    active: bool = True

    @model_validator(mode="after")
    def _age_range(self):
        if self.age_max < self.age_min:
            raise ValueError("age_max must not be below age_min")
        return self


class ServiceIn(ServiceFields):
    id: str | None = Field(None, min_length=2, max_length=64, pattern=SINGLE_LINE,
                           description="Chosen by the server when absent")
    agency_id: Id
    area: str = Field(min_length=2, max_length=16, pattern=SINGLE_LINE,
                      description="Jurisdiction served; the agency's own")


class ServiceOut(ServiceFields):
    id: str
    agency_id: str
    agency_type: str
    area: str
    open_referrals: int | None = Field(description="Open referrals now with this service; null for an enforcement "
                                                   "agency, for whom its changes would tell who took a survivor's "
                                                   "referral (the information barrier, docs/security.md)")


def _require_coordinator(principal: Principal, jurisdiction: str) -> None:
    if principal.agency_type != COORDINATOR or principal.jurisdiction != jurisdiction:
        raise Problem(403, detail=f"Only the coordinator of {jurisdiction} may change its directory.")


async def _agency(session, agency_id: str) -> AgencyRow:
    row = await session.get(AgencyRow, agency_id)
    if row is None:
        raise Problem(404, detail=f"No agency {agency_id}.")
    return row


async def _service_out(session, row: ServiceRow, principal: Principal) -> ServiceOut:
    agency = await session.get(AgencyRow, row.agency_id)
    count = None
    if firewall.viewer_for(principal) is firewall.Viewer.PROTECTION:
        count = (await open_counts(session, [row.id])).get(row.id, 0)
    return ServiceOut(**row.model_dump(), agency_type=agency.type, open_referrals=count)


@router.get("/agencies", response_model=list[AgencyOut], summary="Agencies of the directory (any agency)")
async def list_agencies(principal: DirectoryReader, session: DbSession, jurisdiction: IdQuery = None,
                        type: AgencyType | None = None) -> list[AgencyOut]:
    query = select(AgencyRow)
    if jurisdiction:
        query = query.where(AgencyRow.jurisdiction == jurisdiction)
    if type:
        query = query.where(AgencyRow.type == type)
    return [AgencyOut(**r.model_dump()) for r in (await session.exec(query.order_by(AgencyRow.id))).all()]


@router.get("/agencies/{agency_id}", response_model=AgencyOut, summary="One agency (any agency)")
async def read_agency(agency_id: IdPath, principal: DirectoryReader, session: DbSession) -> AgencyOut:
    return AgencyOut(**(await _agency(session, agency_id)).model_dump())


@router.post("/agencies", status_code=201, response_model=AgencyOut, responses=WRITE_ERRORS,
             summary="Add an agency to your jurisdiction (coordinator)")
async def create_agency(body: AgencyIn, principal: DirectoryManager, session: DbSession,
                        idempotency: Idempotency, request: Request) -> AgencyOut:
    _require_coordinator(principal, body.jurisdiction)
    previous = await idempotency.previous_resource(session)
    if previous is not None:
        return AgencyOut(**(await _agency(session, previous)).model_dump())
    if await session.get(AgencyRow, body.id) is not None:
        raise Problem(409, detail=f"Agency {body.id} already exists.")
    idempotency.record(session, resource_id=body.id)
    enforcement = default_enforcement(body.type) if body.enforcement is None else body.enforcement
    row = AgencyRow(**body.model_dump(exclude={"enforcement"}), enforcement=enforcement)
    session.add(row)
    stage_agency_changed(session, row)
    await session.commit()
    request.app.state.runtime.agencies.put(agency_of(row))  # this replica's token check, at once
    return AgencyOut(**row.model_dump())


@router.patch("/agencies/{agency_id}", response_model=AgencyOut, responses=WRITE_ERRORS,
              summary="Rename an agency of your jurisdiction, or mark it as enforcement (coordinator)")
async def update_agency(agency_id: IdPath, body: AgencyUpdate, principal: DirectoryManager,
                        session: DbSession, request: Request) -> AgencyOut:
    row = await _agency(session, agency_id)
    _require_coordinator(principal, row.jurisdiction)
    if body.name is not None:
        row.name = body.name
    if body.enforcement is not None:
        row.enforcement = body.enforcement
    stage_agency_changed(session, row)
    await session.commit()
    request.app.state.runtime.agencies.put(agency_of(row))
    return AgencyOut(**row.model_dump())


@router.delete("/agencies/{agency_id}", status_code=204, responses=WRITE_ERRORS,
               summary="Remove an agency without services (coordinator)")
async def delete_agency(agency_id: IdPath, principal: DirectoryManager, session: DbSession,
                        request: Request) -> Response:
    row = await _agency(session, agency_id)
    _require_coordinator(principal, row.jurisdiction)
    if (await session.exec(select(ServiceRow.id).where(ServiceRow.agency_id == agency_id).limit(1))).first():
        raise Problem(409, detail=f"Agency {agency_id} still offers services; delete them first.")
    stage_agency_changed(session, row, removed=True)
    await session.delete(row)
    await session.commit()
    request.app.state.runtime.agencies.remove(agency_id)  # its tokens are refused from now on
    return Response(status_code=204)


@router.get("/services", response_model=list[ServiceOut], summary="Services of the directory (any agency)")
async def list_services(principal: DirectoryReader, session: DbSession, jurisdiction: IdQuery = None,
                        need_code: NeedCode | None = None, agency_id: IdQuery = None,
                        active: bool | None = None) -> list[ServiceOut]:
    query = select(ServiceRow)
    if jurisdiction:
        query = query.where(ServiceRow.area == jurisdiction)
    if agency_id:
        query = query.where(ServiceRow.agency_id == agency_id)
    if active is not None:
        query = query.where(ServiceRow.active == active)
    rows = [r for r in (await session.exec(query.order_by(ServiceRow.id))).all()
            if need_code is None or need_code in r.need_codes]
    return [await _service_out(session, r, principal) for r in rows]


async def _service(session, service_id: str) -> ServiceRow:
    row = await session.get(ServiceRow, service_id)
    if row is None:
        raise Problem(404, detail=f"No service {service_id}.")
    return row


@router.get("/services/{service_id}", response_model=ServiceOut, summary="One service (any agency)")
async def read_service(service_id: IdPath, principal: DirectoryReader, session: DbSession) -> ServiceOut:
    return await _service_out(session, await _service(session, service_id), principal)


@router.post("/services", status_code=201, response_model=ServiceOut, responses=WRITE_ERRORS,
             summary="Add a service to an agency of your jurisdiction (coordinator)")
async def create_service(body: ServiceIn, principal: DirectoryManager, session: DbSession,
                         idempotency: Idempotency) -> ServiceOut:
    agency = await session.get(AgencyRow, body.agency_id)
    if agency is None:
        raise Problem(422, detail=f"No agency {body.agency_id}.",
                      errors=[{"path": "body/agency_id", "message": "unknown agency"}])
    _require_coordinator(principal, agency.jurisdiction)
    if body.area != agency.jurisdiction:
        raise Problem(422, detail=f"A service of {agency.id} serves {agency.jurisdiction}.",
                      errors=[{"path": "body/area", "message": "must be the agency's jurisdiction"}])
    previous = await idempotency.previous_resource(session)
    if previous is not None:
        return await _service_out(session, await _service(session, previous), principal)
    service_id = body.id or f"{agency.id}-{uuid.uuid4().hex[:8]}"
    if await session.get(ServiceRow, service_id) is not None:
        raise Problem(409, detail=f"Service {service_id} already exists.")
    idempotency.record(session, resource_id=service_id)
    row = ServiceRow(**{**body.model_dump(exclude={"id"}), "id": service_id})
    session.add(row)
    await session.commit()
    return await _service_out(session, row, principal)


@router.put("/services/{service_id}", response_model=ServiceOut, responses=WRITE_ERRORS,
            summary="Update a service of your jurisdiction (coordinator)")
async def update_service(service_id: IdPath, body: ServiceFields, principal: DirectoryManager,
                         session: DbSession) -> ServiceOut:
    row = await _service(session, service_id)
    _require_coordinator(principal, row.area)
    for key, value in body.model_dump().items():
        setattr(row, key, value)
    await session.commit()
    return await _service_out(session, row, principal)


@router.delete("/services/{service_id}", status_code=204, responses=WRITE_ERRORS,
               summary="Remove a service without open referrals (coordinator); otherwise deactivate it")
async def delete_service(service_id: IdPath, principal: DirectoryManager, session: DbSession) -> Response:
    row = await _service(session, service_id)
    _require_coordinator(principal, row.area)
    busy = (await session.exec(select(ReferralRow.id).where(
        ReferralRow.to_service_id == service_id, col(ReferralRow.status).in_([str(s) for s in OPEN])).limit(1))).first()
    if busy:
        raise Problem(409, detail=f"Service {service_id} has open referrals; set active=false instead.")
    await session.delete(row)
    await session.commit()
    return Response(status_code=204)
