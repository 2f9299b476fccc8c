"""Roles within an agency, and the permission each route needs (least privilege).

The token's ``roles`` claim names the user's roles; the agency (``agency`` claim) decides which
objects they may touch, and that object-level check stays in each service. A route declares the
permission it needs with ``Annotated[Principal, Allowed(Permission.X)]``: a caller whose roles do
not grant it gets 403 before anything is read. The security tests find the permission of every
route through ``required_permission`` and probe each role against it.
"""

from enum import StrEnum
from typing import Annotated

from fastapi import Depends

from enlace_platform.auth import CurrentPrincipal, Principal
from enlace_platform.problems import Problem


class Role(StrEnum):
    CASEWORKER = "caseworker"  # registers, screens, refers and works the referrals of its agency
    SUPERVISOR = "supervisor"  # a caseworker who may also take the decisions that cannot be undone
    COORDINATOR = "coordinator"  # staff of the jurisdiction's coordinator: directory, queue, reassignment
    AUDITOR = "auditor"  # reads the audit log, and nothing else


class Permission(StrEnum):
    READ_CASES = "cases:read"
    WRITE_CASES = "cases:write"
    OVERRIDE_CONSENT = "consent:override"
    READ_CONSENTS = "consent:read"
    WITHDRAW_CONSENT = "consent:withdraw"
    ORDER_REMOVAL = "removal:order"
    ERASE_PERSON = "person:erase"
    READ_REFERRALS = "referrals:read"
    ACT_ON_REFERRALS = "referrals:act"
    COORDINATE = "referrals:coordinate"
    READ_DIRECTORY = "directory:read"
    MANAGE_DIRECTORY = "directory:write"
    READ_KPIS = "kpis:read"
    MANAGE_SUBSCRIPTIONS = "subscriptions:manage"
    READ_DELIVERIES = "deliveries:read"
    READ_AUDIT = "audit:read"


_C, _S, _K, _A = Role.CASEWORKER, Role.SUPERVISOR, Role.COORDINATOR, Role.AUDITOR

# The whole policy in one table; docs/security.md shows it and a test keeps the two equal.
GRANTS: dict[Permission, frozenset[Role]] = {
    Permission.READ_CASES: frozenset({_C, _S}),
    Permission.WRITE_CASES: frozenset({_C, _S}),
    Permission.OVERRIDE_CONSENT: frozenset({_S}),
    # Also the coordinator's: a person withdraws consent through it too (intake checks the agency).
    Permission.READ_CONSENTS: frozenset({_C, _S, _K}),
    Permission.WITHDRAW_CONSENT: frozenset({_C, _S, _K}),
    Permission.ORDER_REMOVAL: frozenset({_S}),
    Permission.ERASE_PERSON: frozenset({_S}),
    Permission.READ_REFERRALS: frozenset({_C, _S, _K}),
    Permission.ACT_ON_REFERRALS: frozenset({_C, _S, _K}),
    Permission.COORDINATE: frozenset({_K}),
    Permission.READ_DIRECTORY: frozenset({_C, _S, _K}),
    Permission.MANAGE_DIRECTORY: frozenset({_K}),
    Permission.READ_KPIS: frozenset({_S, _K}),
    Permission.MANAGE_SUBSCRIPTIONS: frozenset({_S}),
    Permission.READ_DELIVERIES: frozenset({_C, _S}),
    Permission.READ_AUDIT: frozenset({_A}),
}


def roles_of(principal: Principal) -> frozenset[Role]:
    """The token's roles that the platform knows; an unknown role grants nothing."""
    known = {r.value for r in Role}
    return frozenset(Role(r) for r in principal.roles if r in known)


def may(principal: Principal, permission: Permission) -> bool:
    return bool(GRANTS[permission] & roles_of(principal))


def check(principal: Principal, permission: Permission) -> None:
    """For a permission that depends on the request body (e.g. a consent override): 403 unless granted."""
    if not may(principal, permission):
        needed = ", ".join(sorted(GRANTS[permission]))
        held = ", ".join(principal.roles) or "none"
        raise Problem(403, detail=f"This needs the permission {permission.value}, held by the role(s) {needed}; "
                                  f"your roles: {held}.", permission=permission.value)


def Allowed(permission: Permission):  # noqa: N802 - reads as a type annotation at the route
    async def allowed(principal: CurrentPrincipal) -> Principal:
        check(principal, permission)
        return principal

    allowed.permission = permission  # type: ignore[attr-defined]  # found by required_permission
    return Depends(allowed)


def required_permission(dependant) -> Permission | None:
    """The permission a route declares through ``Allowed``, looked up in FastAPI's dependency tree."""
    for dep in dependant.dependencies:
        found = getattr(dep.call, "permission", None) or required_permission(dep)
        if found is not None:
            return found
    return None


AuditReader = Annotated[Principal, Allowed(Permission.READ_AUDIT)]
