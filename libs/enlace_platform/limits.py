"""Hardening of every entry point: bounded request values, bounded bodies, request rates, and access lines
without query strings.

* **Bounds.** The types below bound the integers, ids and datetimes of paths, queries and bodies, so that
  nothing out of range reaches a database: PostgreSQL's ``integer`` is 32 bits, it refuses NUL in text, and
  it cannot store a moment whose conversion to UTC leaves year 1..9999. Out of range is a 422 like any
  other invalid input.
* **Bodies.** A body larger than ``max_request_body_bytes`` is refused with 413 before it is read: at once
  when its Content-Length says so, else (a chunked body) as soon as the bytes received pass the limit.
* **Rates** (the ``limits`` library: moving windows in this process's memory, so each replica counts its
  own). A request whose token verified is charged to its agency, once verification has decided (the token
  says which agency, but only a verified one is believed); every other request to its client address: up
  front when it carries no Bearer token, when its token is refused, or, for a route that verifies nothing,
  as its answer starts. Past a limit: 429 problem+json with Retry-After, before the route does anything.
* **Access lines** (``log_access``): method, route template and status; never the URL, whose query string
  can carry search terms. uvicorn's own access logger, which writes the URL, stays off (telemetry).
"""

import ipaddress
import json
import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Annotated

from fastapi import FastAPI, Path, Query, Request
from limits import parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from pydantic import Field
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from enlace_platform.problems import PROBLEM_JSON, Problem
from enlace_platform.settings import ServiceSettings

access_log = logging.getLogger("enlace.access")

# --- bounds of request values ------------------------------------------------------------------------

# PostgreSQL's integer, the narrowest integer column of any service: counts, versions, cursors, offsets.
MAX_INT = 2**31 - 1
MAX_ID_LENGTH = 100
# One line of text, no control characters: PostgreSQL refuses NUL in text, and ids and names are one line.
SINGLE_LINE = r"^[^\x00-\x1f\x7f]*$"
_SINGLE_LINE_NONEMPTY = r"^[^\x00-\x1f\x7f]+$"

# An id (or a code) in a path, as an optional query filter, in a body.
IdPath = Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH, pattern=_SINGLE_LINE_NONEMPTY)]
IdQuery = Annotated[str | None, Query(max_length=MAX_ID_LENGTH, pattern=SINGLE_LINE)]
Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=_SINGLE_LINE_NONEMPTY)]
# A moment any database stores and converts to UTC, whatever its offset.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
Moment = Annotated[datetime, Field(ge=EARLIEST, le=LATEST)]


# --- answers sent before the app runs ------------------------------------------------------------------

async def _send_problem(scope: Scope, send: Send, status: int, detail: str,
                        headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """A problem document as problems.problem_response renders it, from a pure ASGI middleware."""
    body = json.dumps({"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status,
                       "instance": scope.get("path", ""), "detail": detail}, separators=(",", ":")).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return value
    return None


# --- request bodies ----------------------------------------------------------------------------------------

class BodySizeLimit:
    """Pure ASGI: 413 for a body past ``max_bytes``, before the app reads it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None:
            length = int(declared) if declared.strip().isdigit() else None
            if length is None:
                await _send_problem(scope, send, 400, "Content-Length is not a number of bytes.")
                return
            if length > self.max_bytes:
                await _send_problem(scope, send, 413, self._too_large())
                return
        received = 0

        async def counting_receive() -> Message:
            # A chunked body (or one longer than it said) stops at the limit: the route's read fails with 413,
            # rendered as problem+json by the app's handlers, and the rest is never read.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, detail=self._too_large())
            return message

        await self.app(scope, counting_receive, send)

    def _too_large(self) -> str:
        return f"The request body exceeds {self.max_bytes} bytes, the most this service accepts."


# --- request rates -----------------------------------------------------------------------------------------

_CHARGED = "rate_limit_charged"  # in the request's state: this request was counted already


class RequestRates:
    """Moving-window limits per agency and per client address; ``charge_*`` count one request and return
    the seconds to wait when it is past a limit (None: go ahead)."""

    # How often keys idle for longer than their longest window are dropped: the in-memory storage keeps an
    # (empty) entry for every key it ever saw, and walks them all every 10 ms while requests come in.
    SWEEP_INTERVAL_S = 30.0

    def __init__(self, per_agency: str, per_address: str) -> None:
        self._items = {"agency": parse_many(per_agency) if per_agency.strip() else [],
                       "address": parse_many(per_address) if per_address.strip() else []}
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._last_charged: dict[tuple[str, str], float] = {}
        self._swept_at = time.monotonic()

    def charge_agency(self, agency_id: str) -> int | None:
        return self._charge("agency", agency_id)

    def charge_address(self, address: str) -> int | None:
        return self._charge("address", _address_key(address))

    def _charge(self, kind: str, key: str) -> int | None:
        items = self._items[kind]
        if not items:
            return None
        now = time.monotonic()
        self._last_charged[kind, key] = now
        if now - self._swept_at > self.SWEEP_INTERVAL_S:
            self._sweep(now)
        refused = [item for item in items if not self._limiter.hit(item, kind, key)]
        if not refused:
            return None
        wall = time.time()
        return max(1, *(math.ceil(self._limiter.get_window_stats(item, kind, key).reset_time - wall)
                        for item in refused))

    def _sweep(self, now: float) -> None:
        self._swept_at = now
        longest = {kind: max((item.get_expiry() for item in items), default=0) for kind, items in self._items.items()}
        for (kind, key), charged_at in list(self._last_charged.items()):
            if now - charged_at > longest[kind]:  # every hit of it has expired: nothing is lost
                for item in self._items[kind]:
                    self._limiter.clear(item, kind, key)
                del self._last_charged[kind, key]


def _address_key(address: str) -> str:
    """An IPv6 client counts by its /64, the network one host is given: it could change address for every
    request within it."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 4:
        return str(ip)
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.ip_network(f"{ip}/64", strict=False))


