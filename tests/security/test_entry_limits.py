"""Every entry point holds: values out of range are a 422 problem (never a 5xx, never a database error), a body
past the limit is refused with 413 before it is read, floods get 429 with Retry-After (per verified agency, and
per client address for whatever no verified token speaks for), and no request line with its query string is
logged (enlace_platform.limits).

Bounds are probed on the shared world; bodies, rates and logs on the three apps served by a real uvicorn, as
deploy/services.sh runs them, with small rate limits (also reached in-process, from client addresses of their own).
"""

import asyncio
import logging
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
import pytest
import uvicorn

from enlace_platform.access import Role
from enlace_platform.limits import MAX_INT
from intake.config import IntakeSettings
from intake.entrypoints.app import create_app as intake_app
from notification.config import NotificationSettings
from notification.entrypoints.app import create_app as notification_app
from referral.config import ReferralSettings
from referral.entrypoints.app import create_app as referral_app
from tests.security.probing import PROBLEM_JSON, scenario_of
from tests.security.scenarios import owner_of
from tests.security.world import DIRECTORY_SEED, SERVICES, RouteInfo, Tokens, World, all_routes
from tests.support.harness import fast_settings, free_port, provision_topics, unique_prefix, uvicorn_serving

pytestmark = pytest.mark.kafka

OUT_OF_RANGE = [2**63, 2**31, -1, -(2**63) - 1]
MIB = 1024 * 1024


def _problem(response: httpx.Response, status: int) -> list[str]:
    found = []
    if response.status_code != status:
        found.append(f"{response.status_code}, expected {status}: {response.text[:300]}")
    if not response.headers.get("content-type", "").startswith(PROBLEM_JSON):
        found.append(f"not problem+json: {response.headers.get('content-type')}")
    return found


def _names(response: httpx.Response, path: str) -> bool:
    return any(e.get("path") == path for e in response.json().get("errors") or [])


# --- integers --------------------------------------------------------------------------------------------

def _case_with(**person) -> dict:
    return {**World.probe_case(), "persons": [{**World.probe_case()["persons"][0], **person}]}


def _family_with(**relationship) -> dict:
    persons = [World.probe_case()["persons"][0], {**World.probe_case()["persons"][0], "estimated_age": 6}]
    return {**World.probe_case(), "persons": persons,
            "relationships": [{"from_person": 0, "to_person": 1, "kind": "parent", **relationship}]}


def _service_with(**fields) -> Callable[[World], dict]:
    return lambda w: {**World.service_body(w.directory["agency"]), **fields}


def _service_update_with(**fields) -> Callable[[World], dict]:
    return lambda w: {**{k: v for k, v in World.service_body("").items() if k not in ("agency_id", "area")},
                      **fields}


AUDITOR = ("inm", Role.AUDITOR)
COORDINATOR = ("coord", Role.COORDINATOR)

