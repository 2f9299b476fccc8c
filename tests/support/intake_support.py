"""Intake test helpers: the app without a broker, a family group, and referral events as referral sends them."""

import uuid
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from enlace_platform.contracts import published_contracts
from enlace_platform.envelope import Envelope
from enlace_platform.outbox import OutboxMessage
from intake.config import IntakeSettings
from intake.entrypoints.app import create_app
from tests.support.harness import bearer, fast_settings, running_app

UNREACHABLE_BROKER = "127.0.0.1:9"  # the API works without Kafka; events wait in the outbox


def intake_settings(tmp_path: Path, dev_issuer_dir: Path, *, bootstrap: str = UNREACHABLE_BROKER,
                    prefix: str = "") -> IntakeSettings:
    return fast_settings(IntakeSettings, tmp_path=tmp_path, bootstrap=bootstrap, prefix=prefix,
                         dev_issuer_dir=dev_issuer_dir)


@asynccontextmanager
async def intake_without_broker(tmp_path: Path, dev_issuer_dir: Path):
    """Yields (client, runtime): the real app and its database, with Kafka unreachable."""
    app = create_app(intake_settings(tmp_path, dev_issuer_dir))
    async with running_app(app) as client:
        yield client, app.state.runtime


def inm(dev_issuer_dir: Path, roles: tuple[str, ...] = ("caseworker",)) -> dict[str, str]:
    return bearer(dev_issuer_dir, "MX-INM", "migration_authority", roles=list(roles))


def inm_supervisor(dev_issuer_dir: Path) -> dict[str, str]:
    """Orders removals, applies the child-protection override and erases: supervisors only."""
    return inm(dev_issuer_dir, ("supervisor",))


def family_group() -> dict:
    """A group as a border post registers it: a mother who fears return, her daughter (9), an unrelated adult
    travelling with a 15-year-old who is alone, and a young man whose age is disputed."""
    return {
        "place": "Ciudad Hidalgo, Chiapas",
        "encountered_at": datetime(2026, 11, 20, 4, 30, tzinfo=UTC).isoformat(),
        "persons": [
            {"given_names": "María José", "family_names": "Pérez López", "sex": "female",
             "date_of_birth": "1990-02-14", "nationality": "HND", "languages": ["es"],
             "documents": [{"type": "passport", "number": "HN1234567", "issuing_country": "HND"}]},
            {"given_names": "Sofía", "family_names": "Pérez López", "sex": "female", "estimated_age": 9,
             "nationality": "HND", "languages": ["es"]},
            {"given_names": "Kevin", "family_names": "Ramírez", "sex": "male", "estimated_age": 15,
             "nationality": "HND", "languages": ["es"]},
            {"given_names": "Ramón", "family_names": "Díaz", "sex": "male", "estimated_age": 38,
             "nationality": "GTM", "languages": ["es"],
             "documents": [{"type": "national_id", "number": "GT-99-1234", "issuing_country": "GTM"}]},
            {"given_names": "Brayan", "family_names": "Cruz", "sex": "male", "estimated_age": 19,
             "age_disputed": True, "nationality": "SLV", "languages": ["es"]},
        ],
        "relationships": [
            {"from_person": 0, "to_person": 1, "kind": "parent"},
            {"from_person": 3, "to_person": 2, "kind": "unrelated_adult"},
        ],
    }


def hold_placed(*, case_id: str, person_id: str, need_code: str, hold_id: str | None = None,
                referral_id: str | None = None, not_before: datetime | None = None,
                from_agency_id: str = "MX-INM", to_agency_id: str = "MX-COMAR") -> Envelope:
    hold_id = hold_id or str(uuid.uuid4())
    now = datetime.now(UTC)
    return Envelope(type="protection_hold.placed.v1", source="/enlace/referral", key=case_id, subject=hold_id,
                    data={"hold_id": hold_id, "case_id": case_id, "person_id": person_id,
                          "referral_id": referral_id or str(uuid.uuid4()), "need_code": need_code,
                          "from_agency_id": from_agency_id, "to_agency_id": to_agency_id,
                          "placed_at": now.isoformat(),
                          "not_before": not_before.isoformat() if not_before else None})


def hold_released(placed: Envelope, *, release_reason: str = "COMPLETED_FINAL",
                  outcome_code: str | None = "REFUGEE_STATUS_GRANTED", released_at: datetime | None = None) -> Envelope:
    d = placed.data
    return Envelope(type="protection_hold.released.v1", source="/enlace/referral", key=d["case_id"],
                    subject=d["hold_id"],
                    data={"hold_id": d["hold_id"], "case_id": d["case_id"], "person_id": d["person_id"],
                          "referral_id": d["referral_id"], "need_code": d["need_code"],
                          "from_agency_id": "MX-INM", "to_agency_id": d["to_agency_id"],
                          "release_reason": release_reason, "outcome_code": outcome_code,
                          "released_at": (released_at or datetime.now(UTC) + timedelta(seconds=1)).isoformat()})


def referral_event(kind: str, *, referral_id: str, case_id: str, person_id: str, need_code: str, status: str,
                   to_agency_id: str | None, to_agency_type: str | None, outcome_code: str | None = None,
                   reason_code: str | None = None, occurred_at: datetime | None = None,
                   from_agency_id: str = "MX-INM", previous_referral_id: str | None = None) -> Envelope:
    """As referral publishes it; from MX-INM, the agency that registers the test cases, unless said."""
    return Envelope(type=f"referral.{kind}.v1", source="/enlace/referral", key=case_id, subject=referral_id,
                    data={"referral_id": referral_id, "case_id": case_id, "person_id": person_id,
                          "need_code": need_code, "urgency": "high", "status": status, "is_lead": True,
                          "from_agency_id": from_agency_id, "to_agency_id": to_agency_id,
                          "to_agency_type": to_agency_type,
                          "to_service_id": f"{to_agency_id}-1" if to_agency_id else None,
                          "coordinator_agency_id": "MX-COORD", "due_at": None,
                          "previous_referral_id": previous_referral_id,
                          "actor_agency_id": to_agency_id, "reason_code": reason_code, "outcome_code": outcome_code,
                          "occurred_at": (occurred_at or datetime.now(UTC)).isoformat()})


async def deliver(runtime, handlers: dict, envelope: Envelope, *, check_contract: bool = True) -> None:
    """As the consumer runner does: checks the published contract, then runs the handler in its own transaction."""
    if check_contract:
        published_contracts().check(envelope.type, envelope.data)
    async with runtime.sessions() as session:
        await handlers[envelope.type](session, envelope)
        await session.commit()


async def outbox_rows(runtime, event_type: str | None = None) -> list[OutboxMessage]:
    from sqlmodel import select

    async with runtime.sessions() as session:
        query = select(OutboxMessage).order_by(OutboxMessage.created_at, OutboxMessage.sequence)
        if event_type:
            query = query.where(OutboxMessage.type == event_type)
        return list((await session.exec(query)).all())
