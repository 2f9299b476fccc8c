"""The audit log: who touched which object, for what purpose, when, under which trace.

Every request that carried a valid token is recorded, whatever its outcome (a 404 on someone
else's case is an attempt worth seeing), before its response starts: if the record cannot be
written, the caller gets no data, but a 503 with Retry-After when the database is full, locked or
unreachable (enlace_platform.problems), else a 500. One row per object: the object in the path, plus the
objects a handler names with :func:`note_objects` (search results, a case's persons, a new id).
The rows hold ids and codes only, never personal data, so erasure never needs to touch them.

A write's rows are written by its own transaction (:func:`record_in_transaction`): the change and
its record commit together or not at all, and no crash can fall between them. Reads, and requests
that committed nothing (refusals), get their rows in a short transaction of their own just before
the response starts; so do objects a handler names after its commit.

The table is append-only: database triggers refuse UPDATE and DELETE (SQLite and PostgreSQL).
Auditors read it through ``GET /audit``: an agency's auditor sees what its own staff did, plus what
anyone did to the objects the service holds for its agency; the coordinator's auditor sees what anyone
in its jurisdiction did, plus what anyone did to objects held for agencies of its jurisdiction. Which
objects belong to whom only the service knows: it gives its :data:`AuditScope` to create_service_app.

The information barrier (enlace_platform.firewall) holds here too: an enforcement agency's auditor never
learns who of another agency touched its objects. Such entries show the action, route, status and time, with
the actor's agency, user, roles and trace withheld (null); filtering by agency, user or trace matches only
its own staff's entries. A protection-side service hides others' entries from it altogether
(:func:`hidden_from_enforcement`), since even their routes tell of the protection work.
"""

import logging
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from opentelemetry import trace
from pydantic import BaseModel
from pydantic import Field as ModelField
from sqlalchemy import DDL, ColumnElement, Select, and_, event, false, insert, or_
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Field, SQLModel, col, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from enlace_platform.access import AuditReader
from enlace_platform.auth import Principal
from enlace_platform.firewall import Viewer, viewer_for
from enlace_platform.db import database_fault, insert_at_commit, insert_staged_rows_on_commit
from enlace_platform.limits import MAX_ID_LENGTH, MAX_INT, SINGLE_LINE, Moment
from enlace_platform.problems import database_unavailable
from enlace_platform.timeutil import as_utc

log = logging.getLogger(__name__)

COORDINATOR = "coordinator"
DEFAULT_PURPOSE = "unspecified"
READ_METHODS = frozenset({"GET", "HEAD"})

# Keys of a write session's info: the request whose audit rows its commits carry, the rows added to the
# transaction now committing, and the status the request answers when it is not the route's usual one.
_REQUEST_SCOPE = "enlace_audit_request_scope"
_PENDING_ROWS = "enlace_audit_pending_rows"
_ANSWERED_STATUS = "enlace_audit_answered_status"


class AuditRecord(SQLModel, table=True):
    __tablename__ = "audit_log"

    seq: int | None = Field(default=None, primary_key=True, description="Order of writing; the cursor")
    request_id: str = Field(index=True, description="Rows written for one request share it")
    at: datetime = Field(index=True)
    agency_id: str = Field(index=True, description="The actor's agency")
    jurisdiction: str = Field(index=True)
    user_id: str = Field(index=True, description="The token's subject")
    roles: str = Field(description="The actor's roles, comma-separated")
    action: str = Field(description="read or write")
    method: str
    route: str = Field(description="The route template, e.g. /cases/{case_id}: never the concrete URL")
    object_type: str | None = Field(default=None, index=True)
    object_id: str | None = Field(default=None, index=True)
    purpose: str
    status: int = Field(description="The HTTP status the caller got")
    trace_id: str | None = Field(default=None, index=True)


_TRIGGERS = {
    "sqlite": [
        "CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log "
        "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
        "CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log "
        "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
    ],
    "postgresql": [
        "CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$",
        "CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()",
    ],
}


