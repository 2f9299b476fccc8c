"""Object-level authorization over every route of the three services, generated from the routes themselves.

Each protected route is tried by the owning agency, the referral's addressee, unrelated agencies of the
same type, another jurisdiction's agency and coordinator, and the coordinator (scenarios.py says what each
must get); by every role that lacks the route's permission (403); and without a valid token (401). What a
refusal says is checked too: no personal data, no other object's id, and a 404 for someone else's object
equal to the 404 for an id that does not exist.
"""

import uuid

import pytest

from enlace_platform.access import GRANTS, Permission, Role
from tests.security.probing import (
    call, leaks, normalised, opened_problems, refusal_problems, resolve, scenario_of, send_probe, strings_in,
)
from tests.security.scenarios import BLIND, SCENARIOS, SEES, Scenario, owner_of, succeeds
from tests.security.world import (
    CALLERS, DOCS_PATHS, MOTHER, PUBLIC_PATHS, SERVICES, RouteInfo, World, all_routes, non_api_paths, routes_of,
)
from tests.support.database_support import BACKENDS, SQLITE

ROUTES = all_routes()


@pytest.fixture(scope="module", params=BACKENDS)
def world(request, world: World) -> World:
    """The whole matrix on each database the services run on (issue 12): the same world on SQLite, then on
    PostgreSQL. Only this module takes both; the other security tests use the SQLite world."""
    return world if request.param == SQLITE else request.getfixturevalue("postgres_world")
PROTECTED = [r for r in ROUTES if r.path not in PUBLIC_PATHS]
MOTHER_DOCUMENT = MOTHER["documents"][0]["number"]


# --- the guard: the matrix covers every route, and every route declares its permission ---------------

def test_every_route_has_a_scenario_and_every_scenario_a_route():
    keys = {r.key for r in PROTECTED}
    assert [str(r) for r in PROTECTED if r.key not in SCENARIOS] == [], "routes without a scenario in scenarios.py"
    assert sorted(k for k in SCENARIOS if k not in keys) == [], "scenarios of routes that do not exist"


def test_every_route_declares_one_permission_except_the_public_ones():
    assert [str(r) for r in PROTECTED if r.permission is None] == [], "routes without Allowed(Permission.X)"
    assert [str(r) for r in ROUTES if r.path in PUBLIC_PATHS and r.permission is not None] == []
    assert {(r.service, r.path) for r in ROUTES if r.path in PUBLIC_PATHS} == \
        {(s, p) for s in SERVICES for p in PUBLIC_PATHS}


@pytest.mark.kafka
async def test_the_running_apps_have_exactly_the_routes_probed_besides_their_docs(world: World):
    running = {r.key for name, app in world.apps.items() for r in routes_of(name, app)}
    assert running == {r.key for r in ROUTES}
    assert {name: non_api_paths(app) - DOCS_PATHS for name, app in world.apps.items()} == \
        {name: set() for name in world.apps}, "a route that is not an APIRoute escapes the matrix"


# --- probing ------------------------------------------------------------------------------------------

def _ordered(scenario: Scenario) -> list[tuple[str, int | str]]:
    # Refusals first: a probe that succeeds may change the object (receive, delete) for those after it.
    return sorted(scenario.expect.items(), key=lambda item: succeeds(item[1]))


@pytest.mark.kafka
@pytest.mark.parametrize("route", PROTECTED, ids=str)
async def test_each_agency_gets_what_its_relation_to_the_object_allows(world: World, route: RouteInfo):
    failures = []
    for caller, expected in _ordered(scenario_of(route)):
        probe = await send_probe(world, route, world.tokens.for_permission(caller, route.permission))
        response, got, where = probe.response, probe.response.status_code, f"{caller} ({CALLERS[caller][0]})"
        if expected in (SEES, BLIND):
            failures += opened_problems(world, response, expected, where)
            continue
        if got != expected:
            failures.append(f"{where}: {got}, expected {expected}: {response.text[:300]}")
            continue
        if got in (403, 404):
            failures += [f"{where}: {p}" for p in refusal_problems(world, response, probe.asked)]
        elif got >= 400:
            failures += [f"{where}: leaks secret {s!r}" for s in world.secrets if s in response.text]
        if got == 404 and probe.params:
            fake, twin = await probe.random_id_twin(world)
            if not probe.same_as_twin(twin, fake):
                failures.append(f"{where}: its 404 differs from the 404 for a random id:\n  {response.text}\n"
                                f"  {twin.text}")
    assert failures == [], f"{route}:\n" + "\n".join(failures)


