"""Probing a route as a scenario says, and judging what a refusal or a list reveals."""

import inspect
import json
import uuid
from dataclasses import dataclass

import httpx
import pytest

from tests.security.scenarios import BLIND, SCENARIOS, SEES, Scenario
from tests.security.world import RouteInfo, World

PROBLEM_JSON = "application/problem+json"


async def resolve(world: World, spec):
    """A scenario's value: as given, or made from the world (fresh objects are made right now)."""
    if not callable(spec):
        return spec
    value = spec(world)
    return await value if inspect.isawaitable(value) else value


async def params_of(world: World, scenario: Scenario) -> dict[str, str]:
    if callable(scenario.params):
        return await resolve(world, scenario.params)
    return {name: world.directory[key.removeprefix("directory:")] if key.startswith("directory:") else world.ids[key]
            for name, key in scenario.params.items()}


async def call(world: World, route: RouteInfo, headers: dict, params: dict, body, query) -> httpx.Response:
    return await world.client(route.service).request(route.method, route.path.format(**params), headers=headers,
                                                     json=body, params=query)


@dataclass
class Probe:
    """One request of a scenario, with what it asked about."""
    route: RouteInfo
    headers: dict
    params: dict[str, str]
    body: object
    query: dict | None
    response: httpx.Response

    @property
    def asked(self) -> set[str]:
        return set(self.params.values()) | set((self.query or {}).values()) | set(strings_in(self.body))

    async def random_id_twin(self, world: World) -> tuple[dict[str, str], httpx.Response]:
        """The same request about objects that do not exist."""
        fake = {name: str(uuid.uuid4()) for name in self.params}
        return fake, await call(world, self.route, self.headers, fake, self.body, self.query)

    def same_as_twin(self, twin: httpx.Response, fake: dict[str, str]) -> bool:
        return normalised(self.response, list(self.params.values())) == normalised(twin, list(fake.values()))


async def send_probe(world: World, route: RouteInfo, headers: dict) -> Probe:
    scenario = scenario_of(route)
    params = await params_of(world, scenario)
    body = await resolve(world, scenario.body)
    query = await resolve(world, scenario.query)
    return Probe(route, headers, params, body, query, await call(world, route, headers, params, body, query))


def normalised(response: httpx.Response, values: list[str]) -> tuple:
    """A refusal with the ids it was asked about replaced and its instance dropped."""
    text = response.text
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, "<id>")
    try:
        body = json.loads(text)
        if isinstance(body, dict):
            body.pop("instance", None)
    except ValueError:
        body = text
    return response.status_code, response.headers.get("content-type"), body


def leaks(world: World, response: httpx.Response, allowed_ids: set[str]) -> list[str]:
    """Personal data, fields or ids of the seeded objects in a response that must show none of them."""
    text = response.text
    found = [f"secret {s!r}" for s in world.secrets + world.fields if s in text]
    return found + [f"{name} id" for name, value in world.ids.items() if value in text and value not in allowed_ids]


def opened_problems(world: World, response: httpx.Response, expected: str, where: str) -> list[str]:
    """What is wrong with the answer to a call expected to open (SEES or BLIND): not a 200, or a 200 that shows
    none of the seeded objects (SEES) or another agency's data (BLIND)."""
    if response.status_code != 200:
        return [f"{where}: {response.status_code}, expected 200: {response.text[:300]}"]
    if expected == SEES and not any(v in response.text for v in world.ids.values()):
        return [f"{where}: 200 but shows none of the seeded objects"]
    if expected == BLIND and (shown := leaks(world, response, set())):
        return [f"{where}: 200 but shows another agency's data: {shown}"]
    return []


def refusal_problems(world: World, response: httpx.Response, asked: set[str]) -> list[str]:
    problems = []
    if not response.headers.get("content-type", "").startswith(PROBLEM_JSON):
        problems.append(f"not problem+json: {response.headers.get('content-type')}")
    problems += [f"leaks {what}" for what in leaks(world, response, asked)]
    return problems


def scenario_of(route: RouteInfo) -> Scenario:
    scenario = SCENARIOS.get(route.key)
    if scenario is None:
        pytest.fail(f"{route} has no scenario in tests/security/scenarios.py")
    return scenario


def strings_in(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings_in(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    return []


async def read_audit(world: World, service: str, headers: dict, **filters) -> list[dict]:
    """Every entry of a service's audit log an auditor's token may read under these filters, all pages."""
    entries, after = [], 0
    while after is not None:
        response = await world.client(service).get("/audit", headers=headers,
                                                   params={**filters, "after": after, "limit": 500})
        assert response.status_code == 200, response.text
        entries += response.json()["items"]
        after = response.json()["next_after"]
    return entries
