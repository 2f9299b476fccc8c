"""Roles and permissions: one policy table, documented as it is, enforced before a route reads anything."""

import re
from pathlib import Path
from typing import Annotated

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from enlace_platform.access import GRANTS, Allowed, Permission, Role, may, required_permission
from enlace_platform.auth import Principal, current_principal
from enlace_platform.problems import install_problem_handlers

DOC = Path(__file__).resolve().parents[3] / "docs" / "security.md"


def _principal(*roles: str) -> Principal:
    return Principal(subject="u", agency_id="MX-INM", agency_type="migration_authority", jurisdiction="MX",
                     roles=roles)


def test_every_permission_is_granted_to_someone_and_the_auditor_only_reads_the_log():
    assert set(GRANTS) == set(Permission)
    assert all(GRANTS[p] for p in Permission)
    assert [p for p in Permission if Role.AUDITOR in GRANTS[p]] == [Permission.READ_AUDIT]
    assert GRANTS[Permission.READ_AUDIT] == {Role.AUDITOR}


def test_the_irreversible_decisions_are_the_supervisors():
    for permission in (Permission.OVERRIDE_CONSENT, Permission.ORDER_REMOVAL, Permission.ERASE_PERSON):
        assert GRANTS[permission] == {Role.SUPERVISOR}
        assert not may(_principal("caseworker"), permission)


def test_unknown_roles_grant_nothing():
    assert not any(may(_principal("admin", "root", "Supervisor"), p) for p in Permission)


def test_docs_show_the_policy_as_it_is():
    table = DOC.read_text().split("<!-- grants:start -->")[1].split("<!-- grants:end -->")[0]
    rows = [line for line in table.strip().splitlines()[2:]]
    documented = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        permission = re.fullmatch(r"`(.+)`", cells[0]).group(1)
        documented[Permission(permission)] = {role for role, cell in zip(Role, cells[1:5]) if cell == "✓"}
    assert documented == {p: set(r) for p, r in GRANTS.items()}


@pytest.fixture
def client():
    app = FastAPI()
    install_problem_handlers(app)
    held: dict[str, tuple[str, ...]] = {"roles": ()}
    app.dependency_overrides[current_principal] = lambda: _principal(*held["roles"])

    @app.get("/orders")
    async def order(principal: Annotated[Principal, Allowed(Permission.ORDER_REMOVAL)]) -> dict:
        return {"ok": principal.subject}

    with TestClient(app) as http:
        yield http, held, app


def test_a_route_refuses_roles_without_its_permission_with_a_problem(client):
    http, held, _ = client
    held["roles"] = ("caseworker", "auditor")
    refused = http.get("/orders")
    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["permission"] == "removal:order"
    assert "supervisor" in refused.json()["detail"]
    held["roles"] = ("caseworker", "supervisor")
    assert http.get("/orders").json() == {"ok": "u"}


def test_the_permission_of_a_route_is_found_from_the_route_itself(client):
    _, _, app = client
    route = next(r for r in app.routes if isinstance(r, APIRoute) and r.path == "/orders")
    assert required_permission(route.dependant) == Permission.ORDER_REMOVAL
