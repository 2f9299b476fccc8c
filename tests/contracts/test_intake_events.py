"""The events intake's real code writes to its outbox validate against contracts/events, and carry no personal data.

Runs intake's use cases on a SQLite file (no broker): a family group is registered, consents and an
override are recorded and withdrawn, and everyone is screened with answers that reach every need code.
"""

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from sqlmodel import select

from enlace_platform.auth import Principal
from enlace_platform.contracts import FORMATS
from enlace_platform.crypto import Keyring
from enlace_platform.envelope import from_kafka, to_kafka
from enlace_platform.outbox import OutboxMessage, envelope_of
from intake.adapters import orm
from intake.adapters.vault import Document, PersonRecord, Vault
from intake.domain import consent, events
from intake.domain.rules import NEED_CODES, Urgency
from intake.domain.screening import PersonFacts, ScreeningAnswers, age_band
from intake.service_layer import services
from tests.support.harness import service_database

EVENTS = Path(__file__).resolve().parents[2] / "contracts" / "events"
INM = Principal(subject="officer-7", agency_id="MX-INM", agency_type="migration_authority", jurisdiction="MX",
                roles=("caseworker",))
# The migration authority may not withdraw a consent to a protection agency (docs/security.md): the coordinator does.
COORD = Principal(subject="coord-1", agency_id="MX-COORD", agency_type="coordinator", jurisdiction="MX",
                  roles=("coordinator",))
SECRETS = ("María", "Pérez", "Kevin", "Ramírez", "HN1234567", "Ciudad Hidalgo", "1990-02-14", "officer-7",
           "LGDNNA", "HND")


def _schema(event_type: str) -> dict:
    return json.loads((EVENTS / f"{event_type}.schema.json").read_text(encoding="utf-8"))


def _errors(event_type: str, payload: dict) -> list[str]:
    validator = Draft202012Validator(_schema(event_type), format_checker=FORMATS)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(payload)]


def _person(case: orm.CaseRow, given_names: str, family_names: str, sex: str, *, documents=(), **fields):
    record = PersonRecord(given_names=given_names, family_names=family_names, sex=sex,
                          date_of_birth=fields.get("date_of_birth"), estimated_age=fields.get("estimated_age"),
                          age_disputed=fields.get("age_disputed", False), nationality=fields.get("nationality"),
                          languages=fields.get("languages", []), documents=list(documents))
    return orm.PersonRow(case_id=case.id, given_names="", family_names="", sex=""), record


@pytest.fixture
async def outbox(tmp_path):
    kek = os.urandom(32)
    vault = Vault(Keyring(kek, namespace="intake"), kek)
    async with service_database(tmp_path / "intake.db", orm.TABLES) as sessions:
        case = orm.CaseRow(agency_id="", jurisdiction="", place="Ciudad Hidalgo, Chiapas",
                           encountered_at=datetime(2026, 11, 20, 4, 30, tzinfo=UTC))
        people = [
            _person(case, "María", "Pérez", "female", date_of_birth=datetime(1990, 2, 14).date(), nationality="HND",
                    languages=["es"], documents=[Document("passport", "HN1234567", "HND")]),
            _person(case, "Kevin", "Ramírez", "male", estimated_age=15, languages=["es", "mam"]),
            _person(case, "Brayan", "Cruz", "male", estimated_age=19, age_disputed=True),
            _person(case, "Rosa", "Cruz", "female", estimated_age=70, languages=["es"]),
        ]
        mother, teen, disputed, elder = (row for row, _ in people)
        rels = [orm.RelationshipRow(case_id=case.id, from_person_id=elder.id, to_person_id=disputed.id,
                                    kind="other_relative")]
        async with sessions() as session:
            await services.register_case(session, vault, INM, case, people, relationships=rels)
        async with sessions() as session:
            granted, _ = await services.grant_consent(session, vault, INM, case.id, mother.id,
                                                      recipient_agency_type="asylum_office", purpose="referral",
                                                      basis=consent.CONSENT, reason=None)
        async with sessions() as session:
            await services.grant_consent(session, vault, INM, case.id, mother.id, recipient_agency_type="health",
                                         purpose="follow_up", basis=consent.CONSENT, reason=None)
        async with sessions() as session:
            await services.grant_consent(session, vault, INM, case.id, teen.id, recipient_agency_type="child_protection",
                                         purpose="referral", basis=consent.MANDATORY_OVERRIDE,
                                         reason="LGDNNA art. 89: unaccompanied child")
        everything = ScreeningAnswers(
            fear_of_return=True, trafficking_indicators=("DEBT_BONDAGE",), sexual_violence_disclosed=True,
            sexual_violence_within_72h=True, disability=True, considers_self_stateless=True, kidnapped=True)
        plans = [(mother, everything), (teen, ScreeningAnswers(extorted=True)), (disputed, ScreeningAnswers()),
                 (elder, ScreeningAnswers(stranded_wishes_to_return=True, urgent_medical_need=True))]
        for person, answers in plans:
            async with sessions() as session:
                await services.record_screening(session, vault, INM, case.id, person.id, answers)
        async with sessions() as session:
            await services.withdraw_consent(session, vault, COORD, case.id, mother.id, granted.row.id)
        async with sessions() as session:  # no hold and no referral: erasable
            await services.erase_person(session, vault, INM, case.id, elder.id)
        async with sessions() as session:
            query = select(OutboxMessage).order_by(OutboxMessage.created_at, OutboxMessage.sequence)
            yield list((await session.exec(query)).all())


