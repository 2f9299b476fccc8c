"""The border post's calls, as the migration authority's system makes them, and the load shapes that drive them.

One case: MX-INM registers a 15-year-old travelling alone, its supervisor applies the mandatory
child-protection override, a caseworker screens him (not with a parent or guardian, no fear of return:
UNACCOMPANIED_CHILD only). Routing sends that need to child protection (MX-PFPNNA), whose webhook
receiver the benchmark runs. Every POST carries an Idempotency-Key, so a retry after a 5xx or a
dropped connection is safe; retries are counted.
"""

import asyncio
import itertools
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from enlace_platform.dev_issuer import ensure_keypair, mint, roster_entry

SENDER, RECEIVER = "MX-INM", "MX-PFPNNA"
EXPECTED_NEEDS = ["UNACCOMPANIED_CHILD"]
OVERRIDE_REASON = "Unaccompanied child: mandatory child-protection referral (Ley de Migración art. 112)"
ATTEMPTS = 5


def bearer(key_dir: Path, agency_id: str, role: str) -> dict[str, str]:
    entry = roster_entry(agency_id)
    signed = mint(ensure_keypair(key_dir).read_bytes(), agency_id=agency_id, agency_type=entry["type"],
                  jurisdiction=entry["jurisdiction"], roles=[role], subject=f"{agency_id.lower()}-bench-{role}",
                  ttl_s=24 * 3600)
    return {"authorization": f"Bearer {signed}"}


class FlowFailed(RuntimeError):
    pass


@dataclass
class CaseResult:
    index: int
    started_at: float = 0.0        # wall clock, before the register POST
    screened_at: float = 0.0       # wall clock, when the screening POST's response arrived
    case_id: str | None = None
    latencies: dict[str, float] = field(default_factory=dict)  # seconds per call, retries included
    retries: int = 0
    error: str | None = None


class BorderPost:
    """The three calls of one case, spread over intake's replicas (one replica per case, round robin)."""

    def __init__(self, http: httpx.AsyncClient, intake_urls: list[str], key_dir: Path) -> None:
        self.http = http
        self._intakes = itertools.cycle(intake_urls)
        self.caseworker = bearer(key_dir, SENDER, "caseworker")
        self.supervisor = bearer(key_dir, SENDER, "supervisor")
        self.checked = False

    async def case(self, index: int) -> CaseResult:
        result = CaseResult(index, started_at=time.time())
        intake = next(self._intakes)
        try:
            case = await self._post(result, "register", f"{intake}/cases", self.caseworker, {
                "place": "Ciudad Hidalgo, Chiapas — border post (benchmark)",
                "encountered_at": (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
                "persons": [{"given_names": "Bench", "family_names": f"Child {index}", "sex": "male",
                             "estimated_age": 15, "nationality": "GTM", "languages": ["es"]}]})
            result.case_id, person_id = case["id"], case["persons"][0]["id"]
            await self._post(result, "consent", f"{intake}/cases/{result.case_id}/persons/{person_id}/consents",
                             self.supervisor, {"recipient_agency_type": "child_protection", "purpose": "referral",
                                               "basis": "mandatory_override", "reason": OVERRIDE_REASON})
            screening = await self._post(result, "screening", f"{intake}/cases/{result.case_id}/screenings",
                                         self.caseworker, {"person_id": person_id, "fear_of_return": False,
                                                           "travelling_with_parent_or_guardian": False})
            result.screened_at = time.time()
            needs = [n["code"] for n in screening["needs"]]
            if needs != EXPECTED_NEEDS and not self.checked:
                raise FlowFailed(f"the screening found {needs}, the benchmark expects {EXPECTED_NEEDS}")
            self.checked = True
        except (FlowFailed, httpx.HTTPError, KeyError, ValueError) as exc:
            result.error = f"{type(exc).__name__}: {exc}"[:300]
        return result

    async def _post(self, result: CaseResult, step: str, url: str, headers: dict, body: dict) -> dict:
        headers = {**headers, "Idempotency-Key": str(uuid.uuid4())}
        started = time.perf_counter()
        for attempt in range(1, ATTEMPTS + 1):
            try:
                response = await self.http.post(url, headers=headers, json=body)
            except httpx.TransportError:
                if attempt == ATTEMPTS:
                    raise
            else:
                if response.status_code < 500:
                    if response.status_code >= 400:
                        raise FlowFailed(f"{step} -> {response.status_code}: {response.text[:200]}")
                    result.latencies[step] = time.perf_counter() - started
                    return response.json()
                if attempt == ATTEMPTS:
                    raise FlowFailed(f"{step} -> {response.status_code} after {ATTEMPTS} attempts")
            result.retries += 1
            await asyncio.sleep(0.2 * attempt)
        raise AssertionError("unreachable")


def new_client(connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(timeout=httpx.Timeout(60.0), limits=limits)


async def burst(post: BorderPost, indices: range, concurrency: int, on_done=None) -> list[CaseResult]:
    """Closed loop: `concurrency` workers, each starting its next case as soon as the last one is screened."""
    pending = iter(indices)
    results: list[CaseResult] = []

    async def worker() -> None:
        for index in pending:
            result = await post.case(index)
            results.append(result)
            if on_done:
                on_done(result)
            if result.error and "the benchmark expects" in result.error:
                raise FlowFailed(result.error)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


@dataclass
class SteadyRun:
    results: list[CaseResult]
    offered: int                    # cases whose start time came within the run
    overflowed: bool                # the client held more cases in flight than allowed: intake fell behind
    issued_seconds: float


async def steady(post: BorderPost, first_index: int, rate: float, duration_s: float,
                 max_in_flight: int) -> SteadyRun:
    """Open loop: a case starts every 1/rate seconds whatever the earlier ones are doing (arrivals at a border
    do not wait for the server). Stops offering when more than `max_in_flight` cases are unfinished."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    tasks: set[asyncio.Task] = set()
    done: list[CaseResult] = []
    offered, overflowed = 0, False
    total = int(rate * duration_s)
    for i in range(total):
        delay = started + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(tasks) >= max_in_flight:
            overflowed = True
            break
        task = asyncio.create_task(post.case(first_index + i))
        tasks.add(task)
        task.add_done_callback(lambda t: (tasks.discard(t), done.append(t.result())))
        offered += 1
    issued = loop.time() - started
    while tasks:
        await asyncio.sleep(0.05)
    return SteadyRun(done, offered, overflowed, issued)
