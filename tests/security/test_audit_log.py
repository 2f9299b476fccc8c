"""The audit log of each service, read as auditors read it: who touched which object, why, with what
outcome and under which trace; visible to the agency's own auditor and the coordinator's, and to the auditor
of the agency whose object it is (test_audit_ownership.py), no one else; append-only in the database file itself."""

import secrets
import sqlite3
import uuid

import pytest

from enlace_platform.access import Role
from enlace_platform.audit import DEFAULT_PURPOSE
from tests.security.probing import read_audit, send_probe
from tests.security.world import SERVICES, World, all_routes

pytestmark = pytest.mark.kafka

# Per service: a read of one of its objects by the agency entitled to it, as (caller, route, path params).
READS = {
    "intake": ("inm", "/cases/{case_id}/persons/{person_id}", {"case_id": "case", "person_id": "mother"}),
    "referral": ("comar", "/referrals/{referral_id}", {"referral_id": "referral"}),
    "notification": ("comar", "/subscriptions/{subscription_id}", {"subscription_id": "subscription"}),
}
READER_ROLE = {"inm": Role.CASEWORKER, "comar": Role.SUPERVISOR}


async def _audit(world: World, service: str, caller: str, **filters) -> list[dict]:
    return await read_audit(world, service, world.tokens.of(caller, Role.AUDITOR), **filters)


