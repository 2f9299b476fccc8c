"""Referral inbox API: the referrals sent to or from the caller's agency."""

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import or_
from sqlmodel import select

from enlace_platform.auth import CurrentPrincipal, Principal
from enlace_platform.problems import Problem
from enlace_platform.runtime import DbSession
from referral.adapters.orm import ReferralRow

router = APIRouter(tags=["referrals"])


class ReferralOut(BaseModel):
    id: str
    case_id: str
    person_id: str
    need_code: str
    urgency: str
    status: str
    is_lead: bool
    from_agency_id: str
    to_agency_id: str | None
    to_service_id: str | None
    routing_reasons: list[str]
    created_at: datetime


class ReferralPage(BaseModel):
    items: list[ReferralOut]
    limit: int
    offset: int


def _visible_to(principal: Principal):
    return or_(ReferralRow.to_agency_id == principal.agency_id, ReferralRow.from_agency_id == principal.agency_id)


@router.get("/referrals", response_model=ReferralPage, summary="Referrals sent to or from your agency")
async def list_referrals(
    principal: CurrentPrincipal,
    session: DbSession,
    status: str | None = None,
    need_code: str | None = None,
    case_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> ReferralPage:
    query = select(ReferralRow).where(_visible_to(principal))
    if status:
        query = query.where(ReferralRow.status == status)
    if need_code:
        query = query.where(ReferralRow.need_code == need_code)
    if case_id:
        query = query.where(ReferralRow.case_id == case_id)
    rows = (await session.exec(query.order_by(ReferralRow.created_at, ReferralRow.id).offset(offset).limit(limit))).all()
    return ReferralPage(items=[ReferralOut(**r.model_dump()) for r in rows], limit=limit, offset=offset)


@router.get("/referrals/{referral_id}", response_model=ReferralOut, summary="One referral, with its routing reasons")
async def read_referral(referral_id: str, principal: CurrentPrincipal, session: DbSession) -> ReferralOut:
    row = (await session.exec(select(ReferralRow).where(ReferralRow.id == referral_id, _visible_to(principal)))).first()
    if row is None:
        raise Problem(404, detail=f"No referral {referral_id} visible to your agency.")
    return ReferralOut(**row.model_dump())