# (service, method, path, path params (world ids), caller, the field as errors[].path names it, request for a value)
INTEGER_FIELDS = [
    ("intake", "GET", "/cases", {}, ("inm",), "query/limit", lambda v: {"params": {"limit": v}}),
    ("intake", "POST", "/cases/search", {}, ("inm",), "body/limit",
     lambda v: {"json": {"name": "Probe", "limit": v}}),
    ("intake", "POST", "/cases", {}, ("inm",), "body/persons/0/estimated_age",
     lambda v: {"json": _case_with(estimated_age=v)}),
    ("intake", "POST", "/cases", {}, ("inm",), "body/relationships/0/from_person",
     lambda v: {"json": _family_with(from_person=v)}),
    ("intake", "POST", "/cases", {}, ("inm",), "body/relationships/0/to_person",
     lambda v: {"json": _family_with(to_person=v)}),
    ("intake", "PATCH", "/cases/{case_id}/persons/{person_id}", {"case_id": "case", "person_id": "mother"},
     ("inm",), "body/estimated_age", lambda v: {"json": {"estimated_age": v}}),
    ("referral", "GET", "/referrals", {}, ("inm",), "query/limit", lambda v: {"params": {"limit": v}}),
    ("referral", "GET", "/referrals", {}, ("inm",), "query/offset", lambda v: {"params": {"offset": v}}),
    ("referral", "POST", "/referrals/{referral_id}/actions", {"referral_id": "referral"}, ("comar",),
     "body/expected_version", lambda v: {"json": {"action": "receive", "expected_version": v}}),
    *[("referral", "POST", "/services", {}, COORDINATOR, f"body/{name}",
       lambda v, n=name: {"json": _service_with(**{n: v})}) for name in ("capacity", "age_min", "age_max")],
    *[("referral", "PUT", "/services/{service_id}", {"service_id": "directory:service"}, COORDINATOR,
       f"body/{name}", lambda v, n=name: {"json": _service_update_with(**{n: v})})
      for name in ("capacity", "age_min", "age_max")],
    ("notification", "GET", "/deliveries", {}, ("comar",), "query/limit", lambda v: {"params": {"limit": v}}),
    *[(service, "GET", "/audit", {}, AUDITOR, f"query/{name}", lambda v, n=name: {"params": {n: v}})
      for service in SERVICES for name in ("after", "limit")],
]


def _ids(world: World, params: dict[str, str]) -> dict[str, str]:
    return {name: world.directory[key.removeprefix("directory:")] if key.startswith("directory:") else world.ids[key]
            for name, key in params.items()}


async def _request(world: World, service: str, method: str, path: str, caller: tuple, **kwargs) -> httpx.Response:
    return await world.client(service).request(method, path, headers=world.tokens.of(*caller), **kwargs)


@pytest.mark.parametrize("field", INTEGER_FIELDS, ids=lambda f: f"{f[0]} {f[1]} {f[2]} {f[5]}")
async def test_an_integer_past_its_bounds_is_a_422_naming_it(world: World, field):
    service, method, path, params, caller, name, request_with = field
    failures = []
    for value in OUT_OF_RANGE:
        kwargs = request_with(value)
        if callable(kwargs.get("json")):
            kwargs["json"] = kwargs["json"](world)
        response = await _request(world, service, method, path.format(**_ids(world, params)), caller, **kwargs)
        failures += [f"{value}: {p}" for p in _problem(response, 422)]
        if response.status_code == 422 and not _names(response, name):
            failures.append(f"{value}: the 422 does not name {name}: {response.text[:300]}")
    assert failures == []


@pytest.mark.parametrize(("service", "path", "name", "largest", "caller"), [
    ("referral", "/referrals", "offset", MAX_INT, ("inm",)),
    ("referral", "/referrals", "limit", 200, ("inm",)),
    *[(service, "/audit", "after", MAX_INT, AUDITOR) for service in SERVICES],
    ("intake", "/cases", "limit", 200, ("inm",)),
    ("notification", "/deliveries", "limit", 500, ("comar",)),
])
async def test_the_largest_value_in_range_reaches_the_database_and_is_answered(world: World, service, path, name,
                                                                               largest, caller):
    response = await _request(world, service, "GET", path, caller, params={name: largest})
    assert response.status_code == 200, response.text


# --- strings: ids in paths and queries, text in bodies, headers ----------------------------------------------

BAD_IDS = {"too long": "x" * 201, "NUL": "%00", "a line break": "a%0Ab"}
ROUTES_WITH_IDS = [r for r in all_routes() if r.param_names]


@pytest.mark.parametrize("route", ROUTES_WITH_IDS, ids=str)
async def test_an_id_in_the_path_past_its_bounds_is_a_422_naming_it(world: World, route: RouteInfo):
    headers = world.tokens.for_permission(owner_of(scenario_of(route)), route.permission)
    failures = []
    for param in route.param_names:
        for kind, bad in BAD_IDS.items():
            ids = {name: bad if name == param else str(uuid.uuid4()) for name in route.param_names}
            response = await world.client(route.service).request(route.method, route.path.format(**ids),
                                                                 headers=headers, json={})
            failures += [f"{param} {kind}: {p}" for p in _problem(response, 422)]
            if response.status_code == 422 and not _names(response, f"path/{param}"):
                failures.append(f"{param} {kind}: the 422 does not name it: {response.text[:300]}")
    assert failures == []