def test_every_published_type_has_a_strict_schema():
    for event_type in events.PUBLISHED:
        schema = _schema(event_type)
        Draft202012Validator.check_schema(schema)
        assert schema["title"] == event_type and schema["additionalProperties"] is False


async def test_the_outbox_payloads_validate_against_their_schemas(outbox):
    types = [row.type for row in outbox]
    assert types.count("case.registered.v1") == 1 and types.count("case.screened.v1") == 4
    assert types.count("consent.changed.v1") == 4 and types.count("person.erased.v1") == 1
    for row in outbox:
        assert row.aggregatetype == events.TOPIC and row.source == events.SOURCE
        payload = json.loads(row.payload)
        assert _errors(row.type, payload) == [], (row.type, payload)
        assert row.aggregateid == payload["case_id"], "the record key is the case id"
        subject = {"case.registered.v1": "case_id", "case.screened.v1": "screening_id",
                   "consent.changed.v1": "consent_id", "person.erased.v1": "person_id"}[row.type]
        assert row.subject == payload[subject]
        key, value, headers = to_kafka(envelope_of(row))
        assert from_kafka(key, value, headers).data == payload


async def test_screened_events_always_carry_the_consent_scope(outbox):
    screened = [json.loads(r.payload) for r in outbox if r.type == "case.screened.v1"]
    assert all("consent_scope" in s for s in screened)
    mother, teen, disputed, elder = screened
    assert mother["consent_scope"] == [
        {"recipient_agency_type": "asylum_office", "purpose": "referral", "basis": "consent"},
        {"recipient_agency_type": "health", "purpose": "follow_up", "basis": "consent"}]
    assert teen["consent_scope"] == [{"recipient_agency_type": "child_protection", "purpose": "referral",
                                      "basis": "mandatory_override"}]
    assert disputed["consent_scope"] == [] and elder["consent_scope"] == []
    assert {n["code"] for s in screened for n in s["needs"]} == set(NEED_CODES), "every need code is exercised"
    assert [s["age_band"] for s in screened] == ["18-59", "12-17", "disputed-treated-as-child", "60+"]
    assert teen["languages"] == ["es", "mam"] and all(s["rules_version"] == "v3" for s in screened)


async def test_consent_changes_are_published_granted_and_withdrawn(outbox):
    changes = [json.loads(r.payload) for r in outbox if r.type == "consent.changed.v1"]
    assert [(c["recipient_agency_type"], c["purpose"], c["basis"], c["status"]) for c in changes] == [
        ("asylum_office", "referral", "consent", "granted"), ("health", "follow_up", "consent", "granted"),
        ("child_protection", "referral", "mandatory_override", "granted"),
        ("asylum_office", "referral", "consent", "withdrawn")]
    assert changes[0]["consent_id"] == changes[3]["consent_id"]


async def test_no_personal_data_reaches_the_bus(outbox):
    for row in outbox:
        for secret in SECRETS:
            assert secret not in row.payload, f"{secret!r} leaked into {row.type}"
        assert "reason" not in json.loads(row.payload)


def test_code_lists_agree_with_the_schemas():
    screened = _schema("case.screened.v1")
    assert screened["$defs"]["need_code"]["enum"] == list(NEED_CODES)
    assert set(screened["$defs"]["urgency"]["enum"]) == {u.value for u in Urgency}
    assert screened["$defs"]["agency_type"]["enum"] == list(consent.AGENCY_TYPES)
    changed = _schema("consent.changed.v1")["properties"]
    assert changed["recipient_agency_type"]["enum"] == list(consent.AGENCY_TYPES)
    assert changed["purpose"]["enum"] == list(consent.PURPOSES)
    assert changed["basis"]["enum"] == list(consent.BASES)
    produced = {age_band(PersonFacts(a)) for a in range(121)}
    produced |= {age_band(PersonFacts(None)), age_band(PersonFacts(30, age_disputed=True))}
    assert set(screened["properties"]["age_band"]["enum"]) == produced


def test_the_needs_intake_waits_a_hold_for_are_the_catalogs_hold_bearing_needs():
    import re

    from intake.domain.safeguard import HOLD_BEARING_NEEDS

    catalog = (Path(__file__).parents[2] / "docs" / "event-catalog.md").read_text(encoding="utf-8")
    bullet = catalog.split("- **Hold-bearing needs**", 1)[1].split("\n\n", 1)[0]
    assert set(re.findall(r"`([A-Z_]+)`", bullet)) == set(HOLD_BEARING_NEEDS)


async def test_an_erasure_is_published_with_its_reason(outbox):
    [erased] = [json.loads(r.payload) for r in outbox if r.type == "person.erased.v1"]
    registered = json.loads(next(r.payload for r in outbox if r.type == "case.registered.v1"))
    assert erased["person_id"] == registered["person_ids"][3] and erased["reason_code"] == "ERASURE_REQUEST"
    assert _errors("person.erased.v1", {**erased, "reason_code": "BECAUSE"}), "reason codes are a closed list"