@pytest.mark.parametrize("service", list(SERVICES))
async def test_a_read_is_listed_for_the_agencys_auditor_with_actor_route_object_purpose_status_and_trace(
        world: World, service: str, spans):
    caller, route, params = READS[service]
    ids = {name: world.ids[key] for name, key in params.items()}
    user = f"auditee-{uuid.uuid4().hex[:8]}"
    trace_id = secrets.token_hex(16)
    response = await world.client(service).get(
        route.format(**ids), headers={**world.tokens.of(caller, READER_ROLE[caller], subject=user),
                                      "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
    assert response.status_code == 200, response.text

    object_id = list(ids.values())[-1]
    [entry] = await _audit(world, service, caller, object_id=object_id, user_id=user)
    agency_id = world.tokens.agency_of(caller)
    assert (entry["agency_id"], entry["user_id"], entry["roles"]) == (agency_id, user, [READER_ROLE[caller]])
    assert (entry["action"], entry["method"], entry["route"]) == ("read", "GET", route)
    assert (entry["object_id"], entry["status"]) == (object_id, 200)
    assert entry["purpose"] and entry["purpose"] != DEFAULT_PURPOSE, "the route's router declares no Purpose"
    server_spans = [s for s in spans.get_finished_spans() if (s.attributes or {}).get("http.route") == route
                    and format(s.context.trace_id, "032x") == trace_id]
    assert server_spans, "no span of the request"
    assert entry["trace_id"] == format(server_spans[0].context.trace_id, "032x")

    # Another agency's auditor does not see it; the coordinator's auditor sees its jurisdiction, another's not.
    assert [e for e in await _audit(world, service, "comar2", object_id=object_id) if e["user_id"] == user] == []
    assert [e["seq"] for e in await _audit(world, service, "coord", object_id=object_id, user_id=user)] == \
        [entry["seq"]]
    assert await _audit(world, service, "gtcoord", object_id=object_id, user_id=user) == []


@pytest.mark.parametrize("service", list(SERVICES))
async def test_only_auditors_read_the_audit_log(world: World, service: str):
    assert ("GET", "/audit") in {(r.method, r.path) for r in all_routes() if r.service == service}
    for role in sorted(set(Role) - {Role.AUDITOR}):
        response = await world.client(service).get("/audit", headers=world.tokens.of("inm", role))
        assert response.status_code == 403, f"{role}: {response.status_code}"
        assert response.headers["content-type"].startswith("application/problem+json")
    assert (await world.client(service).get("/audit", headers=world.tokens.of("inm", Role.AUDITOR))).status_code == 200


@pytest.mark.parametrize("service", list(SERVICES))
async def test_the_database_refuses_to_change_or_delete_audit_rows(world: World, service: str):
    path = world.data_dir / f"{service}.db"
    # Autocommit, and a patient busy handler: the running service writes to the same file.
    with sqlite3.connect(path, timeout=30, isolation_level=None) as db:
        (before,) = db.execute("SELECT count(*) FROM audit_log").fetchone()
        assert before > 0
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("UPDATE audit_log SET status = 200, agency_id = 'MX-NOBODY'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("DELETE FROM audit_log")
        (after,) = db.execute("SELECT count(*) FROM audit_log").fetchone()
        assert after >= before and db.execute("SELECT count(*) FROM audit_log WHERE agency_id = 'MX-NOBODY'") \
            .fetchone() == (0,)


async def test_a_probe_of_someone_elses_case_is_recorded_for_the_prober_and_the_coordinator(world: World):
    user = f"prober-{uuid.uuid4().hex[:8]}"
    case_id = world.ids["case"]
    response = await world.client("intake").get(f"/cases/{case_id}", headers=world.tokens.of("inm2", subject=user))
    assert response.status_code == 404

    [entry] = await _audit(world, "intake", "inm2", object_id=case_id, user_id=user)
    assert (entry["agency_id"], entry["route"], entry["status"]) == ("MX-INM2", "/cases/{case_id}", 404)
    assert [e["seq"] for e in await _audit(world, "intake", "coord", object_id=case_id, user_id=user)] == [entry["seq"]]
    assert await _audit(world, "intake", "gtcoord", object_id=case_id, user_id=user) == []


@pytest.mark.parametrize("service", list(SERVICES))
async def test_an_auditor_cannot_widen_the_log_with_filters(world: World, service: str):
    for filters in ({"agency_id": "MX-INM"}, {"agency_id": "MX-COMAR"}, {"object_id": world.ids["mother"]}):
        assert {e["agency_id"] for e in await _audit(world, service, "comar2", **filters)} <= {"MX-ASYL2"}
        assert {e["jurisdiction"] for e in await _audit(world, service, "gtcoord", **filters)} <= {"GT"}


@pytest.mark.parametrize("route", [r for r in all_routes() if r.permission is not None], ids=str)
async def test_every_route_records_an_unrelated_agencys_attempt(world: World, route):
    """MX-ASYL2 has no business with any seeded object: whatever it got, its auditor sees the attempt."""
    user = f"attempt-{uuid.uuid4().hex[:8]}"
    probe = await send_probe(world, route, world.tokens.for_permission("comar2", route.permission, subject=user))
    entries = await _audit(world, route.service, "comar2", user_id=user)
    assert entries, f"{route}: {probe.response.status_code} and nothing recorded"
    path_object = probe.params[route.param_names[-1]] if route.param_names else None
    for entry in entries:
        assert (entry["agency_id"], entry["route"], entry["method"]) == ("MX-ASYL2", route.path, route.method)
        assert entry["action"] == ("read" if route.method == "GET" else "write")
        assert entry["status"] == probe.response.status_code
        assert entry["purpose"] != DEFAULT_PURPOSE, f"{route}: its router declares no Purpose"
        assert entry["trace_id"] and entry["at"], f"{route}: no trace id or time"
    if path_object is not None:
        assert path_object in [e["object_id"] for e in entries]


@pytest.mark.parametrize("service", list(SERVICES))
async def test_the_audit_log_holds_ids_and_codes_never_personal_data(world: World, service: str):
    seen, after = 0, 0
    while True:
        response = await world.client(service).get("/audit", params={"after": after, "limit": 500},
                                                   headers=world.tokens.of("coord", Role.AUDITOR))
        assert response.status_code == 200, response.text
        page = response.json()
        assert [s for s in world.secrets if s in response.text] == []
        seen += len(page["items"])
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert seen > 0
