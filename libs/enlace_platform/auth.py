"""Agency identity: Bearer JWTs whose claims name the agency and the user's roles.

Claims: ``sub`` (user), ``agency`` = {``id``, ``type``, ``jurisdiction``}, ``roles`` (list),
plus ``iss``, ``aud``, ``exp`` and ``iat``. Production verifies against an OIDC JWKS URL
(``ENLACE_AUTH_JWKS_URL``); local runs use the development issuer's public key file.

JWKS mode: the key set is fetched once and used for ``auth_jwks_cache_s``; a token naming a kid the
set does not hold makes one refetch (the IdP has just added a key), but fetches are at least
``auth_jwks_refetch_interval_s`` apart, so random kids cannot make us hammer the IdP. A key the IdP
removed stops verifying once the cached set expires. Each key verifies only its own algorithm.
"""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import jwt
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from enlace_platform.limits import enforce_address_rate, enforce_agency_rate
from enlace_platform.problems import Problem
from enlace_platform.settings import ServiceSettings

log = logging.getLogger(__name__)

ALGORITHMS = ["ES256", "RS256"]


@dataclass(frozen=True)
class Principal:
    subject: str
    agency_id: str
    agency_type: str
    jurisdiction: str
    roles: tuple[str, ...]
    enforcement: bool | None = None  # the directory's mark; None: the agency type's default (firewall.py)


class InvalidToken(Exception):
    pass


class IssuerUnavailable(Exception):
    """The JWKS could not be fetched: our problem, not the caller's token."""


class JwksKeys:
    """The IdP's signing keys by kid: cached, refreshed on expiry, refetched for an unknown kid at most
    once per ``refetch_interval_s`` (a failed fetch counts too: a down IdP is not hammered either)."""

    def __init__(self, url: str, *, cache_s: float, refetch_interval_s: float, timeout_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        # PyJWKClient only fetches here (no redirects, http(s) only); caching is ours. Its per-kid cache
        # never expires, so a key the IdP removed would verify for ever: it stays off.
        self._client = jwt.PyJWKClient(url, cache_keys=False, cache_jwk_set=False, timeout=timeout_s)
        self._cache_s = cache_s
        self._refetch_interval_s = refetch_interval_s
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] | None = None
        self._fetched_at = 0.0  # the last successful fetch
        self._attempted_at: float | None = None  # the last attempt, successful or not
        self._last_fetch_failed = False
        self._lock = threading.Lock()  # one fetch at a time; the others wait for its result

    def key(self, kid: str) -> jwt.PyJWK:
        with self._lock:
            now = self._clock()
            if self._keys is None or now - self._fetched_at >= self._cache_s:
                self._keys = None  # expired: fail closed, nothing stale is trusted past its lifespan
                if self._last_fetch_failed and self._throttled(now):
                    raise IssuerUnavailable("the last fetch of the key set failed; not retried yet")
                self._fetch(now)
            elif kid not in self._keys and not self._throttled(now):
                self._fetch(now)  # perhaps the IdP has just added this key; if that fails, the set stays
            if kid not in self._keys:
                raise InvalidToken(f"no signing key {kid[:100]!r} in the identity provider's key set")
            return self._keys[kid]

    def _throttled(self, now: float) -> bool:
        return self._attempted_at is not None and now - self._attempted_at < self._refetch_interval_s

    def _fetch(self, now: float) -> None:
        self._attempted_at = now
        try:
            data = self._client.fetch_data()
        except (jwt.PyJWKClientError, ValueError) as exc:  # unreachable, not JSON, not an object
            self._last_fetch_failed = True
            raise IssuerUnavailable(str(exc)) from exc
        self._last_fetch_failed = False
        self._keys = self._signing_keys(data)
        self._fetched_at = now

    @staticmethod
    def _signing_keys(data: dict) -> dict[str, jwt.PyJWK]:
        try:
            key_set = jwt.PyJWKSet.from_dict(data)
        except jwt.PyJWKSetError as exc:  # no usable key at all: every token is refused
            log.error("the identity provider's key set holds no usable key: %s", exc)
            return {}
        keys: dict[str, jwt.PyJWK] = {}
        for key in key_set.keys:
            if key.key_id and key.public_key_use in ("sig", None) and key.algorithm_name in ALGORITHMS:
                keys.setdefault(key.key_id, key)  # a repeated kid keeps its first key, as PyJWKClient does
        return keys


class TokenVerifier:
    def __init__(self, settings: ServiceSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._issuer = settings.auth_issuer
        self._audience = settings.auth_audience
        self._dev_key_path = Path(settings.auth_dev_public_key_path)
        self._jwks = JwksKeys(
            settings.auth_jwks_url,
            cache_s=settings.auth_jwks_cache_s,
            refetch_interval_s=settings.auth_jwks_refetch_interval_s,
            clock=clock,
        ) if settings.auth_jwks_url else None

    def _key_for(self, token: str):
        if self._jwks is not None:
            try:
                kid = jwt.get_unverified_header(token).get("kid")
            except jwt.PyJWTError as exc:
                raise InvalidToken(str(exc)) from exc
            if not isinstance(kid, str) or not kid:
                raise InvalidToken("the token names no signing key (kid)")
            # A PyJWK, not the bare key: decode then accepts only that key's own algorithm.
            return self._jwks.key(kid)
        try:
            return self._dev_key_path.read_bytes()
        except OSError as exc:
            raise InvalidToken("no development issuer key; run `make token` once") from exc

    def verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self._key_for(token),
                algorithms=ALGORITHMS,
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "iat", "sub", "iss", "aud"], "enforce_minimum_key_length": True},
            )
            agency = claims["agency"]
            return Principal(
                subject=str(claims["sub"]),
                agency_id=str(agency["id"]),
                agency_type=str(agency["type"]),
                jurisdiction=str(agency["jurisdiction"]),
                roles=tuple(str(r) for r in claims.get("roles", [])),
            )
        except KeyError as exc:
            raise InvalidToken(f"missing claim {exc}") from exc
        except (jwt.PyJWTError, TypeError) as exc:
            raise InvalidToken(str(exc) or type(exc).__name__) from exc


_bearer = HTTPBearer(auto_error=False)


def _unauthorized(detail: str, *, token_given: bool) -> Problem:
    # RFC 6750 §3.1: no error code when the request carried no token at all.
    challenge = 'Bearer error="invalid_token"' if token_given else "Bearer"
    return Problem(401, detail=detail, headers={"WWW-Authenticate": challenge})


async def current_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    if credentials is None:
        raise _unauthorized("A Bearer token is required.", token_given=False)
    verifier: TokenVerifier = request.app.state.token_verifier
    try:
        principal = await run_in_threadpool(verifier.verify, credentials.credentials)
    except InvalidToken as exc:
        enforce_address_rate(request)  # a flood of bad tokens is cut at its address
        raise _unauthorized(f"The token was rejected: {exc}", token_given=True) from exc
    except IssuerUnavailable as exc:
        log.error("identity provider unreachable: %s", exc)
        raise Problem(503, detail="The identity provider's keys cannot be fetched right now.",
                      headers={"Retry-After": "5"}) from exc
    enforce_agency_rate(request, principal.agency_id)  # keyed by what verified, never by a mere claim
    request.state.principal = principal  # the audit log names the actor of every request
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
