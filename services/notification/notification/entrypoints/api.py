"""Subscriptions and delivery log API: each agency manages its own endpoints and reads its own deliveries."""

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, status
from pydantic import AnyHttpUrl, BaseModel, EmailStr, Field
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from enlace_platform.access import Allowed, Permission
from enlace_platform.audit import Purpose, note_objects
from enlace_platform.auth import Principal
from enlace_platform.crypto import CorruptValue
from enlace_platform.db import CommitWaker
from enlace_platform.idempotency import Idempotency
from enlace_platform.limits import MAX_ID_LENGTH, SINGLE_LINE, IdPath, IdQuery
from enlace_platform.problems import ProblemDetails, Problem
from enlace_platform.runtime import DbSession
from enlace_platform.timeutil import as_utc
from notification.adapters.orm import DeliveryAttemptRow, DeliveryRow, SubscriptionRow
from notification.adapters.signing_secrets import SigningSecrets
from notification.config import NotificationSettings
from notification.domain.delivery import PENDING
from notification.domain.events import EVENT_TYPE_WILDCARDS, WEBHOOK_EVENT_TYPES
from notification.domain.webhooks import unknown_event_types, webhook_url_problem
from notification.service_layer.handlers import DELIVERIES_FLAG
from notification.service_layer.subscriptions import create_secret, disable_subscription, rotate_secret, \
    schedule_redelivery

router = APIRouter(dependencies=[Purpose("notification")])


def _settings(request: Request) -> NotificationSettings:
    return request.app.state.runtime.settings


def _signing_secrets(request: Request) -> SigningSecrets:
    return SigningSecrets.of(request.app.state.runtime)


Settings = Annotated[NotificationSettings, Depends(_settings)]
Secrets = Annotated[SigningSecrets, Depends(_signing_secrets)]
# Endpoints and their signing secrets are the supervisor's; the delivery log is for caseworkers too.
SubscriptionManager = Annotated[Principal, Allowed(Permission.MANAGE_SUBSCRIPTIONS)]
DeliveryReader = Annotated[Principal, Allowed(Permission.READ_DELIVERIES)]

# --- models ----------------------------------------------------------------------------------------

EventTypeName = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=SINGLE_LINE)]


class SubscriptionIn(BaseModel):
    url: AnyHttpUrl = Field(description="Your webhook endpoint (http or https); it receives signed POSTs")
    event_types: list[EventTypeName] = Field(
        min_length=1, max_length=len(WEBHOOK_EVENT_TYPES) + len(EVENT_TYPE_WILDCARDS),
        description=f"Any of {', '.join(WEBHOOK_EVENT_TYPES)}, or a family: {', '.join(EVENT_TYPE_WILDCARDS)}")
    email: EmailStr | None = Field(None, description="Also e-mailed about new inbound referrals and deadline "
                                                     "escalations among the chosen types")


class SubscriptionPatch(BaseModel):
    url: AnyHttpUrl | None = Field(None, description="A new endpoint; pending deliveries go there")
    event_types: list[EventTypeName] | None = Field(None, min_length=1,
                                          max_length=len(WEBHOOK_EVENT_TYPES) + len(EVENT_TYPE_WILDCARDS))
    email: EmailStr | None = Field(None, description="A new address; null removes it")
    active: Literal[True] | None = Field(None, description="true re-enables a deleted or gone (410) subscription")


class SubscriptionOut(BaseModel):
    id: str
    agency_id: str
    url: str
    event_types: list[str]
    email: str | None
    active: bool
    disabled_reason: str | None = Field(description="deleted, or gone (the endpoint answered 410)")
    previous_secret_expires_at: datetime | None = Field(
        description="After a rotation: until then, deliveries are signed with the old and the new secret")
    created_at: datetime


class SubscriptionCreated(SubscriptionOut):
    secret: str = Field(description="Signing secret (whsec_…). Shown only in this response.")


