"""Subscriptions API: each agency manages its own webhook endpoints and reads its delivery log."""

import base64
import secrets
from datetime import datetime

from fastapi import APIRouter, status
from pydantic import AnyHttpUrl, BaseModel, EmailStr, Field
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from enlace_platform.auth import CurrentPrincipal, Principal
from enlace_platform.problems import Problem
from enlace_platform.runtime import DbSession
from notification.adapters.orm import DeliveryRow, SubscriptionRow
from notification.domain.events import WEBHOOK_EVENT_TYPES

router = APIRouter(tags=["subscriptions"])


class SubscriptionIn(BaseModel):
    url: AnyHttpUrl
    event_types: list[str] = Field(min_length=1, description=f"Any of: {', '.join(WEBHOOK_EVENT_TYPES)}")
    email: EmailStr | None = None


class SubscriptionOut(BaseModel):
    id: str
    agency_id: str
    url: str
    event_types: list[str]
    email: str | None
    active: bool
    created_at: datetime


class SubscriptionCreated(SubscriptionOut):
    secret: str = Field(description="Signing secret (whsec_…). Shown only in this response.")


class DeliveryOut(BaseModel):
    id: str
    event_id: str
    event_type: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime
    delivered_at: datetime | None


def _new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


async def _own_subscription(session: AsyncSession, principal: Principal, subscription_id: str) -> SubscriptionRow:
    sub = await session.get(SubscriptionRow, subscription_id)
    if sub is None or sub.agency_id != principal.agency_id:
        raise Problem(404, detail=f"No subscription {subscription_id} for your agency.")
    return sub


@router.post("/subscriptions", status_code=status.HTTP_201_CREATED, response_model=SubscriptionCreated,
             summary="Register a webhook endpoint for your agency")
async def create_subscription(body: SubscriptionIn, principal: CurrentPrincipal, session: DbSession) -> SubscriptionCreated:
    unknown = sorted(set(body.event_types) - set(WEBHOOK_EVENT_TYPES))
    if unknown:
        raise Problem(422, detail=f"Not webhook event types: {', '.join(unknown)}",
                      errors=[{"path": "body/event_types", "message": f"unknown: {t}"} for t in unknown])
    sub = SubscriptionRow(agency_id=principal.agency_id, url=str(body.url), event_types=body.event_types,
                          email=body.email, secret=_new_secret())
    session.add(sub)
    await session.commit()
    return SubscriptionCreated(**sub.model_dump())


@router.get("/subscriptions", response_model=list[SubscriptionOut], summary="Your agency's subscriptions")
async def list_subscriptions(principal: CurrentPrincipal, session: DbSession) -> list[SubscriptionOut]:
    rows = (await session.exec(select(SubscriptionRow).where(SubscriptionRow.agency_id == principal.agency_id)
                               .order_by(SubscriptionRow.created_at))).all()
    return [SubscriptionOut(**r.model_dump()) for r in rows]


@router.delete("/subscriptions/{subscription_id}", status_code=status.HTTP_204_NO_CONTENT,
               summary="Stop a subscription; its delivery log is kept")
async def delete_subscription(subscription_id: str, principal: CurrentPrincipal, session: DbSession) -> None:
    sub = await _own_subscription(session, principal, subscription_id)
    sub.active = False
    await session.commit()


@router.get("/subscriptions/{subscription_id}/deliveries", response_model=list[DeliveryOut],
            summary="Deliveries to one of your subscriptions, newest first")
async def list_deliveries(subscription_id: str, principal: CurrentPrincipal, session: DbSession) -> list[DeliveryOut]:
    await _own_subscription(session, principal, subscription_id)
    rows = (await session.exec(select(DeliveryRow).where(DeliveryRow.subscription_id == subscription_id)
                               .order_by(DeliveryRow.created_at.desc()).limit(200))).all()
    return [DeliveryOut(**r.model_dump()) for r in rows]