def append_only_statements(dialect: str) -> list[str]:
    """The trigger DDL for one dialect; migrations run it right after creating the table."""
    return _TRIGGERS.get(dialect, [])


for _dialect, _statements in _TRIGGERS.items():
    for _statement in _statements:
        event.listen(AuditRecord.__table__, "after_create", DDL(_statement).execute_if(dialect=_dialect))


# --- what a request declares -------------------------------------------------------------------

def Purpose(name: str):  # noqa: N802 - used as a router dependency: APIRouter(dependencies=[Purpose(...)])
    """The purpose the routes of a router serve, recorded with every access."""
    async def purpose(request: Request) -> None:
        request.state.audit_purpose = name

    return Depends(purpose)


def note_objects(request: Request, object_type: str, ids) -> None:
    """Record these objects as touched by this request too (lists, search results, created ids).

    Name what a write creates before its commit, so its row is written by that transaction."""
    objects = getattr(request.state, "audit_objects", None)
    if objects is None:
        objects = []
        request.state.audit_objects = objects
    objects.extend((object_type, str(i)) for i in ids)


# --- a request's rows --------------------------------------------------------------------------

def _path_object(route_path: str, path_params: dict) -> tuple[str | None, str | None]:
    """The most specific object a route names: ``/cases/{case_id}/persons/{person_id}`` gives the person."""
    names = re.findall(r"\{(\w+?)(?::\w+)?\}", route_path)
    if not names:
        return None, None
    last = names[-1]
    return last.removesuffix("_id"), _storable(str(path_params[last])) if last in path_params else None


def _storable(object_id: str) -> str:
    """An id as the caller gave it, also one the route refused (an attempt worth seeing): control characters
    escaped (PostgreSQL refuses NUL in text) and cut to the longest id a route accepts."""
    if len(object_id) <= MAX_ID_LENGTH and re.fullmatch(SINGLE_LINE, object_id):
        return object_id
    return object_id.encode("unicode_escape").decode("ascii")[:MAX_ID_LENGTH]


ObjectKey = tuple[str, str | None]


def _objects(scope: Scope) -> list[ObjectKey]:
    """The objects a request touched, each once: the one in its path, then those its handler named."""
    state = scope["state"]
    route = scope["route"]
    object_type, object_id = _path_object(route.path, scope.get("path_params") or {})
    named = state.get("audit_objects") or []
    objects = [(object_type, object_id)] if object_id is not None or not named else []
    objects += [o for o in named if o != (object_type, object_id)]
    return list(dict.fromkeys((t or _collection(route.path), i) for t, i in objects))


def _audit_rows(scope: Scope, status: int, *, skip: Mapping[ObjectKey, int]) -> list[dict]:
    """The request's rows with this status, but for objects ``skip`` already records with it: the values of
    each, for one Core INSERT of them all (an ORM flush inserts audit rows one statement each, to learn seq)."""
    state = scope.get("state") or {}
    principal: Principal | None = state.get("principal")
    route = scope.get("route")
    if principal is None or route is None:
        return []  # no valid token: nothing was read (the 401 is in the access log and the span)
    common = dict(
        request_id=_request_id(state), at=datetime.now(UTC), agency_id=principal.agency_id,
        jurisdiction=principal.jurisdiction, user_id=principal.subject, roles=",".join(principal.roles),
        action="read" if scope["method"] in READ_METHODS else "write", method=scope["method"],
        route=route.path, purpose=state.get("audit_purpose", DEFAULT_PURPOSE), status=status,
        trace_id=state.get("audit_trace_id") or _current_trace_id(),
    )
    return [dict(common, object_type=t, object_id=i) for t, i in _objects(scope) if skip.get((t, i)) != status]


_INSERT_ROWS = insert(AuditRecord.__table__)
_AUDIT_TABLE = AuditRecord.__table__


