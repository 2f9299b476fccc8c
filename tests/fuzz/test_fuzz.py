"""Issue 12: a fuzz pass over every operation of the three services, served live (tests/fuzz/conftest.py).

Schemathesis generates requests from each service's own OpenAPI document: valid ones and ones that break the
schema (negative), plus boundary values of every integer and string bound, sent with a privileged agency's
token (every role), with none, or with a bad one. At least MIN_REQUESTS a service. Every answer must: not be a
5xx; be application/problem+json when it is a 4xx; have a status, content type, headers and body that the
operation's document declares. The requests go from a worker thread, so the services keep their event loop.
"""

import asyncio
import math
from collections import Counter

import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings, strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.openapi import from_dict
from schemathesis.specs.openapi.checks import (
    content_type_conformance, response_headers_conformance, response_schema_conformance, status_code_conformance,
)

from enlace_platform.access import Role
from enlace_platform.dev_issuer import mint
from tests.fuzz.conftest import Served

# Schemathesis's own strategies draw from `random`; Hypothesis warns about it on every operation.
pytestmark = pytest.mark.filterwarnings("ignore:Do not use the `random` module:hypothesis.errors."
                                        "HypothesisDeprecationWarning")
PROBLEM_JSON = "application/problem+json"
MIN_REQUESTS = 1000
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
# A privileged agency that the directory knows: the coordinator of MX, with every role.
PRIVILEGED = ("MX-COORD", "coordinator", "MX")
INT_BOUNDARIES = (-1, 0, 2**31 - 1, 2**31, 2**63, -(2**63) - 1)


def _tokens(dev_issuer_dir) -> list[dict[str, str]]:
    key = (dev_issuer_dir / "private.pem").read_bytes()
    agency_id, agency_type, jurisdiction = PRIVILEGED
    good = mint(key, agency_id=agency_id, agency_type=agency_type, jurisdiction=jurisdiction,
                roles=sorted(r.value for r in Role), subject="fuzz")
    # Mostly the good token, so the generated values reach the routes; some without or with a broken one.
    return [{"Authorization": f"Bearer {good}"}] * 8 + [{}, {"Authorization": f"Bearer {good[:-4]}AAAA"}]


def _boundaries(operation) -> list[tuple[str, str, object]]:
    """(location, name, value) at and past each bound of the operation's integer and string parameters."""
    found = []
    for parameter in operation.definition.raw.get("parameters", []):
        schema = parameter.get("schema", {})
        options = schema.get("anyOf", [schema])
        for option in options:
            if option.get("type") == "integer":
                bounds = [option.get(k) for k in ("minimum", "maximum") if option.get(k) is not None]
                for value in {*INT_BOUNDARIES, *bounds, *(b - 1 for b in bounds), *(b + 1 for b in bounds)}:
                    found.append((parameter["in"], parameter["name"], value))
            elif option.get("type") == "string" and option.get("maxLength"):
                for length in (option["maxLength"], option["maxLength"] + 1):
                    found.append((parameter["in"], parameter["name"], "x" * length))
    return found


class Pass:
    """The requests of one service's pass and what went wrong with them."""

    def __init__(self, base_url: str, tokens: list[dict[str, str]]) -> None:
        self.base_url = base_url
        self.tokens = tokens
        self.session = requests.Session()
        self.sent: Counter = Counter()
        self.failures: list[str] = []

    def send(self, case, headers: dict[str, str]) -> None:
        try:
            response = case.call(base_url=self.base_url, session=self.session, headers=headers, timeout=30)
        except (requests.exceptions.InvalidHeader, ValueError, UnicodeError):
            return  # a header value no HTTP client can send (the negative generator makes some)
        self.sent[response.status_code // 100] += 1
        where = f"{case.method} {case.formatted_path} {response.status_code}"
        content_type = (response.headers.get("content-type") or [""])[0]
        if 400 <= response.status_code < 500 and content_type.split(";")[0] != PROBLEM_JSON:
            self.failures.append(f"{where}: 4xx as {content_type!r}")
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except Exception as exc:  # noqa: BLE001 - each check raises its own failure type; all are kept
            self.failures.append(f"{where}: {str(exc)[:600]}\n  {case.as_curl_command()[:400]}")

    def fuzz(self, operation, examples: int, mode: GenerationMode) -> None:
        @given(case=operation.as_strategy(generation_mode=mode), headers=st.sampled_from(self.tokens))
        @settings(max_examples=examples, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        def run(case, headers):
            self.send(case, headers)

        try:
            run()
        except Unsatisfiable:
            assert mode == GenerationMode.NEGATIVE, f"{operation.label}: no valid request can be generated"

    def boundaries(self, operation) -> None:
        """One generated valid request per boundary value, that value put in place of the generated one."""
        values = _boundaries(operation)
        if not values:
            return
        pending = iter(values)
        containers = {"query": "query", "path": "path_parameters", "header": "headers"}

        @given(case=operation.as_strategy())
        @settings(max_examples=len(values), deadline=None, database=None, derandomize=True,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        def run(case):
            location, name, value = next(pending, (None, None, None))
            if location is None:
                return
            container = containers[location]
            setattr(case, container, {**(getattr(case, container) or {}),
                                      name: str(value) if location == "header" else value})
            self.send(case, self.tokens[0])

        run()


def _takes_input(operation) -> bool:
    raw = operation.definition.raw
    return bool(raw.get("parameters") or raw.get("requestBody"))


def fuzz_service(app, base_url: str, tokens: list[dict[str, str]]) -> Pass:
    schema = from_dict(app.openapi())
    operations = [result.ok() for result in schema.get_all_operations()]
    # Split evenly over the operations that take input, valid and invalid, then the boundaries; one request
    # to each that takes none (Hypothesis generates no more than there are distinct requests).
    takes_input = [op for op in operations if _takes_input(op)]
    each = math.ceil(MIN_REQUESTS * 1.05 / len(takes_input) / 2)
    work = Pass(base_url, tokens)
    for operation in operations:
        if operation in takes_input:
            work.fuzz(operation, each, GenerationMode.POSITIVE)
            work.fuzz(operation, each, GenerationMode.NEGATIVE)
            work.boundaries(operation)
        else:
            work.fuzz(operation, 1, GenerationMode.POSITIVE)
    return work


@pytest.mark.kafka
@pytest.mark.parametrize("service", ["intake", "referral", "notification"])
async def test_fuzzing_finds_no_5xx_and_every_4xx_is_a_declared_problem(served: Served, service: str,
                                                                         dev_issuer_dir):
    work = await asyncio.to_thread(fuzz_service, served.apps[service], served.urls[service],
                                   _tokens(dev_issuer_dir))
    total = sum(work.sent.values())
    assert total >= MIN_REQUESTS, f"only {total} requests sent: {dict(work.sent)}"
    assert work.sent[5] == 0 or work.failures, "5xx seen but not reported"
    assert work.failures == [], f"{len(work.failures)} of {total} answers failed:\n" + "\n".join(
        sorted(set(work.failures))[:40])