class SecretRotated(BaseModel):
    subscription_id: str
    secret: str = Field(description="The new signing secret (whsec_…). Shown only in this response.")
    previous_secret_expires_at: datetime = Field(
        description="Until then every delivery carries two signatures: the old secret's and the new one's")


class DeliveryOut(BaseModel):
    id: str = Field(description="The webhook-id header: the same on every retry and redelivery")
    subscription_id: str
    channel: Literal["webhook", "email"]
    event_id: str
    event_type: str
    status: Literal["pending", "delivered", "dead", "cancelled"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None = Field(description="When the next attempt is due; null unless pending")
    created_at: datetime
    delivered_at: datetime | None


class AttemptOut(BaseModel):
    number: int
    attempted_at: datetime
    status_code: int | None = Field(description="HTTP status (webhook) or SMTP reply code (e-mail); null if none")
    latency_ms: float
    error: str | None


class DeliveryDetail(DeliveryOut):
    attempts_log: list[AttemptOut]


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]


def _subscription_out(sub: SubscriptionRow) -> dict:
    return SubscriptionOut.model_validate(sub, from_attributes=True).model_dump()


def _delivery_out(row: DeliveryRow) -> DeliveryOut:
    out = DeliveryOut.model_validate(row, from_attributes=True)
    if row.status != PENDING:
        out.next_attempt_at = None
    return out


async def _own_subscription(session: AsyncSession, principal: Principal, subscription_id: str) -> SubscriptionRow:
    sub = await session.get(SubscriptionRow, subscription_id)
    if sub is None or sub.agency_id != principal.agency_id:
        raise Problem(404, detail=f"No subscription {subscription_id} for your agency.")
    return sub


def _current_secret(secrets: SigningSecrets, sub: SubscriptionRow) -> str:
    """For a retried creation or rotation, which shows the secret again."""
    try:
        return secrets.current(sub)
    except CorruptValue:
        raise Problem(500, detail=f"The signing secret of subscription {sub.id} cannot be read with this service's "
                                  "key; rotate it (without this Idempotency-Key) to get a new one.") from None


async def _own_delivery(session: AsyncSession, principal: Principal, delivery_id: str) -> DeliveryRow:
    row = await session.get(DeliveryRow, delivery_id)
    if row is None or row.agency_id != principal.agency_id:
        raise Problem(404, detail=f"No delivery {delivery_id} for your agency.")
    return row


# --- subscriptions ---------------------------------------------------------------------------------

def _check(url: AnyHttpUrl | None, event_types: list[str] | None, settings: NotificationSettings) -> None:
    """The rules pydantic cannot know: catalogued event types, and which hosts may receive webhooks."""
    errors = [{"path": f"body/event_types/{i}", "message": f"not a subscribable event type: {t}"}
              for i, t in enumerate(event_types or []) if unknown_event_types([t])]
    url_problem = url is not None and webhook_url_problem(str(url), allow_loopback=settings.webhook_allow_loopback)
    if url_problem:
        errors.append({"path": "body/url", "message": url_problem})
    if errors:
        raise Problem(422, detail="; ".join(f"{e['path']}: {e['message']}" for e in errors), errors=errors)


@router.post("/subscriptions", status_code=status.HTTP_201_CREATED, response_model=SubscriptionCreated,
             tags=["subscriptions"], summary="Register a webhook endpoint for your agency (the secret is shown once)")
async def create_subscription(body: SubscriptionIn, principal: SubscriptionManager, session: DbSession,
                              idempotency: Idempotency, settings: Settings, secrets: Secrets,
                              request: Request) -> SubscriptionCreated:
    previous = await idempotency.previous_resource(session)
    if previous is not None:  # a retried POST gets the subscription it created, secret included
        note_objects(request, "subscription", [previous])
        sub = await session.get(SubscriptionRow, previous)
        return SubscriptionCreated(**_subscription_out(sub), secret=_current_secret(secrets, sub))
    _check(body.url, body.event_types, settings)
    sub = SubscriptionRow(agency_id=principal.agency_id, url=str(body.url),
                          event_types=list(dict.fromkeys(body.event_types)), email=body.email)
    secret = create_secret(sub, secrets)
    idempotency.record(session, resource_id=sub.id)
    session.add(sub)
    note_objects(request, "subscription", [sub.id])  # named before the commit that writes its audit row
    await session.commit()
    return SubscriptionCreated(**_subscription_out(sub), secret=secret)