@pytest.mark.kafka
@pytest.mark.parametrize("route", PROTECTED, ids=str)
async def test_every_role_without_the_routes_permission_gets_403_before_anything_is_read(world: World,
                                                                                          route: RouteInfo):
    if route.permission is None:
        pytest.fail(f"{route} declares no permission")
    owner = owner_of(scenario_of(route))
    failures = []
    for role in [*sorted(set(Role) - GRANTS[route.permission]), "administrator"]:  # an unknown role grants nothing
        probe = await send_probe(world, route, world.tokens.of(owner, role))
        response, where = probe.response, f"{owner} ({CALLERS[owner][0]}) as {role}"
        if response.status_code != 403:
            failures.append(f"{where}: {response.status_code}, expected 403: {response.text[:300]}")
            continue
        failures += [f"{where}: {p}" for p in refusal_problems(world, response, probe.asked)]
        if response.json().get("permission") != route.permission.value:
            failures.append(f"{where}: the 403 does not name the permission {route.permission.value}")
        if probe.params:
            fake, twin = await probe.random_id_twin(world)
            if not probe.same_as_twin(twin, fake):
                failures.append(f"{where}: its 403 differs from the one for a random id: the object was looked up")
    assert failures == [], f"{route}:\n" + "\n".join(failures)


@pytest.mark.kafka
@pytest.mark.parametrize("route", PROTECTED, ids=str)
async def test_no_token_an_expired_token_or_a_foreign_signature_gets_401(world: World, route: RouteInfo):
    failures = []
    for kind, headers in world.tokens.invalid().items():
        probe = await send_probe(world, route, headers)
        if probe.response.status_code != 401:
            failures.append(f"{kind}: {probe.response.status_code}, expected 401: {probe.response.text[:300]}")
            continue
        failures += [f"{kind}: {p}" for p in refusal_problems(world, probe.response, probe.asked)]
        challenge = probe.response.headers.get("www-authenticate", "")
        if not challenge.startswith("Bearer"):
            failures.append(f"{kind}: WWW-Authenticate is {challenge!r}")
    assert failures == [], f"{route}:\n" + "\n".join(failures)


@pytest.mark.kafka
async def test_the_addressee_reads_only_the_person_its_referral_is_about(world: World):
    comar = world.tokens.of("comar")
    intake = world.client("intake")
    mother = await intake.get(f"/cases/{world.ids['case']}/persons/{world.ids['mother']}", headers=comar)
    assert mother.status_code == 200
    son = await intake.get(f"/cases/{world.ids['case']}/persons/{world.ids['son']}", headers=comar)
    nobody = await intake.get(f"/cases/{world.ids['case']}/persons/{uuid.uuid4()}", headers=comar)
    assert son.status_code == 404
    assert refusal_problems(world, son, {world.ids["case"], world.ids["son"]}) == []
    assert normalised(son, [world.ids["son"]]) == normalised(nobody, [nobody.url.path.rsplit("/", 1)[-1]])


@pytest.mark.kafka
@pytest.mark.parametrize("service", list(SERVICES))
async def test_health_readiness_and_metrics_are_public_and_metrics_name_nobody(world: World, service: str):
    client = world.client(service)
    for path in sorted(PUBLIC_PATHS):
        response = await client.get(path)
        assert response.status_code == 200, f"{service} {path}: {response.status_code} {response.text[:200]}"
    metrics = (await client.get("/metrics")).text
    assert [s for s in world.secrets if s in metrics] == []
    assert [name for name, value in world.ids.items() if value in metrics] == []


@pytest.mark.kafka
async def test_only_the_registering_agency_finds_a_person_by_document_number(world: World):
    document = {"document_number": MOTHER_DOCUMENT}
    for caller in CALLERS:
        response = await world.client("intake").post("/cases/search", json=document,
                                                     headers=world.tokens.for_permission(caller, Permission.READ_CASES))
        assert response.status_code == 200, f"{caller}: {response.text}"
        found = world.ids["case"] in response.text
        assert found == (caller == "inm"), f"{caller} {'found' if found else 'did not find'} the mother"
        if caller != "inm":
            assert leaks(world, response, set()) == [], caller