QUERY_IDS = [
    ("intake", "/cases/{case_id}/screenings", {"case_id": "case"}, ("inm",), ["person_id"]),
    ("referral", "/referrals", {}, ("inm",), ["case_id"]),
    ("referral", "/holds", {}, ("inm",), ["case_id", "person_id"]),
    ("referral", "/agencies", {}, ("inm",), ["jurisdiction"]),
    ("referral", "/services", {}, ("inm",), ["jurisdiction", "agency_id"]),
    ("notification", "/deliveries", {}, ("comar",), ["subscription_id", "event_type"]),
    *[(service, "/audit", {}, AUDITOR, ["object_id", "object_type", "agency_id", "user_id"]) for service in SERVICES],
]


@pytest.mark.parametrize("query", QUERY_IDS, ids=lambda q: f"{q[0]} {q[1]}")
async def test_an_id_in_the_query_past_its_bounds_is_a_422_naming_it(world: World, query):
    service, path, params, caller, names = query
    failures = []
    for name in names:
        for kind, bad in {"too long": "x" * 201, "NUL": "\x00", "a line break": "a\nb"}.items():
            response = await _request(world, service, "GET", path.format(**_ids(world, params)), caller,
                                      params={name: bad})
            failures += [f"{name} {kind}: {p}" for p in _problem(response, 422)]
            if response.status_code == 422 and not _names(response, f"query/{name}"):
                failures.append(f"{name} {kind}: the 422 does not name it: {response.text[:300]}")
    assert failures == []


# (service, method, path, path params, caller, field, body)
BODY_STRINGS = [
    ("intake", "POST", "/cases/{case_id}/screenings", {"case_id": "case"}, ("inm",), "body/person_id",
     {"person_id": "x" * 101}),
    ("intake", "POST", "/cases/search", {}, ("inm",), "body/name", {"name": "Ana\x00"}),
    ("referral", "POST", "/referrals/{referral_id}/actions", {"referral_id": "referral"}, COORDINATOR,
     "body/to_service_id", {"action": "reassign", "to_service_id": "x" * 101}),
    ("referral", "PATCH", "/agencies/{agency_id}", {"agency_id": "directory:agency"}, COORDINATOR, "body/name",
     {"name": "Agencia\x00"}),
    ("referral", "POST", "/agencies", {}, COORDINATOR, "body/jurisdiction",
     {"id": "MX-NUL", "name": "Agencia", "type": "health", "jurisdiction": "M\x00"}),
    ("notification", "POST", "/subscriptions", {}, ("comar", Role.SUPERVISOR), "body/event_types/0",
     {"url": "https://example.org/hook", "event_types": ["x" * 101]}),
]


@pytest.mark.parametrize("field", BODY_STRINGS, ids=lambda f: f"{f[0]} {f[1]} {f[2]} {f[5]}")
async def test_text_in_a_body_past_its_bounds_is_a_422_naming_it(world: World, field):
    service, method, path, params, caller, name, body = field
    response = await _request(world, service, method, path.format(**_ids(world, params)), caller, json=body)
    assert _problem(response, 422) == []
    assert _names(response, name), response.text


async def test_an_idempotency_key_past_its_bounds_is_a_422(world: World):
    response = await world.client("intake").post("/cases", json=World.probe_case(),
                                                 headers={**world.tokens.of("inm"), "Idempotency-Key": "k" * 256})
    assert _problem(response, 422) == []
    assert _names(response, "header/idempotency-key"), response.text


# --- the three apps under uvicorn, with small rate limits ------------------------------------------------------

