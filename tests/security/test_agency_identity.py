"""Agency identity is the directory's, never the token's (enlace_platform.auth, docs/security.md).

For every route: a token of a known agency that claims another type and jurisdiction (Mexico's coordinator;
a coordinator claims another country) gets exactly what the directory's type allows, as scenarios.py says for
that agency, never more. Tokens for an agency the directory does not know, and tokens from an issuer that is not
the one trusted for the agency (validly signed with a key pair of its own), are in Tokens.invalid() and get 401 on
every route (test_access_matrix). Here also: the principal each service builds from such a token, seen through
the audit log, names the directory's jurisdiction.
"""

import pytest

from tests.security.probing import opened_problems, refusal_problems, scenario_of, send_probe
from tests.security.scenarios import BLIND, SEES, succeeds
from tests.security.world import CALLERS, PUBLIC_PATHS, RouteInfo, World, all_routes

PROTECTED = [r for r in all_routes() if r.path not in PUBLIC_PATHS]


def _false_claim(caller: str) -> tuple[str, str]:
    """What the caller's token claims to be: Mexico's coordinator, or for a coordinator, another country's."""
    _, agency_type, jurisdiction = CALLERS[caller]
    if agency_type == "coordinator":
        return "coordinator", "GT" if jurisdiction == "MX" else "MX"
    return "coordinator", "MX"


@pytest.mark.kafka
@pytest.mark.parametrize("route", PROTECTED, ids=str)
async def test_a_token_claiming_another_type_gets_what_the_directorys_type_allows(world: World, route: RouteInfo):
    failures = []
    scenario = scenario_of(route)
    # Refusals first, as in the access matrix: a probe that succeeds may change the object for those after it.
    for caller, expected in sorted(scenario.expect.items(), key=lambda item: succeeds(item[1])):
        claim = _false_claim(caller)
        probe = await send_probe(world, route, world.tokens.claiming(caller, route.permission, *claim))
        response, got = probe.response, probe.response.status_code
        where = f"{caller} ({CALLERS[caller][0]}) claiming {claim}"
        if expected in (SEES, BLIND):
            failures += opened_problems(world, response, expected, where)
            continue
        if got != expected:
            failures.append(f"{where}: {got}, expected {expected} as for its honest token: {response.text[:300]}")
        elif got in (403, 404):
            failures += [f"{where}: {p}" for p in refusal_problems(world, response, probe.asked)]
    assert failures == [], f"{route}:\n" + "\n".join(failures)


@pytest.mark.kafka
async def test_the_audit_log_names_the_directorys_jurisdiction_not_the_claimed_one(world: World):
    """GT-IGM's token claims to be Mexico's coordinator; the audit row of its request says GT, migration
    authority's staff, as the directory does."""
    headers = world.tokens.claiming("gt", None, "coordinator", "MX")
    r = await world.client("intake").get("/cases", headers=headers)
    assert r.status_code == 200, r.text
    auditor = world.tokens.of("gtcoord", "auditor")
    rows = (await world.client("intake").get("/audit", headers=auditor, params={"agency_id": "GT-IGM"})).json()
    items = rows["items"] if isinstance(rows, dict) else rows
    assert items and {row["jurisdiction"] for row in items} == {"GT"}, items