def _request_id(state: dict) -> str:
    """One id for all of a request's rows, whichever transaction writes them."""
    if "audit_request_id" not in state:
        state["audit_request_id"] = str(uuid.uuid4())
    return state["audit_request_id"]


def _current_trace_id() -> str | None:
    span = trace.get_current_span().get_span_context()
    return format(span.trace_id, "032x") if span.is_valid else None


def _key(row: dict) -> ObjectKey:
    return row["object_type"], row["object_id"]


# --- a write's rows in its own transaction -----------------------------------------------------

def record_in_transaction(session, request: Request) -> None:
    """Each commit of this write session also writes the request's audit rows, for the objects named so
    far, with the status the route answers on success (or :func:`answer_status`). The rows of a write
    commit with it or not at all; AuditMiddleware then writes only what is still missing."""
    session.info[_REQUEST_SCOPE] = request.scope


def answer_status(session, status: int) -> None:
    """Before committing a change that the request then refuses (an attempt kept on record): the audit
    rows of that transaction carry the status the caller is going to get."""
    session.info[_ANSWERED_STATUS] = status


def _add_rows_before_commit(session: OrmSession) -> None:
    scope = session.info.get(_REQUEST_SCOPE)
    if scope is None:
        return
    route = scope.get("route")
    status = session.info.get(_ANSWERED_STATUS) or getattr(route, "status_code", None) or 200
    pending: dict[ObjectKey, int] = session.info.setdefault(_PENDING_ROWS, {})
    recorded = {**scope["state"].get("audit_recorded", {}), **pending}
    rows = _audit_rows(scope, status, skip=recorded)
    for row in rows:
        insert_at_commit(session, _AUDIT_TABLE, row)  # written by the transaction now committing, in one INSERT
    pending.update((_key(row), status) for row in rows)


def _after_commit(session: OrmSession) -> None:
    pending = session.info.pop(_PENDING_ROWS, None)
    session.info.pop(_ANSWERED_STATUS, None)
    scope = session.info.get(_REQUEST_SCOPE)
    if pending and scope is not None:
        scope["state"].setdefault("audit_recorded", {}).update(pending)


def _after_rollback(session: OrmSession) -> None:
    session.info.pop(_PENDING_ROWS, None)
    session.info.pop(_ANSWERED_STATUS, None)


def _listen_for_commits(sessions: async_sessionmaker) -> None:
    session_class = sessions.kw["sync_session_class"]
    insert_staged_rows_on_commit(session_class)
    for name, listener in (("before_commit", _add_rows_before_commit), ("after_commit", _after_commit),
                           ("after_rollback", _after_rollback)):
        if not event.contains(session_class, name, listener):
            # First: the rows it stages are then written by the commit's insert of staged rows.
            event.listen(session_class, name, listener, insert=name == "before_commit")


# --- the middleware ----------------------------------------------------------------------------

class AuditMiddleware:
    """Pure ASGI, so it can hold the response back until its rows are committed."""

    def __init__(self, app: ASGIApp, sessions: async_sessionmaker) -> None:
        self.app = app
        self.sessions = sessions
        _listen_for_commits(sessions)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # A fresh state per request: some servers hand every request the same lifespan state dict,
        # and one request's principal must never be recorded as another's actor.
        scope["state"] = dict(scope.get("state") or {})
        scope["state"]["audit_trace_id"] = _current_trace_id()  # the request's span, wherever rows are written

        started = withheld = False

        async def send_after_recording(message: Message) -> None:
            nonlocal started, withheld
            if withheld:
                return  # the rest of a response that went unrecorded: never sent
            if message["type"] == "http.response.start":
                started = True
                try:
                    await self._record(scope, message["status"])
                except Exception as exc:
                    fault = database_fault(exc)
                    if fault is None:
                        raise
                    # The database cannot take the record (full, locked, gone): no data without it, and
                    # the caller gets a 503 to retry rather than a 500.
                    withheld = True
                    await database_unavailable(Request(scope), fault)(scope, receive, send)
                    return
            await send(message)

        try:
            await self.app(scope, receive, send_after_recording)
        except Exception:
            if not started:  # unhandled: the server answers 500, and the record says so
                await self._record(scope, 500)
            raise

    async def _record(self, scope: Scope, status: int) -> None:
        """The rows the request's own commits did not write: all of them for a read or a refusal."""
        rows = _audit_rows(scope, status, skip=(scope.get("state") or {}).get("audit_recorded", {}))
        if not rows:
            return
        async with self.sessions() as session:
            await session.exec(_INSERT_ROWS, params=rows)
            await session.commit()