AGENCY_LIMIT, ADDRESS_LIMIT = 6, 4
WINDOW_S = 5  # long enough that a slow machine still sends a whole burst within one window
# Per service: a read any caseworker may make, and a write with its body.
READ = {"intake": "/cases", "referral": "/agencies", "notification": "/deliveries"}
WRITE = {"intake": ("/cases", ("inm",)), "referral": ("/agencies", COORDINATOR),
         "notification": ("/subscriptions", ("comar", Role.SUPERVISOR))}


class Served:
    """The apps, each reached over HTTP through uvicorn (``url``) and in-process from an address of one's choosing."""

    def __init__(self, tokens: Tokens) -> None:
        self.tokens = tokens
        self.apps: dict[str, object] = {}
        self.urls: dict[str, str] = {}

    def client(self, service: str, address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.apps[service], client=(address, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@asynccontextmanager
async def _uvicorn(factory, port: int):
    # As deploy/services.sh starts a service, but with uvicorn's access log on: it must stay quiet all the same.
    async with uvicorn_serving(uvicorn.Config(factory, factory=True, host="127.0.0.1", port=port, access_log=True)):
        yield


@pytest.fixture(scope="module")
async def served(kafka_bootstrap, dev_issuer_dir, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("entry-limits")
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    limits = dict(rate_limit_per_agency=f"{AGENCY_LIMIT}/{WINDOW_S} seconds",
                  rate_limit_per_address=f"{ADDRESS_LIMIT}/{WINDOW_S} seconds", log_access=True)
    tokens = Tokens(dev_issuer_dir, data_dir)
    common = dict(tmp_path=data_dir, bootstrap=kafka_bootstrap, prefix=prefix, dev_issuer_dir=dev_issuer_dir,
                  auth_trusted_issuers=tokens.trusted_issuers(), **limits)
    builders = {"intake": (intake_app, IntakeSettings, {}),
                "referral": (referral_app, ReferralSettings, {"directory_seed_path": DIRECTORY_SEED}),
                "notification": (notification_app, NotificationSettings, {})}
    world = Served(tokens)
    async with AsyncExitStack() as stack:
        for name, (create, settings_class, extra) in builders.items():
            settings = fast_settings(settings_class, **common, **extra)
            port = free_port()
            world.urls[name] = f"http://127.0.0.1:{port}"
            await stack.enter_async_context(
                _uvicorn(lambda create=create, settings=settings, name=name:
                         world.apps.setdefault(name, create(settings)), port))
        yield world


# --- bodies ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("service", list(SERVICES))
async def test_a_20_mib_body_announced_by_its_content_length_is_refused_with_413_before_a_byte_is_read(
        served: Served, service: str):
    path, caller = WRITE[service]
    host, port = served.urls[service].removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    token = served.tokens.of(*caller)["authorization"]
    writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {token}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {20 * MIB}\r\n\r\n".encode())
    await writer.drain()
    # Not a byte of the body is sent: the answer can only come from the headers.
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
    writer.close()
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines if h)}
    assert status_line.split(" ")[1] == "413", head
    assert headers["content-type"].startswith(PROBLEM_JSON)


@pytest.mark.parametrize("service", list(SERVICES))
@pytest.mark.parametrize("announced", [True, False], ids=["content-length", "chunked"])
async def test_a_20_mib_body_is_read_no_further_than_the_limit(served: Served, service: str, announced: bool):
    path, caller = WRITE[service]
    chunk, pulled = 64 * 1024, 0

    async def body():
        nonlocal pulled
        for _ in range(20 * MIB // chunk):
            pulled += chunk
            yield b" " * chunk

    headers = {**served.tokens.of(*caller), "content-type": "application/json"}
    if announced:
        headers["content-length"] = str(20 * MIB)
    async with served.client(service, "10.1.0.1") as client:
        response = await client.post(path, headers=headers, content=body())
    assert _problem(response, 413) == []
    assert pulled <= (0 if announced else MIB + chunk), f"{pulled} bytes of the body were read"


# --- rates -------------------------------------------------------------------------------------------------

def _retry_after(response: httpx.Response) -> int:
    value = response.headers.get("retry-after", "")
    assert value.isdigit() and 1 <= int(value) <= WINDOW_S, f"Retry-After {value!r}"
    return int(value)


async def _until_refused(client: httpx.AsyncClient, path: str, headers: dict, most: int) -> list[httpx.Response]:
    """Requests until the first 429 (inclusive), at most ``most``."""
    answers = []
    for _ in range(most):
        answers.append(await client.get(path, headers=headers))
        if answers[-1].status_code == 429:
            break
    return answers


@pytest.mark.parametrize("service", list(SERVICES))
async def test_floods_get_429_with_retry_after_per_address_and_per_verified_agency_then_recover(
        served: Served, service: str):
    tokens, path = served.tokens, READ[service]
    comar, inm = tokens.of("comar"), tokens.of("inm")
    async with served.client(service, f"10.2.0.{list(SERVICES).index(service) + 1}") as client:
        # Tokens that claim MX-COMAR but are signed by another key: charged to the address, not to MX-COMAR.
        forged = await _until_refused(client, path, tokens.wrong_key("comar"), ADDRESS_LIMIT + 5)
        assert [r.status_code for r in forged] == [401] * ADDRESS_LIMIT + [429]
        assert _problem(forged[-1], 429) == []
        address_wait = _retry_after(forged[-1])
        without_token = await client.get(path)
        assert _problem(without_token, 429) == [], "the same address without a token"
        assert (await client.get("/healthz")).status_code == 200, "liveness is never refused"

        # MX-COMAR's own budget is whole: the forged claims did not spend it, nor does the address's refusal apply.
        flood = await _until_refused(client, path, comar, AGENCY_LIMIT + 5)
        assert [r.status_code for r in flood] == [200] * AGENCY_LIMIT + [429]
        assert _problem(flood[-1], 429) == []
        agency_wait = _retry_after(flood[-1])
        assert (await client.get(path, headers=inm)).status_code == 200, "another agency is not limited"

        await asyncio.sleep(max(address_wait, agency_wait))  # what Retry-After promised
        assert (await client.get(path, headers=comar)).status_code == 200
        assert (await client.get(path, headers=tokens.wrong_key("comar"))).status_code == 401


# --- logs --------------------------------------------------------------------------------------------------

SECRET = "Quintanilla-en-la-URL"
QUERIES = {"intake": f"/cases/{uuid.uuid4()}/screenings?person_id={SECRET}",
           "referral": f"/referrals?case_id={SECRET}",
           "notification": f"/deliveries?event_type={SECRET}"}


class _Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.name, record.getMessage()))