def _client_address(scope: Scope) -> str:
    # Behind a proxy, uvicorn's --proxy-headers (with --forwarded-allow-ips) puts the caller's address here.
    client = scope.get("client")
    return client[0] if client else "unknown"


def _has_bearer_token(scope: Scope) -> bool:
    """As fastapi's HTTPBearer reads the header: scheme Bearer and a non-empty credential."""
    value = _header(scope, b"authorization")
    if not value:
        return False
    scheme, _, credentials = value.decode("latin-1").strip().partition(" ")
    return scheme.lower() == "bearer" and bool(credentials.strip())


def _retry_after(seconds: int) -> dict[str, str]:
    return {"Retry-After": str(seconds)}


def _too_many(seconds: int, whose: str) -> str:
    return f"Too many requests {whose}; try again in {seconds} s."


# Liveness answers from memory and is polled by orchestrators: never refused, so a flood elsewhere from the
# same address (a load balancer's) cannot get a healthy replica restarted.
UNLIMITED_PATHS = frozenset({"/healthz"})


class RateLimit:
    """Pure ASGI: charges the requests that no verified token speaks for to their client address.

    A request without a Bearer token is charged, and refused past the limit, before anything runs. A
    request with one is charged by the auth dependency (:func:`enforce_agency_rate`,
    :func:`enforce_address_rate`) once verification has decided; if no route verified it (a public or an
    unknown path), it is charged here as its answer starts, and counts against the address's next requests."""

    def __init__(self, app: ASGIApp, rates: RequestRates) -> None:
        self.app = app
        self.rates = rates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        address = _client_address(scope)
        if not _has_bearer_token(scope):
            wait_s = self.rates.charge_address(address)
            if wait_s is not None:
                await _send_problem(scope, send, 429, _too_many(wait_s, "from your address"),
                                    [(b"retry-after", str(wait_s).encode())])
                return
            scope.setdefault("state", {})[_CHARGED] = True

        async def charge_unverified(message: Message) -> None:
            if message["type"] == "http.response.start" and not (scope.get("state") or {}).get(_CHARGED):
                self.rates.charge_address(address)
            await send(message)

        await self.app(scope, receive, charge_unverified)


def enforce_agency_rate(request: Request, agency_id: str) -> None:
    """For the auth dependency, once the token verified: charge its agency; 429 past the agency's limit."""
    _enforce(request, lambda rates: rates.charge_agency(agency_id), "for your agency")


def enforce_address_rate(request: Request) -> None:
    """For the auth dependency, when the token was refused: charge the client address; 429 past its limit
    (the caller then learns nothing more about its token)."""
    _enforce(request, lambda rates: rates.charge_address(_client_address(request.scope)), "from your address")


def _enforce(request: Request, charge: Callable[[RequestRates], int | None], whose: str) -> None:
    rates = getattr(request.app.state, "request_rates", None)  # None: an app without install_entry_limits
    if rates is None:
        return
    setattr(request.state, _CHARGED, True)  # the middleware then does not charge the address again
    wait_s = charge(rates)
    if wait_s is not None:
        raise Problem(429, detail=_too_many(wait_s, whose), headers=_retry_after(wait_s))


# --- access lines -----------------------------------------------------------------------------------------

class AccessLog:
    """Pure ASGI: one line per request with its method, route template (the path when no route matched)
    and status, and how long it took; never the URL's query string."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def log_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")
                access_log.info("%s %s %d %.1f ms", scope["method"], getattr(route, "path", scope.get("path", "")),
                                message["status"], (time.perf_counter() - started) * 1000)
            await send(message)

        await self.app(scope, receive, log_status)


def install_entry_limits(app: FastAPI, settings: ServiceSettings) -> None:
    """Outermost of the app's own middleware: the body limit, within the rate limit, within the access log."""
    app.state.request_rates = RequestRates(settings.rate_limit_per_agency, settings.rate_limit_per_address)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_body_bytes)
    app.add_middleware(RateLimit, rates=app.state.request_rates)
    if settings.log_access:
        app.add_middleware(AccessLog)