@router.get("/subscriptions", response_model=list[SubscriptionOut], tags=["subscriptions"],
            summary="Your agency's subscriptions, oldest first (secrets are never shown again)")
async def list_subscriptions(principal: SubscriptionManager, session: DbSession) -> list[SubscriptionOut]:
    rows = (await session.exec(select(SubscriptionRow).where(SubscriptionRow.agency_id == principal.agency_id)
                               .order_by(SubscriptionRow.created_at))).all()
    return [SubscriptionOut(**_subscription_out(r)) for r in rows]


@router.get("/subscriptions/{subscription_id}", response_model=SubscriptionOut, tags=["subscriptions"],
            summary="One of your agency's subscriptions")
async def get_subscription(subscription_id: IdPath, principal: SubscriptionManager,
                           session: DbSession) -> SubscriptionOut:
    return SubscriptionOut(**_subscription_out(await _own_subscription(session, principal, subscription_id)))


@router.patch("/subscriptions/{subscription_id}", response_model=SubscriptionOut, tags=["subscriptions"],
              summary="Change the endpoint, event types or e-mail of a subscription, or re-enable it")
async def update_subscription(subscription_id: IdPath, body: SubscriptionPatch, principal: SubscriptionManager,
                              session: DbSession, settings: Settings) -> SubscriptionOut:
    sub = await _own_subscription(session, principal, subscription_id)
    for name in ("url", "event_types", "active"):
        if name in body.model_fields_set and getattr(body, name) is None:
            raise Problem(422, detail=f"body/{name}: may be left out, not null",
                          errors=[{"path": f"body/{name}", "message": "may be left out, not null"}])
    _check(body.url, body.event_types, settings)
    if body.url is not None:
        sub.url = str(body.url)
    if body.event_types is not None:
        sub.event_types = list(dict.fromkeys(body.event_types))
    if "email" in body.model_fields_set:
        sub.email = body.email
    if body.active:
        # Deliveries cancelled meanwhile stay cancelled; redeliver them by hand if they still matter.
        sub.active, sub.disabled_reason = True, None
    sub.updated_at = datetime.now(UTC)
    session.add(sub)
    await session.commit()
    return SubscriptionOut(**_subscription_out(sub))


@router.delete("/subscriptions/{subscription_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["subscriptions"],
               summary="Stop a subscription; its waiting deliveries are cancelled, its log is kept")
async def delete_subscription(subscription_id: IdPath, principal: SubscriptionManager, session: DbSession) -> None:
    sub = await _own_subscription(session, principal, subscription_id)
    if sub.active:
        await disable_subscription(session, sub, "deleted")
        await session.commit()


@router.post("/subscriptions/{subscription_id}/secret/rotation", response_model=SecretRotated,
             tags=["subscriptions"],
             summary="Replace the signing secret; the old one keeps signing during the overlap window")
async def rotate_subscription_secret(subscription_id: IdPath, principal: SubscriptionManager, session: DbSession,
                                     idempotency: Idempotency, settings: Settings,
                                     secrets: Secrets) -> SecretRotated:
    sub = await _own_subscription(session, principal, subscription_id)
    # A retried rotation must not rotate twice: the secret the caller never saw would push out the old one.
    if await idempotency.previous_resource(session) is None:
        secret = rotate_secret(sub, timedelta(seconds=settings.secret_rotation_overlap_s), secrets)
        idempotency.record(session, resource_id=sub.id)
        session.add(sub)
        await session.commit()
    else:
        secret = _current_secret(secrets, sub)
    return SecretRotated(subscription_id=sub.id, secret=secret,
                         previous_secret_expires_at=sub.previous_secret_expires_at)


