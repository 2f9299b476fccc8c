"""Issue 12: every status an operation answers is declared in its OpenAPI document, and every error is problem+json.

The world's clients record each answer of the session (tests/security/statuses.py): the access matrix's callers,
roles and tokens when it ran first, and here, for every route, the answers to provoke that it may skip: a role
without the permission (403), no token (401), ids that do not exist (404), invalid values (422), a malformed
Content-Length and Idempotency-Key (400), a body past the limit (413) and an agency past its rate (429). Each
status seen must be in that operation's document (the app's own, which the contract test keeps equal to
contracts/openapi/).
"""

import pytest

from enlace_platform.access import GRANTS, Role
from enlace_platform.limits import RequestRates
from tests.security.probing import PROBLEM_JSON, call, resolve, scenario_of, send_probe
from tests.security.scenarios import owner_of
from tests.security.test_access_matrix import PROTECTED, ROUTES
from tests.security.world import RouteInfo, World

TOO_LONG_ID = "x" * 101  # past every id's bound (enlace_platform.limits.MAX_ID_LENGTH)
# Answered by every protected route for what is sent below (422 where it takes any input; every protected route
# has a permission, hence 403).
PROVOKED = {400, 401, 403, 413, 422, 429}


async def _nothing():
    return
    yield


async def _provoke(world: World, route: RouteInfo) -> None:
    scenario = scenario_of(route)
    owner = owner_of(scenario)
    token = world.tokens.for_permission(owner, route.permission)
    client = world.client(route.service)
    path_ids = {name: TOO_LONG_ID for name in route.param_names}
    body = await resolve(world, scenario.body) if route.method != "GET" else None
    without = sorted(set(Role) - GRANTS[route.permission])
    await send_probe(world, route, world.tokens.of(owner, *without[:1]) if without else {"x-role": "none"})
    await send_probe(world, route, {})  # 401
    if route.param_names:
        await call(world, route, token, {n: f"nobody-{n}" for n in route.param_names}, body, None)  # 404
        await call(world, route, token, path_ids, body, None)  # 422: an id past its bound
    if route.method == "GET":
        await call(world, route, token, await _params(world, route), None, _invalid_query(world, route))  # 422
    else:
        await call(world, route, token, await _params(world, route), [], None)  # 422: not an object
    concrete = route.path.format(**(await _params(world, route)))
    for length, _ in (("not-a-number", 400), (str(20 * 1024 * 1024), 413)):
        await client.request(route.method, concrete, headers={**token, "content-length": length,
                                                                "content-type": "application/json"},
                             content=_nothing())
    if route.method == "POST":
        await client.request(route.method, concrete, headers={**token, "Idempotency-Key": " "}, json=body)
    rates = world.apps[route.service].state.request_rates
    world.apps[route.service].state.request_rates = RequestRates("1/hour", "1000/second")  # this agency: 429
    try:
        for _ in range(2):
            await client.request(route.method, concrete, headers=token, json=body)
    finally:
        world.apps[route.service].state.request_rates = rates


def _invalid_query(world: World, route: RouteInfo) -> dict[str, str]:
    """A value out of its bounds for each query parameter the operation declares (its OpenAPI document)."""
    operation = world.apps[route.service].openapi()["paths"][route.path][route.method.lower()]
    query = {}
    for parameter in operation.get("parameters", []):
        if parameter["in"] != "query":
            continue
        options = parameter.get("schema", {}).get("anyOf", [parameter.get("schema", {})])
        kinds = {option.get("type") for option in options}
        enum = any("enum" in option or "$ref" in option for option in options)
        if "integer" in kinds or "number" in kinds or "boolean" in kinds or enum or any(
                "maxLength" in o or "format" in o for o in options):
            query[parameter["name"]] = "9223372036854775808" if "integer" in kinds else "x" * 1001
    return query


async def _params(world: World, route: RouteInfo) -> dict[str, str]:
    """Ids that exist where the route takes ids (the seeded ones, never fresh objects: nothing is changed)."""
    seeded = {"case_id": "case", "person_id": "mother", "consent_id": "consent", "referral_id": "referral",
              "hold_id": "hold", "subscription_id": "subscription", "delivery_id": "delivery"}
    directory = {"agency_id": "agency", "service_id": "service"}
    return {name: world.ids[seeded[name]] if name in seeded else world.directory[directory[name]]
            for name in route.param_names}


@pytest.mark.kafka
async def test_every_status_each_operation_answers_is_declared_and_every_error_is_problem_json(world: World):
    for route in PROTECTED:
        await _provoke(world, route)
    for route in ROUTES:
        await world.client(route.service).request(route.method, route.path, headers={"content-length": "x"})
    undeclared, not_problems, unprovoked = [], [], []
    for route in ROUTES:
        declared = world.apps[route.service].openapi()["paths"][route.path][route.method.lower()]["responses"]
        seen = world.statuses.seen.get(route.key, {})
        undeclared += [f"{route}: {status}" for status in sorted(seen) if str(status) not in declared]
        not_problems += [f"{route}: {status} as {sorted(types)}" for status, types in sorted(seen.items())
                         if status >= 400 and types != {PROBLEM_JSON}]
        if route in PROTECTED:
            operation = world.apps[route.service].openapi()["paths"][route.path][route.method.lower()]
            expected = PROVOKED if operation.get("parameters") or operation.get("requestBody") else PROVOKED - {422}
            unprovoked += [f"{route}: {status}" for status in sorted(expected - set(seen))]
    assert undeclared == [], "answered but not in the operation's OpenAPI document:\n" + "\n".join(undeclared)
    assert not_problems == [], "errors not sent as application/problem+json:\n" + "\n".join(not_problems)
    assert unprovoked == [], "statuses this test failed to provoke:\n" + "\n".join(unprovoked)
