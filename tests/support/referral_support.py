"""Helpers for the referral service's tests: events as intake publishes them, tokens for the demo
agencies, and the referral app with its consumer handlers driven directly (no broker needed)."""

import json
import uuid
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import pytest
from sqlmodel import select

from enlace_platform.consumer import run_after_commit
from enlace_platform.envelope import Envelope
from enlace_platform.outbox import OutboxMessage
from referral.config import ReferralSettings
from referral.entrypoints.app import create_app
from referral.service_layer.handlers import consumer_handlers
from referral.service_layer.referrals import Policy
from tests.support.harness import TEST_DIRECTORY, bearer, fast_settings, free_port, running_app

ALL_TYPES = ["migration_authority", "asylum_office", "child_protection", "anti_trafficking", "health",
             "psychosocial", "return_assistance"]


@cache
def _agencies() -> dict[str, dict]:
    return {a["id"]: a for a in json.loads(TEST_DIRECTORY.read_text())["agencies"]}


def migration_authority(jurisdiction: str) -> str:
    found = [a for a, v in _agencies().items() if v["jurisdiction"] == jurisdiction and v["type"] == "migration_authority"]
    return found[0] if found else f"{jurisdiction}-MIG"


def token(dev_issuer_dir: Path, agency_id: str, subject_role: str | None = None) -> dict[str, str]:
    """A bearer header for a demo agency (its type and jurisdiction from the demo directory). The user's
    role defaults to the agency's everyday one: coordinator at a coordinator agency, else caseworker."""
    agency = _agencies().get(agency_id)
    agency_type = agency["type"] if agency else "migration_authority"
    jurisdiction = agency["jurisdiction"] if agency else agency_id.split("-")[0]
    role = subject_role or ("coordinator" if agency_type == "coordinator" else "caseworker")
    return bearer(dev_issuer_dir, agency_id, agency_type, jurisdiction, roles=[role])


def consent_scope(*agency_types: str, purpose: str = "referral") -> list[dict]:
    return [{"recipient_agency_type": t, "purpose": purpose, "basis": "consent"} for t in agency_types]


def screened(*needs: tuple[str, str] | str, case_id: str | None = None, person_id: str | None = None,
             screening_id: str | None = None, age_band: str = "18-59", jurisdiction: str = "MX",
             languages: tuple[str, ...] = ("es",), scope: list[dict] | None = None,
             registering_agency_id: str | None = None) -> Envelope:
    """A case.screened.v1 event exactly as intake publishes it (consent_scope: all types by default)."""
    case_id = case_id or str(uuid.uuid4())
    screening_id = screening_id or str(uuid.uuid4())
    data = {
        "case_id": case_id, "screening_id": screening_id, "person_id": person_id or str(uuid.uuid4()),
        "registering_agency_id": registering_agency_id or migration_authority(jurisdiction),
        "jurisdiction": jurisdiction, "rules_version": "test-1", "age_band": age_band, "languages": list(languages),
        "needs": [{"code": n, "urgency": "high"} if isinstance(n, str) else {"code": n[0], "urgency": n[1]}
                  for n in needs],
        "consent_scope": consent_scope(*ALL_TYPES) if scope is None else scope,
    }
    return Envelope(type="case.screened.v1", source="/enlace/intake", key=case_id, subject=screening_id, data=data)


def registered(*person_ids: str, case_id: str | None = None, jurisdiction: str = "MX",
               agency_id: str | None = None) -> Envelope:
    """A case.registered.v1 event exactly as intake publishes it (one new person unless given)."""
    case_id = case_id or str(uuid.uuid4())
    data = {"case_id": case_id, "agency_id": agency_id or migration_authority(jurisdiction),
            "jurisdiction": jurisdiction, "person_ids": list(person_ids) or [str(uuid.uuid4())],
            "encountered_at": datetime.now(UTC).isoformat()}
    return Envelope(type="case.registered.v1", source="/enlace/intake", key=case_id, subject=case_id, data=data)


def consent_changed(case_id: str, person_id: str, agency_type: str, status: str = "granted",
                    purpose: str = "referral") -> Envelope:
    data = {"case_id": case_id, "person_id": person_id, "consent_id": str(uuid.uuid4()),
            "recipient_agency_type": agency_type, "purpose": purpose, "basis": "consent", "status": status,
            "changed_at": datetime.now(UTC).isoformat()}
    return Envelope(type="consent.changed.v1", source="/enlace/intake", key=case_id, subject=data["consent_id"],
                    data=data)