@router.get("/subscriptions/{subscription_id}/deliveries", response_model=list[DeliveryOut], tags=["deliveries"],
            summary="Deliveries to one of your subscriptions, newest first (at most 200)")
async def list_subscription_deliveries(subscription_id: IdPath, principal: DeliveryReader,
                                       session: DbSession) -> list[DeliveryOut]:
    await _own_subscription(session, principal, subscription_id)
    rows = (await session.exec(select(DeliveryRow).where(DeliveryRow.subscription_id == subscription_id)
                               .order_by(DeliveryRow.created_at.desc()).limit(200))).all()
    return [_delivery_out(r) for r in rows]


# --- delivery log ----------------------------------------------------------------------------------

@router.get("/deliveries", response_model=DeliveryPage, tags=["deliveries"],
            summary="Your agency's deliveries, newest first; filter e.g. status=dead")
async def list_deliveries(
    principal: DeliveryReader, session: DbSession,
    status_: Annotated[Literal["pending", "delivered", "dead", "cancelled"] | None, Query(alias="status")] = None,
    channel: Literal["webhook", "email"] | None = None,
    subscription_id: IdQuery = None,
    event_type: IdQuery = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> DeliveryPage:
    query = select(DeliveryRow).where(DeliveryRow.agency_id == principal.agency_id)
    if status_ is not None:
        query = query.where(DeliveryRow.status == status_)
    if channel is not None:
        query = query.where(DeliveryRow.channel == channel)
    if subscription_id is not None:
        query = query.where(DeliveryRow.subscription_id == subscription_id)
    if event_type is not None:
        query = query.where(DeliveryRow.event_type == event_type)
    rows = (await session.exec(query.order_by(DeliveryRow.created_at.desc(), DeliveryRow.id).limit(limit))).all()
    return DeliveryPage(items=[_delivery_out(r) for r in rows])


@router.get("/deliveries/{delivery_id}", response_model=DeliveryDetail, tags=["deliveries"],
            summary="One delivery with every attempt: status code, latency and error")
async def get_delivery(delivery_id: IdPath, principal: DeliveryReader, session: DbSession) -> DeliveryDetail:
    row = await _own_delivery(session, principal, delivery_id)
    attempts = (await session.exec(select(DeliveryAttemptRow).where(DeliveryAttemptRow.delivery_id == delivery_id)
                                   .order_by(DeliveryAttemptRow.number))).all()
    return DeliveryDetail(**_delivery_out(row).model_dump(),
                          attempts_log=[AttemptOut.model_validate(a, from_attributes=True) for a in attempts])


@router.post("/deliveries/{delivery_id}/redelivery", status_code=status.HTTP_202_ACCEPTED, response_model=DeliveryOut,
             tags=["deliveries"],
             responses={409: {"model": ProblemDetails,
                              "description": "The subscription is disabled, or an attempt is in flight"}},
             summary="Send a delivery again by hand, under the same webhook-id, with a fresh retry schedule")
async def redeliver(delivery_id: IdPath, principal: SubscriptionManager, session: DbSession) -> DeliveryOut:
    row = await _own_delivery(session, principal, delivery_id)
    sub = await session.get(SubscriptionRow, row.subscription_id)
    if not sub.active:
        raise Problem(409, detail=f"Subscription {sub.id} is disabled ({sub.disabled_reason}); "
                                  "register the endpoint again to receive deliveries.")
    lease = row.lease_expires_at
    if row.lease_token and lease and as_utc(lease) > datetime.now(UTC):
        raise Problem(409, detail="An attempt of this delivery is in flight; ask again when it has finished.")
    schedule_redelivery(row)
    session.add(row)
    CommitWaker.mark(session, DELIVERIES_FLAG)
    await session.commit()
    return _delivery_out(row)