# Routes that take a person (in the path or, for a screening, in the body) within a case.
PERSON_ROUTES = [r for r in PROTECTED if r.service == "intake"
                 and ("{person_id}" in r.path or r.key == ("intake", "POST", "/cases/{case_id}/screenings"))]


@pytest.fixture(scope="module")
async def case_of_inm2(world: World) -> str:
    response = await world.client("intake").post("/cases", json=world.probe_case(),
                                                  headers=world.tokens.of("inm2"))
    assert response.status_code == 201, response.text
    return response.json()["id"]


@pytest.mark.kafka
@pytest.mark.parametrize("route", PERSON_ROUTES, ids=str)
async def test_someone_elses_person_under_your_own_case_is_not_found(world: World, route: RouteInfo,
                                                                      case_of_inm2: str):
    params = {"case_id": case_of_inm2, "person_id": world.ids["mother"], "consent_id": world.ids["consent"]}
    params = {name: params[name] for name in route.param_names}
    body = await resolve(world, scenario_of(route).body)
    if isinstance(body, dict) and "person_id" in body:
        body = {**body, "person_id": world.ids["mother"]}
    response = await call(world, route, world.tokens.for_permission("inm2", route.permission), params, body, None)
    assert response.status_code == 404, response.text
    assert refusal_problems(world, response, set(params.values()) | set(strings_in(body))) == []


@pytest.mark.kafka
async def test_permissions_that_depend_on_the_body_are_refused_to_roles_without_them(world: World):
    son = f"/cases/{world.ids['case']}/persons/{world.ids['son']}/consents"
    override = {"recipient_agency_type": "child_protection", "purpose": "referral", "basis": "mandatory_override",
                "reason": "Niño acompañado: prueba de permisos"}
    refused = await world.client("intake").post(son, json=override, headers=world.tokens.of("inm", Role.CASEWORKER))
    assert (refused.status_code, refused.json().get("permission")) == (403, Permission.OVERRIDE_CONSENT.value)

    reassign = {"action": "reassign", "to_service_id": "MX-COMAR-1"}
    for roles in ([Role.CASEWORKER], [Role.SUPERVISOR]):  # the coordinator's own staff, without the role
        refused = await world.client("referral").post(f"/referrals/{world.ids['referral']}/actions", json=reassign,
                                                      headers=world.tokens.of("coord", *roles))
        assert refused.status_code == 403, f"{roles}: {refused.text}"


@pytest.mark.kafka
async def test_a_manual_referral_for_a_person_not_yours_to_refer_answers_as_for_nobody(world: World):
    """Issue 12: ids learnt from case.registered.v1 open nothing. Known or unknown, the same 404 (no oracle), and
    nothing reaches intake: the Guatemalan agency still reads nothing of the son."""
    referral, ids = world.client("referral"), world.ids
    son = {"case_id": ids["case"], "person_id": ids["son"], "need_code": "UNACCOMPANIED_CHILD",
           "age_band": "12-17", "languages": ["es"]}
    for caller in ("comar", "inm2", "comar2", "gt", "gtcoord"):
        headers = world.tokens.for_permission(caller, Permission.ACT_ON_REFERRALS)
        known = await referral.post("/referrals", headers=headers, json=son)
        fake = {**son, "case_id": str(uuid.uuid4()), "person_id": str(uuid.uuid4())}
        nobody = await referral.post("/referrals", headers=headers, json=fake)
        assert known.status_code == 404, f"{caller}: {known.text}"
        assert refusal_problems(world, known, {ids["case"], ids["son"]}) == [], caller
        assert normalised(known, [ids["case"], ids["son"]]) == normalised(nobody, [fake["case_id"],
                                                                                   fake["person_id"]]), caller
    read = await world.client("intake").get(f"/cases/{ids['case']}/persons/{ids['son']}",
                                            headers=world.tokens.of("gt"))
    assert read.status_code == 404 and refusal_problems(world, read, {ids["case"], ids["son"]}) == []