def person_erased(case_id: str, person_id: str, reason_code: str = "ERASURE_REQUEST") -> Envelope:
    """A person.erased.v1 event exactly as intake publishes it."""
    data = {"case_id": case_id, "person_id": person_id, "reason_code": reason_code,
            "erased_at": datetime.now(UTC).isoformat()}
    return Envelope(type="person.erased.v1", source="/enlace/intake", key=case_id, subject=person_id, data=data)


def referral_settings(tmp_path: Path, dev_issuer_dir: Path, bootstrap: str | None = None, prefix: str = "t.",
                      **extra) -> ReferralSettings:
    """Own database and the demo directory; without a bootstrap, Kafka points at a closed port."""
    return fast_settings(ReferralSettings, tmp_path=tmp_path, bootstrap=bootstrap or f"127.0.0.1:{free_port()}",
                         prefix=prefix, dev_issuer_dir=dev_issuer_dir, directory_seed_path=str(TEST_DIRECTORY),
                         **extra)


class ReferralHarness:
    """The real referral app; events are handed to its consumer handlers as the runner would."""

    def __init__(self, app, client) -> None:
        self.app, self.client = app, client
        self.runtime = app.state.runtime
        self.handlers = consumer_handlers(Policy.from_settings(self.runtime.settings), self.runtime)

    async def deliver(self, envelope: Envelope) -> None:
        async with self.runtime.sessions() as session:
            await self.handlers[envelope.type](session, envelope)
            await session.commit()
            await run_after_commit(session)  # as the consumer runner does (e.g. the purge after an erasure)

    async def registered_person(self, jurisdiction: str = "MX", agency_id: str | None = None) -> tuple[str, str]:
        """(case id, person id) of a new case intake registered: a person a manual referral may be about."""
        event = registered(jurisdiction=jurisdiction, agency_id=agency_id)
        await self.deliver(event)
        return event.data["case_id"], event.data["person_ids"][0]

    async def events(self, *types: str) -> list[tuple[str, dict]]:
        """Outbox rows in commit order, as (type, payload)."""
        async with self.runtime.sessions() as session:
            rows = (await session.exec(select(OutboxMessage).order_by(OutboxMessage.created_at,
                                                                      OutboxMessage.sequence))).all()
        return [(r.type, json.loads(r.payload)) for r in rows if not types or r.type in types]

    async def referrals(self, headers: dict, **params) -> list[dict]:
        r = await self.client.get("/referrals", headers=headers, params={"limit": 200, **params})
        assert r.status_code == 200, r.text
        return r.json()["items"]

    async def act(self, referral_id: str, headers: dict, action: str, **body):
        return await self.client.post(f"/referrals/{referral_id}/actions", headers=headers,
                                      json={"action": action, **body})


@asynccontextmanager
async def referral_harness(settings: ReferralSettings):
    app = create_app(settings)
    async with running_app(app) as client:
        yield ReferralHarness(app, client)


async def add_second_child_protection_service(client, coordinator_headers: dict[str, str]) -> str:
    """The MX coordinator adds a second child-protection agency and service (MX-SNDIF-1), so that a
    child's referral has somewhere to go onward or be reassigned to. Returns the service id."""
    r = await client.post("/agencies", headers=coordinator_headers, json={
        "id": "MX-SNDIF", "name": "Sistema DIF (demo)", "type": "child_protection", "jurisdiction": "MX"})
    assert r.status_code == 201, r.text
    r = await client.post("/services", headers=coordinator_headers, json={
        "id": "MX-SNDIF-1", "agency_id": "MX-SNDIF", "area": "MX", "name": "Centro de asistencia social",
        "need_codes": ["UNACCOMPANIED_CHILD", "SEPARATED_CHILD"], "age_min": 0, "age_max": 17,
        "languages": ["es"], "opening_hours": "24/7", "capacity": 10})
    assert r.status_code == 201, r.text
    return "MX-SNDIF-1"


# Fixtures of the referral API tests; a test module imports them by name.
@pytest.fixture
async def ref(tmp_path, dev_issuer_dir, databases):
    """The referral app on SQLite, or on PostgreSQL too for a test ``@on_both_databases``."""
    async with referral_harness(referral_settings(tmp_path, dev_issuer_dir, databases=databases)) as harness:
        yield harness


@pytest.fixture
def auth(dev_issuer_dir):
    return lambda agency_id, role=None: token(dev_issuer_dir, agency_id, role)
