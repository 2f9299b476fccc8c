"""Agency identity: a Bearer JWT names the agency and the user's roles; the directory says what the agency is.

Claims: ``sub`` (user), ``agency`` = {``id``}, ``roles`` (list), plus ``iss``, ``aud``, ``exp`` and ``iat``.
The agency's type, jurisdiction, coordinator and enforcement marks come from the directory
(:class:`enlace_platform.agencies.AgencyRegistry`); ``type`` or ``jurisdiction`` claims in the token are
ignored. In a federation each agency's identity provider mints its own tokens, so a claim is never an authority.

Which issuer may speak for an agency is configuration (``auth_trusted_issuers``): by agency id, else by the
agency's jurisdiction, else ``*``. A token is refused with 401 when its issuer is not configured at all, when
its signature does not verify with that issuer's keys, when the directory does not know its agency, or when
its issuer is not the one trusted for that agency (the last two answer alike: no oracle of the directory).

Key sources: a JWKS URL (production) or a PEM public key file (the development issuer).
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

from enlace_platform.agencies import COORDINATOR, Agency, AgencyRegistry
from enlace_platform.limits import enforce_address_rate, enforce_agency_rate
from enlace_platform.problems import Problem
from enlace_platform.settings import ANY_AGENCY, ServiceSettings, TrustedIssuer

log = logging.getLogger(__name__)

ALGORITHMS = ["ES256", "RS256"]
MAX_SUBJECT_CHARS = 256  # the user id lands in every audit row


@dataclass(frozen=True)
class Principal:
    subject: str
    agency_id: str
    agency_type: str
    jurisdiction: str
    roles: tuple[str, ...]
    enforcement: bool | None = None  # the directory's mark; None: the agency type's default (firewall.py)

    @property
    def coordinator(self) -> bool:
        """The directory's word: a coordinator agency (the token's claims never say so)."""
        return self.agency_type == COORDINATOR


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


class _IssuerKeys:
    """Where one issuer's signing keys come from: its JWKS, or its PEM public key file."""

    def __init__(self, trusted: TrustedIssuer, settings: ServiceSettings, clock: Callable[[], float]) -> None:
        self._pem_path = Path(trusted.public_key_path) if trusted.public_key_path else None
        self._jwks = JwksKeys(
            trusted.jwks_url,
            cache_s=settings.auth_jwks_cache_s,
            refetch_interval_s=settings.auth_jwks_refetch_interval_s,
            clock=clock,
        ) if trusted.jwks_url else None

    def key_for(self, token: str):
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
            return self._pem_path.read_bytes()
        except OSError as exc:
            raise InvalidToken("no development issuer key; run `make token` once") from exc


class TokenVerifier:
    """Verifies a token with its issuer's keys, then takes the agency from the directory."""

    def __init__(self, settings: ServiceSettings, *, agencies: AgencyRegistry,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._audience = settings.auth_audience
        self._agencies = agencies
        self._trusted = settings.trusted_issuers()  # agency id, jurisdiction or "*" -> issuer
        by_issuer: dict[str, TrustedIssuer] = {}
        for trusted in self._trusted.values():
            if by_issuer.setdefault(trusted.issuer, trusted) != trusted:
                raise ValueError(f"issuer {trusted.issuer!r} is configured with two key sources")
        self._keys = {issuer: _IssuerKeys(trusted, settings, clock) for issuer, trusted in by_issuer.items()}

    def issuer_for(self, agency: Agency) -> str | None:
        """The one issuer that may speak for the agency: by its id, else its jurisdiction, else everyone's."""
        trusted = self._trusted.get(agency.id) or self._trusted.get(agency.jurisdiction) \
            or self._trusted.get(ANY_AGENCY)
        return trusted.issuer if trusted else None

    def verify(self, token: str) -> Principal:
        try:
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
            keys = self._keys.get(issuer) if isinstance(issuer, str) else None
            if keys is None:
                raise InvalidToken("its issuer is not trusted here")
            claims = jwt.decode(
                token,
                keys.key_for(token),
                algorithms=ALGORITHMS,
                audience=self._audience,
                issuer=issuer,
                options={"require": ["exp", "iat", "sub", "iss", "aud"], "enforce_minimum_key_length": True},
            )
            agency_id = claims["agency"]["id"]
            if not isinstance(agency_id, str):
                raise InvalidToken("the agency claim names no agency id")
            agency = self._agencies.get(agency_id)
            # One answer for both: which agencies the directory holds is not told to a stranger.
            if agency is None or self.issuer_for(agency) != issuer:
                raise InvalidToken("its agency is not in the directory, or its issuer may not speak for it")
            subject, roles = claims["sub"], claims.get("roles", [])
            if not isinstance(subject, str) or not 0 < len(subject) <= MAX_SUBJECT_CHARS:
                raise InvalidToken(f"sub must be a string of 1 to {MAX_SUBJECT_CHARS} characters")
            if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
                raise InvalidToken("roles must be a list of strings")
            return Principal(
                subject=subject,
                agency_id=agency.id,
                agency_type=agency.type,
                jurisdiction=agency.jurisdiction,
                roles=tuple(roles),
                enforcement=agency.enforcement,
            )
        except KeyError as exc:
            raise InvalidToken(f"missing claim {exc}") from exc
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc) or type(exc).__name__) from exc
        except (TypeError, AttributeError) as exc:  # a claim of the wrong shape; Python's words help nobody
            raise InvalidToken("its claims are not shaped as documented (docs/security.md)") from exc


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
    # After the directory check: keyed only by a verified agency the directory knows, never by a mere claim.
    enforce_agency_rate(request, principal.agency_id)
    request.state.principal = principal  # the audit log names the actor of every request
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
