"""Each service's audit scope (adapters/audit_scope.py) covers every object type its audit rows can name with
an id, and nothing else; and its SQL runs on the service's own schema for both kinds of owner. No broker."""

import ast
from pathlib import Path

import pytest
from sqlmodel import select

from enlace_platform.audit import AuditRecord, Owner, _path_object, visible_to
from enlace_platform.auth import Principal
from enlace_platform.db import create_tables, make_engine
from enlace_platform.migrations import service_tables
from intake.adapters import audit_scope as intake_scope
from intake.adapters.orm import TABLES as INTAKE_TABLES
from notification.adapters import audit_scope as notification_scope
from notification.adapters.orm import TABLES as NOTIFICATION_TABLES
from referral.adapters import audit_scope as referral_scope
from referral.adapters.orm import TABLES as REFERRAL_TABLES
from tests.security.world import SERVICES, all_routes
from tests.support.harness import REPO

SCOPES = {"intake": (intake_scope.AUDIT_SCOPE, INTAKE_TABLES),
          "referral": (referral_scope.AUDIT_SCOPE, REFERRAL_TABLES),
          "notification": (notification_scope.AUDIT_SCOPE, NOTIFICATION_TABLES)}


def noted_object_types(service: str) -> set[str]:
    """The object types the service's code passes to note_objects (always a literal)."""
    found = set()
    for source in (REPO / "services" / service / service).rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            called = getattr(node.func, "id", getattr(node.func, "attr", None)) if isinstance(node, ast.Call) else None
            if called == "note_objects":
                object_type = node.args[1]
                assert isinstance(object_type, ast.Constant), f"{source}: note_objects with a computed object type"
                found.add(object_type.value)
    return found


def path_object_types(service: str) -> set[str]:
    """The object types the middleware derives from the routes' last path parameter."""
    return {_path_object(r.path, {})[0] for r in all_routes() if r.service == service and r.param_names}


@pytest.mark.parametrize("service", list(SERVICES))
def test_the_scope_names_every_object_type_the_audit_rows_name(service: str):
    scope, _ = SCOPES[service]
    assert set(scope) == noted_object_types(service) | path_object_types(service)


@pytest.mark.parametrize("service", list(SERVICES))
async def test_the_scope_runs_on_the_services_schema_for_an_agency_and_a_jurisdiction(service: str, tmp_path: Path):
    scope, tables = SCOPES[service]
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'scope.db'}")
    try:
        await create_tables(engine, service_tables(tables))
        async with engine.connect() as conn:
            for owner in (Owner(agency_id="MX-INM"), Owner(jurisdiction="MX"),
                          Owner(agency_id="MX-INM", enforcement=True)):
                for object_type, owned_ids in scope.items():
                    assert (await conn.execute(owned_ids(owner))).all() == [], (object_type, owner)
            for agency_type in ("migration_authority", "coordinator", "asylum_office"):
                auditor = Principal(subject="a", agency_id="MX-X", agency_type=agency_type, jurisdiction="MX",
                                    roles=("auditor",))
                assert (await conn.execute(select(AuditRecord).where(visible_to(auditor, scope)))).all() == []
    finally:
        await engine.dispose()