def _collection(route_path: str) -> str:
    segments = [s for s in route_path.split("/") if s and not s.startswith("{")]
    return segments[-1] if segments else "root"


# --- whose objects an auditor follows ----------------------------------------------------------

@dataclass(frozen=True)
class Owner:
    """Whose objects an auditor follows: one agency's (``agency_id``), or, for the coordinator's auditor,
    those of every agency of a jurisdiction (``jurisdiction``). Exactly one is set. ``enforcement``: the
    agency is on the enforcement side of the information barrier (always one agency, never a jurisdiction)."""

    agency_id: str | None = None
    jurisdiction: str | None = None
    enforcement: bool = False

    @classmethod
    def of(cls, principal: Principal) -> "Owner":
        if viewer_for(principal) is Viewer.ENFORCEMENT:
            return cls(agency_id=principal.agency_id, enforcement=True)
        if principal.agency_type == COORDINATOR:
            return cls(jurisdiction=principal.jurisdiction)
        return cls(agency_id=principal.agency_id)

    def owns(self, agency_column, jurisdiction_column=None) -> ColumnElement[bool]:
        """SQL: a row of a table belongs to this owner, by the column naming its agency. For a jurisdiction:
        by the table's jurisdiction column, or, where the table has none, by the agencies this service's
        audit log has seen acting from that jurisdiction (an owner has always called the service)."""
        if self.agency_id is not None:
            return agency_column == self.agency_id
        if jurisdiction_column is not None:
            return jurisdiction_column == self.jurisdiction
        return col(agency_column).in_(select(AuditRecord.agency_id)
                                      .where(AuditRecord.jurisdiction == self.jurisdiction).distinct())


# The ids of the objects of one type that a service holds for an owner, as one SELECT of one column.
OwnedIds = Callable[[Owner], Select]
# A service's rule, per object type its audit rows name (what _path_object and note_objects write).
# Object types left out (lists without results, GET /audit) belong to no one but the actor's agency.
AuditScope = Mapping[str, OwnedIds]


def hidden_from_enforcement(scope: AuditScope) -> AuditScope:
    """A scope whose objects an enforcement agency's auditor does not follow: it sees its own staff's entries
    only. For a protection-side service, where even the route another agency used tells of the protection work
    (who received a referral, that notes were written), and wherever others' entries have nothing to tell it."""
    def followed_by_protection_only(owned_ids: OwnedIds) -> OwnedIds:
        def ids(owner: Owner) -> Select:
            return owned_ids(owner).where(false()) if owner.enforcement else owned_ids(owner)
        return ids

    return {object_type: followed_by_protection_only(owned_ids) for object_type, owned_ids in scope.items()}


def visible_to(principal: Principal, scope: AuditScope) -> ColumnElement[bool]:
    """The rows an auditor may read: what its own staff did (the coordinator's auditor: anyone of its
    jurisdiction), and what anyone, of any agency or jurisdiction, did to an object held for its owner.
    One condition with uncorrelated subqueries: the page stays one query."""
    owner = Owner.of(principal)
    if owner.jurisdiction is not None:
        own_staff = AuditRecord.jurisdiction == owner.jurisdiction
    else:
        own_staff = AuditRecord.agency_id == owner.agency_id
    owned = [and_(AuditRecord.object_type == object_type, col(AuditRecord.object_id).in_(owned_ids(owner)))
             for object_type, owned_ids in scope.items()]
    return or_(own_staff, *owned)


