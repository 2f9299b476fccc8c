"""Safe retries of creating POSTs: the ``Idempotency-Key`` header.

A key is remembered per agency, together with the request it came with and the id of the resource it
created. The record is written in the same transaction as the resource, so a retried POST either finds
the resource or finds nothing at all — never half. A key reused for a different request is refused.

Usage in a route::

    previous = await idempotency.previous_resource(session)
    if previous is not None:
        return render(previous)          # the original response, same status
    new_id = str(uuid.uuid4())
    idempotency.record(session, resource_id=new_id)
    ...create the resource with id=new_id and commit...
"""

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlmodel import Field, SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from enlace_platform.auth import CurrentPrincipal
from enlace_platform.problems import Problem

MAX_KEY_LENGTH = 255


class IdempotencyRecord(SQLModel, table=True):
    __tablename__ = "idempotency_keys"

    agency_id: str = Field(primary_key=True)
    key: str = Field(primary_key=True)
    request_fingerprint: str
    resource_id: str
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


def fingerprint(method: str, path: str, body: bytes) -> str:
    """Same method, path and JSON content (whatever the key order or spacing) give the same print."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode() if body else b""
    except ValueError:
        canonical = body
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + canonical).hexdigest()


@dataclass
class IdempotencyKey:
    agency_id: str
    key: str | None
    request_fingerprint: str

    async def previous_resource(self, session: AsyncSession) -> str | None:
        """The resource this key created before, or None; 422 if the key came with another request."""
        if self.key is None:
            return None
        record = await session.get(IdempotencyRecord, (self.agency_id, self.key))
        if record is None:
            return None
        if record.request_fingerprint != self.request_fingerprint:
            raise Problem(422, detail=f"Idempotency-Key {self.key!r} was already used for a different request; "
                                      "use a new key for a new request")
        return record.resource_id

    def record(self, session: AsyncSession, *, resource_id: str) -> None:
        """Remember the resource; it commits (or rolls back) with the caller's transaction."""
        if self.key is not None:
            session.add(IdempotencyRecord(agency_id=self.agency_id, key=self.key,
                                          request_fingerprint=self.request_fingerprint, resource_id=resource_id))


async def _idempotency_key(
    request: Request,
    principal: CurrentPrincipal,
    idempotency_key: Annotated[str | None, Header(
        description="Makes a retried POST safe: the same key returns the resource the first call created",
        max_length=MAX_KEY_LENGTH)] = None,
) -> IdempotencyKey:
    if idempotency_key is not None and (not idempotency_key.strip() or not idempotency_key.isprintable()):
        raise Problem(400, detail="Idempotency-Key must be printable and not blank")
    body = await request.body()
    return IdempotencyKey(agency_id=principal.agency_id, key=idempotency_key,
                          request_fingerprint=fingerprint(request.method, request.url.path, body))


Idempotency = Annotated[IdempotencyKey, Depends(_idempotency_key)]