@pytest.mark.parametrize("service", list(SERVICES))
async def test_no_request_line_with_its_query_string_reaches_the_logs(served: Served, service: str):
    captured = _Captured()
    root = logging.getLogger()
    root.addHandler(captured)
    try:
        async with httpx.AsyncClient(base_url=served.urls[service]) as client:
            coord = served.tokens.of("coord", Role.CASEWORKER, Role.COORDINATOR)
            answers = [await client.get(QUERIES[service], headers=coord),
                       await client.get(f"/audit?object_id={SECRET}", headers=served.tokens.of("coord", Role.AUDITOR)),
                       await client.get(f"/no-such-path?q={SECRET}", headers=coord),
                       await client.get(QUERIES[service], headers=served.tokens.wrong_key("coord"))]
    finally:
        root.removeHandler(captured)
    assert [a.status_code < 500 for a in answers] == [True] * len(answers), [a.text for a in answers]
    assert [line for line in captured.lines if SECRET in line[1] or "?" in line[1]] == []
    assert [line for line in captured.lines if line[0] == "uvicorn.access"] == []
    # ENLACE_LOG_ACCESS's own lines: the route template, never the concrete URL.
    access = [message for name, message in captured.lines if name == "enlace.access"]
    template = {"intake": "GET /cases/{case_id}/screenings 404", "referral": "GET /referrals 200",
                "notification": "GET /deliveries 200"}[service]
    assert any(message.startswith(f"{template} ") for message in access), access
    assert any(message.startswith("GET /audit 200 ") for message in access), access
