"""Agency identity: Bearer JWTs whose claims name the agency and the user's roles.

Claims: ``sub`` (user), ``agency`` = {``id``, ``type``, ``jurisdiction``}, ``roles`` (list),
plus ``iss``, ``aud``, ``exp`` and ``iat``. Production verifies against an OIDC JWKS URL
(``ENLACE_AUTH_JWKS_URL``); local runs use the development issuer's public key file.
"""

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated

import jwt
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

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


class InvalidToken(Exception):
    pass


class IssuerUnavailable(Exception):
    """The JWKS could not be fetched: our problem, not the caller's token."""


class TokenVerifier:
    def __init__(self, settings: ServiceSettings) -> None:
        self._jwks_url = settings.auth_jwks_url
        self._issuer = settings.auth_issuer
        self._audience = settings.auth_audience
        self._dev_key_path = Path(settings.auth_dev_public_key_path)

    @cached_property
    def _jwks(self) -> jwt.PyJWKClient:
        return jwt.PyJWKClient(self._jwks_url, cache_keys=True, lifespan=300, timeout=5)

    def _key_for(self, token: str):
        if self._jwks_url:
            try:
                return self._jwks.get_signing_key_from_jwt(token).key
            except jwt.PyJWKClientConnectionError as exc:
                raise IssuerUnavailable(str(exc)) from exc
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
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
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
        raise _unauthorized(f"The token was rejected: {exc}", token_given=True) from exc
    except IssuerUnavailable as exc:
        log.error("identity provider unreachable: %s", exc)
        raise Problem(503, detail="The identity provider's keys cannot be fetched right now.",
                      headers={"Retry-After": "5"}) from exc
    request.state.principal = principal  # the audit log names the actor of every request
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