# --- the auditors' API -------------------------------------------------------------------------

_WITHHELD = "null for an enforcement agency's auditor when another agency acted (the information barrier)"


class AuditEntry(BaseModel):
    seq: int
    request_id: str
    at: datetime
    agency_id: str | None = ModelField(description=f"The actor's agency; {_WITHHELD}")
    jurisdiction: str
    user_id: str | None = ModelField(description=f"The token's subject; {_WITHHELD}")
    roles: list[str] = ModelField(description="The actor's roles; empty when the agency is withheld")
    action: str
    method: str
    route: str
    object_type: str | None
    object_id: str | None
    purpose: str
    status: int
    trace_id: str | None = ModelField(description=f"The request's trace; {_WITHHELD}")


class AuditPage(BaseModel):
    items: list[AuditEntry]
    next_after: int | None = None


def audit_router(sessions_of, scope: AuditScope | None = None) -> APIRouter:
    """GET /audit; ``scope`` says which objects the service holds for whom (none: staff only)."""
    router = APIRouter(tags=["audit"], dependencies=[Purpose("oversight")])
    scope = dict(scope or {})

    @router.get("/audit", response_model=AuditPage,
                summary="The audit log (auditors only): what your agency's staff did and what anyone did to "
                        "your agency's objects; for the coordinator's auditor, the same for its whole "
                        "jurisdiction. Filters narrow that view; oldest first, paged by `after`")
    async def read_audit_log(
        request: Request, principal: AuditReader,
        object_id: Annotated[str | None, Query(max_length=100, pattern=SINGLE_LINE)] = None,
        object_type: Annotated[str | None, Query(max_length=50, pattern=SINGLE_LINE)] = None,
        agency_id: Annotated[str | None, Query(max_length=100, pattern=SINGLE_LINE)] = None,
        user_id: Annotated[str | None, Query(max_length=200, pattern=SINGLE_LINE)] = None,
        trace_id: Annotated[str | None, Query(pattern=r"^[0-9a-f]{32}$")] = None,
        since: Moment | None = None, until: Moment | None = None,
        after: Annotated[int, Query(ge=0, le=MAX_INT, description="The last seq you have")] = 0,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> AuditPage:
        query = select(AuditRecord).where(AuditRecord.seq > after, visible_to(principal, scope))
        enforcement = Owner.of(principal).enforcement
        if enforcement and (agency_id, user_id, trace_id) != (None, None, None):
            # What it cannot see it cannot search for: no filter tells whether another agency acted.
            query = query.where(AuditRecord.agency_id == principal.agency_id)
        for column, value in ((AuditRecord.object_id, object_id), (AuditRecord.object_type, object_type),
                              (AuditRecord.agency_id, agency_id), (AuditRecord.user_id, user_id),
                              (AuditRecord.trace_id, trace_id)):
            if value is not None:
                query = query.where(column == value)
        if since is not None:
            query = query.where(AuditRecord.at >= as_utc(since))
        if until is not None:
            query = query.where(AuditRecord.at < as_utc(until))
        async with sessions_of(request)() as session:
            rows = (await session.exec(query.order_by(col(AuditRecord.seq)).limit(limit + 1))).all()
        items = [_entry(r, withhold_actor=enforcement and r.agency_id != principal.agency_id)
                 for r in rows[:limit]]
        return AuditPage(items=items, next_after=items[-1].seq if len(rows) > limit else None)

    return router


def _entry(row: AuditRecord, *, withhold_actor: bool) -> AuditEntry:
    data = row.model_dump()
    data["roles"] = [r for r in row.roles.split(",") if r]
    data["at"] = as_utc(row.at)
    if withhold_actor:  # another agency's act on an enforcement agency's object: what, not who
        data.update(agency_id=None, user_id=None, roles=[], trace_id=None)
    return AuditEntry(**data)
