"""Published contracts (contracts/) against the code that produces the events, webhooks and APIs.

* Every JSON Schema is itself valid draft 2020-12 and strict (``additionalProperties: false``).
* Hand-built payloads that mirror the code validate; a stray personal-data field is rejected.
* The payloads the real code writes to its outbox (intake → referral → notification, through the
  CloudEvents Kafka binding) validate, and carry no personal data.
* asyncapi.yaml names the catalog's topics, points at the schemas, and its examples validate.
* The committed OpenAPI documents match what the code produces.

No broker and no network: the services' use cases run against SQLite files in a temp folder.
"""

import asyncio
import copy
import importlib.util
import json
import types
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator, Draft202012Validator

from enlace_platform.contracts import FORMATS

REPO = Path(__file__).resolve().parents[2]
CONTRACTS = REPO / "contracts"
EVENTS = CONTRACTS / "events"
WEBHOOK_SCHEMA = CONTRACTS / "webhooks" / "webhook-payload.v1.schema.json"
ASYNCAPI = CONTRACTS / "asyncapi.yaml"
SCHEMA_FORMAT = "application/schema+json;version=draft-2020-12"

KNOWN_NEED_CODES = {
    "INTERNATIONAL_PROTECTION", "UNACCOMPANIED_CHILD", "SEPARATED_CHILD", "TRAFFICKING_PRESUMED",
    "SGBV_SURVIVOR", "MEDICAL_URGENT", "DISABILITY", "STATELESSNESS_RISK", "STRANDED_ASSISTED_RETURN",
    "CRIME_VICTIM",
}

def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _schema_files() -> list[Path]:
    return sorted(p for p in CONTRACTS.rglob("*.schema.json"))


def _validator(path: Path) -> Draft202012Validator:
    return Draft202012Validator(_load(path), format_checker=FORMATS)


def _errors(path: Path, instance: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in _validator(path).iter_errors(instance)]


def _event_schema(event_type: str) -> Path:
    return EVENTS / f"{event_type}.schema.json"


# --- (a) the schemas themselves --------------------------------------------------------------

def test_the_expected_schemas_exist():
    assert {p.relative_to(CONTRACTS).as_posix() for p in _schema_files()} == {
        "events/case.registered.v1.schema.json",
        "events/case.screened.v1.schema.json",
        "events/referral.requested.v1.schema.json",
        "webhooks/webhook-payload.v1.schema.json",
    }


@pytest.mark.parametrize("path", _schema_files(), ids=lambda p: p.name)
def test_schema_is_valid_draft_2020_12_and_strict(path: Path):
    schema = _load(path)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].startswith("https://") and schema["$id"].endswith("/" + path.relative_to(CONTRACTS).as_posix())
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == set(schema["properties"]), "every field the code sends is always sent"
    # Nested objects are closed too: nothing can ride along unnoticed.
    for sub in _object_schemas(schema):
        assert sub.get("additionalProperties") is False, f"open object in {path.name}: {sorted(sub.get('properties', {}))}"


def _object_schemas(node: Any):
    if isinstance(node, dict):
        if node.get("type") == "object":
            yield node
        for value in node.values():
            yield from _object_schemas(value)
    elif isinstance(node, list):
        for value in node:
            yield from _object_schemas(value)


def test_every_event_type_the_code_publishes_or_relays_has_a_schema():
    from intake.domain import events as intake_events
    from notification.domain import events as notification_events
    from referral.domain import events as referral_events

    produced = {intake_events.CASE_REGISTERED, intake_events.CASE_SCREENED, referral_events.REFERRAL_REQUESTED}
    consumed = {referral_events.CASE_SCREENED, *notification_events.WEBHOOK_EVENT_TYPES}
    for event_type in produced | consumed:
        path = _event_schema(event_type)
        assert path.is_file(), f"no schema for {event_type}"
        assert _load(path)["title"] == event_type


def _enum_at(path: Path, *pointer: str) -> list:
    node: Any = _load(path)
    for key in pointer:
        node = node[key]
    return node["enum"]


def test_need_codes_and_urgencies_agree_across_schemas_and_code():
    from intake.domain.screening import PersonFacts, ScreeningAnswers, Urgency, evaluate
    from referral.service_layer.handlers import LEAD_PRIORITY

    need_enums = [
        _enum_at(_event_schema("case.screened.v1"), "$defs", "need_code"),
        _enum_at(_event_schema("referral.requested.v1"), "$defs", "need_code"),
    ]
    for enum in need_enums:
        assert set(enum) == KNOWN_NEED_CODES and len(enum) == len(KNOWN_NEED_CODES)

    produced = evaluate(PersonFacts(age_years=None, age_disputed=True),
                        ScreeningAnswers(fear_of_return=True, travelling_with_parent_or_guardian=False,
                                         trafficking_indicators=("recruited with false job offer",)))
    assert {n.code for n in produced} <= KNOWN_NEED_CODES
    assert set(LEAD_PRIORITY) <= KNOWN_NEED_CODES
    from referral.domain.routing import NEED_CODES, URGENCIES
    assert NEED_CODES == KNOWN_NEED_CODES
    assert URGENCIES == {u.value for u in Urgency}
    directory = _load(REPO / "deploy" / "demo" / "agencies.json")
    served = {c for a in directory["agencies"] for s in a["services"] for c in s["need_codes"]}
    assert served <= KNOWN_NEED_CODES, f"directory serves unknown codes: {served - KNOWN_NEED_CODES}"

    urgencies = {u.value for u in Urgency}
    assert set(_enum_at(_event_schema("case.screened.v1"), "$defs", "urgency")) == urgencies
    assert set(_enum_at(_event_schema("referral.requested.v1"), "$defs", "urgency")) == urgencies


def test_age_bands_in_the_schema_are_exactly_those_the_code_produces():
    from intake.domain.screening import PersonFacts, age_band

    produced = {age_band(PersonFacts(age_years=a)) for a in range(0, 121)}
    produced |= {age_band(PersonFacts(age_years=None)), age_band(PersonFacts(age_years=30, age_disputed=True))}
    assert set(_enum_at(_event_schema("case.screened.v1"), "properties", "age_band")) == produced


# --- (b) hand-built payloads, mirroring the code ---------------------------------------------

CASE_ID = "6f1d9a2e-3b4c-4d5e-8f60-718293a4b5c6"
PERSON_ID = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
SCREENING_ID = "5d6e7f80-9a1b-4c2d-8e3f-4a5b6c7d8e9f"
REFERRAL_ID = "3f1c2b9e-8a8d-4a3e-9b7e-0d6a2f4c5e11"

# intake.service_layer.services.register_case
CASE_REGISTERED = {
    "case_id": CASE_ID,
    "agency_id": "MX-INM",
    "jurisdiction": "MX",
    "person_ids": [PERSON_ID, "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"],
    "encountered_at": datetime(2025, 3, 14, 3, 10, tzinfo=timezone(timedelta(hours=-6))).isoformat(),
}
# intake.service_layer.services.record_screening
CASE_SCREENED = {
    "case_id": CASE_ID,
    "screening_id": SCREENING_ID,
    "person_id": PERSON_ID,
    "registering_agency_id": "MX-INM",
    "jurisdiction": "MX",
    "rules_version": "skeleton-1",
    "age_band": "12-17",
    "languages": ["es"],
    "needs": [{"code": "UNACCOMPANIED_CHILD", "urgency": "immediate"},
              {"code": "INTERNATIONAL_PROTECTION", "urgency": "high"}],
}
# referral.service_layer.handlers.on_case_screened, routed to a directory service
REFERRAL_REQUESTED = {
    "referral_id": REFERRAL_ID,
    "case_id": CASE_ID,
    "person_id": PERSON_ID,
    "need_code": "UNACCOMPANIED_CHILD",
    "urgency": "immediate",
    "status": "requested",
    "is_lead": True,
    "from_agency_id": "MX-INM",
    "to_agency_id": "MX-PFPNNA",
    "to_service_id": "MX-PFPNNA-1",
}
# ... and with no eligible service: the coordinator's queue
REFERRAL_REQUESTED_TO_COORDINATOR = {**REFERRAL_REQUESTED, "need_code": "INTERNATIONAL_PROTECTION",
                                     "urgency": "high", "is_lead": False, "to_agency_id": None,
                                     "to_service_id": None}
# notification.domain.webhooks.thin_payload
WEBHOOK = {
    "type": "referral.requested.v1",
    "timestamp": datetime(2025, 3, 14, 15, 41, 5, 530000, tzinfo=UTC).isoformat(),
    "data": {
        "referral_id": REFERRAL_ID,
        "case_id": CASE_ID,
        "status": "requested",
        "links": {"referral": f"http://127.0.0.1:8002/referrals/{REFERRAL_ID}"},
    },
}

SAMPLES = [
    pytest.param(_event_schema("case.registered.v1"), CASE_REGISTERED, id="case.registered.v1"),
    pytest.param(_event_schema("case.screened.v1"), CASE_SCREENED, id="case.screened.v1"),
    pytest.param(_event_schema("case.screened.v1"), {**CASE_SCREENED, "needs": [], "languages": [],
                                                     "age_band": "disputed-treated-as-child"},
                 id="case.screened.v1-no-needs"),
    pytest.param(_event_schema("referral.requested.v1"), REFERRAL_REQUESTED, id="referral.requested.v1"),
    pytest.param(_event_schema("referral.requested.v1"), REFERRAL_REQUESTED_TO_COORDINATOR,
                 id="referral.requested.v1-coordinator"),
    pytest.param(WEBHOOK_SCHEMA, WEBHOOK, id="webhook"),
    pytest.param(WEBHOOK_SCHEMA, {**WEBHOOK, "data": {**WEBHOOK["data"], "status": None}},
                 id="webhook-without-status"),
]


@pytest.mark.parametrize(("schema", "payload"), SAMPLES)
def test_payload_built_like_the_code_validates(schema: Path, payload: dict):
    assert _errors(schema, payload) == []


PERSONAL_DATA = {"given_names": "Ana María", "family_names": "Pérez López", "date_of_birth": "2010-02-01",
                 "place": "Tapachula", "narrative": "..."}
# Where an extra field could hide: the top level and every nested object.
INJECTION_POINTS = [
    pytest.param(_event_schema("case.registered.v1"), CASE_REGISTERED, (), id="case.registered.v1"),
    pytest.param(_event_schema("case.screened.v1"), CASE_SCREENED, (), id="case.screened.v1"),
    pytest.param(_event_schema("case.screened.v1"), CASE_SCREENED, ("needs", 0), id="case.screened.v1-need"),
    pytest.param(_event_schema("referral.requested.v1"), REFERRAL_REQUESTED, (), id="referral.requested.v1"),
    pytest.param(WEBHOOK_SCHEMA, WEBHOOK, (), id="webhook"),
    pytest.param(WEBHOOK_SCHEMA, WEBHOOK, ("data",), id="webhook-data"),
    pytest.param(WEBHOOK_SCHEMA, WEBHOOK, ("data", "links"), id="webhook-links"),
]


@pytest.mark.parametrize(("schema", "payload", "where"), INJECTION_POINTS)
@pytest.mark.parametrize("field", sorted(PERSONAL_DATA))
def test_extra_personal_data_field_is_rejected(schema: Path, payload: dict, where: tuple, field: str):
    leaky = copy.deepcopy(payload)
    target = leaky
    for step in where:
        target = target[step]
    target[field] = PERSONAL_DATA[field]
    errors = list(_validator(schema).iter_errors(leaky))
    assert errors, f"{schema.name} accepted {field} at /{'/'.join(map(str, where))}"
    assert any(e.validator == "additionalProperties" for e in errors)


@pytest.mark.parametrize(("schema", "payload"), [p for p in SAMPLES if "coordinator" not in p.id and "without" not in p.id])
def test_every_field_is_required(schema: Path, payload: dict):
    for field in payload:
        partial = {k: v for k, v in payload.items() if k != field}
        assert _errors(schema, partial), f"{schema.name} accepted a payload without {field}"


@pytest.mark.parametrize(("schema", "payload", "why"), [
    pytest.param(_event_schema("case.registered.v1"), {**CASE_REGISTERED, "case_id": "case-1"}, "case id is a UUID",
                 id="case-id-not-uuid"),
    pytest.param(_event_schema("case.registered.v1"), {**CASE_REGISTERED, "encountered_at": "2025-03-14T03:10:00"},
                 "encounter time has an offset", id="naive-encounter-time"),
    pytest.param(_event_schema("case.registered.v1"), {**CASE_REGISTERED, "person_ids": []},
                 "a case has at least one person", id="no-persons"),
    pytest.param(_event_schema("case.screened.v1"), {**CASE_SCREENED, "needs": [{"code": "SGBV", "urgency": "high"}]},
                 "need codes are fixed", id="unknown-need-code"),
    pytest.param(_event_schema("case.screened.v1"),
                 {**CASE_SCREENED, "needs": [{"code": "SGBV_SURVIVOR", "urgency": "urgent"}]},
                 "urgencies are fixed", id="unknown-urgency"),
    pytest.param(_event_schema("case.screened.v1"),
                 {**CASE_SCREENED, "needs": [{"code": "SGBV_SURVIVOR", "urgency": "high",
                                              "reasons": ["disclosed sexual violence"]}]},
                 "reasons never leave intake", id="need-reasons"),
    pytest.param(_event_schema("case.screened.v1"), {**CASE_SCREENED, "age_band": "15"},
                 "ages travel as bands", id="exact-age"),
    pytest.param(_event_schema("referral.requested.v1"), {**REFERRAL_REQUESTED, "status": "accepted"},
                 "a requested referral is requested", id="wrong-status"),
    pytest.param(_event_schema("referral.requested.v1"), {**REFERRAL_REQUESTED, "to_agency_id": None},
                 "no service without an agency", id="service-without-agency"),
    pytest.param(_event_schema("referral.requested.v1"), {**REFERRAL_REQUESTED, "to_service_id": None},
                 "no agency without a service", id="agency-without-service"),
    pytest.param(WEBHOOK_SCHEMA, {**WEBHOOK, "type": "case.screened.v1"}, "webhooks are about referrals",
                 id="webhook-type"),
    pytest.param(WEBHOOK_SCHEMA, {**WEBHOOK, "data": {**WEBHOOK["data"], "links": {"referral": "not a url"}}},
                 "links are URLs", id="webhook-link"),
])
def test_payload_breaking_the_contract_is_rejected(schema: Path, payload: dict, why: str):
    assert _errors(schema, payload), why


# --- (b) what the real code writes -----------------------------------------------------------

@pytest.fixture
async def produced_events(tmp_path: Path) -> dict[str, list]:
    """Run intake's use cases, referral's routing and notification's webhook handler on SQLite.

    Events travel between them through the CloudEvents Kafka binding (to_kafka/from_kafka), as
    they would through the broker. Returns the outbox rows, the Kafka records and the webhook bodies.
    """
    from sqlmodel import select

    from enlace_platform.auth import Principal
    from enlace_platform.db import create_tables, make_engine, make_session_factory
    from enlace_platform.envelope import from_kafka, to_kafka
    from enlace_platform.inbox import ProcessedMessage
    from enlace_platform.outbox import OutboxMessage, envelope_of
    from intake.adapters import orm as intake_orm
    from intake.domain.screening import ScreeningAnswers
    from intake.service_layer import services as intake_services
    from notification.adapters import orm as notification_orm
    from notification.config import NotificationSettings
    from notification.service_layer.handlers import make_referral_event_handler
    from referral.adapters import orm as referral_orm
    from referral.adapters.directory import seed_if_empty
    from referral.service_layer.handlers import on_case_screened

    def database(name: str, tables: list):
        engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / name}.db")
        return engine, make_session_factory(engine, f"contract{name}"), [OutboxMessage.__table__,
                                                                        ProcessedMessage.__table__, *tables]

    async def outbox(sessions) -> list:
        async with sessions() as session:
            query = select(OutboxMessage).order_by(OutboxMessage.created_at, OutboxMessage.sequence)
            return list((await session.exec(query)).all())

    def over_kafka(row):
        key, value, headers = to_kafka(envelope_of(row))
        return (key, value, headers), from_kafka(key, value, headers)

    intake_engine, intake_sessions, intake_tables = database("intake", intake_orm.TABLES)
    referral_engine, referral_sessions, referral_tables = database("referral", referral_orm.TABLES)
    notif_engine, notif_sessions, notif_tables = database("notification", notification_orm.TABLES)
    try:
        for engine, tables in ((intake_engine, intake_tables), (referral_engine, referral_tables),
                               (notif_engine, notif_tables)):
            await create_tables(engine, tables)

        # Intake: a family in Mexico (child alone and at risk, adult, disputed age) and a case in a
        # jurisdiction the directory does not serve (its referral goes to the coordinator's queue).
        inm = Principal(subject="officer-7", agency_id="MX-INM", agency_type="migration_authority",
                        jurisdiction="MX", roles=("caseworker",))
        nowhere = Principal(subject="officer-9", agency_id="ZZ-MIG", agency_type="migration_authority",
                            jurisdiction="ZZ", roles=("caseworker",))
        at_risk = ScreeningAnswers(fear_of_return=True, travelling_with_parent_or_guardian=False,
                                   trafficking_indicators=("debt bondage",))
        plans = [
            (inm, [dict(given_names="Ana María", family_names="Pérez López", sex="female", estimated_age=15,
                        languages=["es"]),
                   dict(given_names="José", family_names="Pérez", sex="male", date_of_birth=date(1984, 5, 2),
                        nationality="HND", languages=[]),
                   dict(given_names="Luis", family_names="Pérez", sex="male", age_disputed=True,
                        languages=["es", "en"])],
             [(0, at_risk), (1, ScreeningAnswers(travelling_with_parent_or_guardian=True)), (2, ScreeningAnswers())]),
            (nowhere, [dict(given_names="Marta", family_names="Quispe", sex="female", estimated_age=30,
                            languages=["qu"])],
             [(0, ScreeningAnswers(fear_of_return=True))]),
        ]
        for principal, people, screenings in plans:
            case = intake_orm.CaseRow(agency_id="", jurisdiction="", place="Tapachula, puesto fronterizo",
                                      encountered_at=datetime(2025, 3, 14, 3, 10, tzinfo=timezone(timedelta(hours=-6))))
            persons = [intake_orm.PersonRow(case_id=case.id, **p) for p in people]
            async with intake_sessions() as session:
                await intake_services.register_case(session, principal, case, persons)
            for index, answers in screenings:
                async with intake_sessions() as session:
                    await intake_services.record_screening(session, principal, case.id, persons[index].id, answers)
        intake_rows = await outbox(intake_sessions)

        # Referral: seed the demo directory, route every screening as the consumer would.
        async with referral_sessions() as session:
            await seed_if_empty(session, REPO / "deploy" / "demo" / "agencies.json")
        intake_records = []
        for row in intake_rows:
            record, envelope = over_kafka(row)
            intake_records.append((row, record))
            if envelope.type == "case.screened.v1":
                async with referral_sessions() as session:
                    await on_case_screened(session, envelope)
                    await session.commit()
        referral_rows = await outbox(referral_sessions)

        # Notification: both parties of every referral subscribe; collect the webhook bodies.
        async with notif_sessions() as session:
            directory = _load(REPO / "deploy" / "demo" / "agencies.json")
            for agency in [a["id"] for a in directory["agencies"]] + ["ZZ-MIG"]:
                session.add(notification_orm.SubscriptionRow(
                    agency_id=agency, url=f"https://{agency.lower()}.example/hooks", secret="whsec_dGVzdA==",
                    event_types=["referral.requested.v1"]))
            await session.commit()
        handler = make_referral_event_handler(NotificationSettings(database_url="sqlite+aiosqlite:///:memory:"))
        referral_records = []
        for row in referral_rows:
            record, envelope = over_kafka(row)
            referral_records.append((row, record))
            async with notif_sessions() as session:
                await handler(session, envelope)
                await session.commit()
        async with notif_sessions() as session:
            deliveries = list((await session.exec(select(notification_orm.DeliveryRow))).all())

        return {
            "rows": intake_rows + referral_rows,
            "records": intake_records + referral_records,
            "webhooks": [json.loads(d.payload) for d in deliveries],
        }
    finally:
        for engine in (intake_engine, referral_engine, notif_engine):
            await engine.dispose()


async def test_events_the_code_writes_validate_against_their_schemas(produced_events):
    rows = produced_events["rows"]
    by_type: dict[str, list] = {}
    for row in rows:
        by_type.setdefault(row.type, []).append(json.loads(row.payload))
    assert len(by_type["case.registered.v1"]) == 2
    assert len(by_type["case.screened.v1"]) == 4
    # One referral per distinct need of each screening (the rules may grow; the count follows them).
    assert len(by_type["referral.requested.v1"]) == sum(
        len({n["code"] for n in s["needs"]}) for s in by_type["case.screened.v1"])
    for event_type, payloads in by_type.items():
        for payload in payloads:
            assert _errors(_event_schema(event_type), payload) == [], (event_type, payload)

    referrals = by_type["referral.requested.v1"]
    assert any(r["to_agency_id"] is None and r["to_service_id"] is None for r in referrals), \
        "the coordinator-queue case (nullable fields) is covered"
    assert any(r["to_agency_id"] for r in referrals)
    assert {s["age_band"] for s in by_type["case.screened.v1"]} >= {"12-17", "18-59", "disputed-treated-as-child"}


async def test_webhook_bodies_the_code_builds_validate(produced_events):
    webhooks = produced_events["webhooks"]
    referrals = [json.loads(r.payload) for r in produced_events["rows"] if r.type == "referral.requested.v1"]
    # Every agency subscribed: each referral reaches its sender and, when routed, its receiver.
    assert len(webhooks) == sum(len({r["from_agency_id"], r["to_agency_id"]} - {None}) for r in referrals) > 0
    for body in webhooks:
        assert _errors(WEBHOOK_SCHEMA, body) == [], body


async def test_kafka_records_follow_the_cloudevents_binding_in_asyncapi(produced_events):
    doc = yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))
    headers_schema = doc["components"]["schemas"]["cloudEventHeaders"]
    validator = Draft7Validator(headers_schema, format_checker=FORMATS)
    for row, (key, value, headers) in produced_events["records"]:
        names = [name for name, _ in headers]
        assert len(names) == len(set(names)), names
        header_map = {name: raw.decode() for name, raw in headers}
        assert list(validator.iter_errors(header_map)) == [], header_map
        payload = json.loads(value)
        assert key.decode() == payload["case_id"] == row.aggregateid, "the key is the case id"
        assert header_map["ce_type"] == row.type and header_map["ce_id"] == row.id
        subject_field = {"case.registered.v1": "case_id", "case.screened.v1": "screening_id",
                         "referral.requested.v1": "referral_id"}[row.type]
        assert header_map["ce_subject"] == payload[subject_field]
        message = _asyncapi_message(doc, row.type)
        overrides = message["headers"]["allOf"][1]["properties"]
        assert header_map["ce_source"] == overrides["ce_source"]["const"]


async def test_no_personal_data_reaches_the_bus_or_the_webhooks(produced_events):
    texts = [row.payload for row in produced_events["rows"]]
    texts += [json.dumps(w, ensure_ascii=False) for w in produced_events["webhooks"]]
    texts += [b"".join(v for _, v in headers).decode() for _, (_, _, headers) in produced_events["records"]]
    for text in texts:
        for secret in ("Ana", "María", "Pérez", "José", "Luis", "Marta", "Quispe", "Tapachula", "HND", "1984-05-02",
                       "debt bondage", "officer-"):
            assert secret not in text, f"{secret!r} leaked into {text[:200]}"


async def test_dead_letter_headers_are_the_ones_asyncapi_documents():
    from enlace_platform.consumer import ConsumerRunner

    class CapturingProducer:
        def __init__(self):
            self.sent = []

        async def send(self, topic, value=None, key=None, headers=None):
            self.sent.append((topic, key, value, headers))
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done

    producer = CapturingProducer()
    runner = ConsumerRunner(name="referral.routing", group_id="referral.routing", topics=["intake.case"],
                            handlers={}, session_factory=None, bootstrap_servers="unused:9092",
                            dlq_producer=producer, service_name="referral")
    # A record without ce_specversion is malformed: dead-lettered at once, without touching the database.
    record = types.SimpleNamespace(topic="intake.case", partition=2, offset=41, key=CASE_ID.encode(),
                                   value=b'{"case_id": "x"}', headers=[("ce_type", b"case.screened.v1")])
    await runner._process(record)

    assert len(producer.sent) == 1
    topic, key, value, headers = producer.sent[0]
    assert (topic, key, value) == ("intake.case.dlq", record.key, record.value)
    header_map = {name: raw.decode() for name, raw in headers}
    assert header_map["ce_type"] == "case.screened.v1", "original headers are kept"

    doc = yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))
    dlq_schema = doc["components"]["schemas"]["deadLetterHeaders"]
    written = {name for name in header_map if name.startswith("dlq_")}
    assert written == set(dlq_schema["required"]) == set(dlq_schema["properties"])
    assert list(Draft7Validator(dlq_schema).iter_errors(header_map)) == []
    assert header_map["dlq_attempts"] == "1" and header_map["dlq_original_offset"] == "41"


# --- asyncapi.yaml ---------------------------------------------------------------------------

def _asyncapi_message(doc: dict, event_type: str) -> dict:
    matches = [m for m in doc["components"]["messages"].values() if m.get("name") == event_type]
    assert len(matches) == 1, f"one AsyncAPI message named {event_type}"
    return matches[0]


def _resolve_pointer(doc: dict, ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _refs(node: Any):
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_asyncapi_document_is_consistent_with_the_topic_catalog_and_schemas():
    from enlace_platform.topics import all_topics

    doc = yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))
    assert doc["asyncapi"] == "3.0.0"
    assert doc["servers"]["local"]["host"] == "127.0.0.1:9092" and doc["servers"]["local"]["protocol"] == "kafka"
    assert sorted(c["address"] for c in doc["channels"].values()) == sorted(all_topics())

    for ref in _refs(doc):
        if ref.startswith("#/"):
            _resolve_pointer(doc, ref)  # raises if dangling
        else:
            assert (ASYNCAPI.parent / ref).is_file(), f"dangling $ref {ref}"

    for op_name, op in doc["operations"].items():
        assert op["action"] in {"send", "receive"}, op_name
        channel_ref = op["channel"]["$ref"]
        for message in op.get("messages", []):
            assert message["$ref"].startswith(channel_ref + "/messages/"), f"{op_name}: message not in its channel"

    for name in ("case.registered.v1", "case.screened.v1", "referral.requested.v1"):
        message = _asyncapi_message(doc, name)
        assert message["payload"]["schemaFormat"] == SCHEMA_FORMAT
        assert message["payload"]["schema"]["$ref"] == f"./events/{name}.schema.json"
        key = _resolve_pointer(doc, message["bindings"]["$ref"])["kafka"]["key"]
        assert key["type"] == "string" and "case id" in key["description"]


def test_asyncapi_examples_validate():
    doc = yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))
    headers_validator = Draft7Validator(doc["components"]["schemas"]["cloudEventHeaders"], format_checker=FORMATS)
    checked = 0
    for message in doc["components"]["messages"].values():
        schema_ref = message["payload"]["schema"].get("$ref")
        if schema_ref is None:
            continue
        schema = ASYNCAPI.parent / schema_ref
        for example in message.get("examples", []):
            assert _errors(schema, example["payload"]) == [], (message["name"], example["name"])
            if "headers" in example:
                assert list(headers_validator.iter_errors(example["headers"])) == []
                assert example["headers"]["ce_type"] == message["name"]
            checked += 1
    assert checked >= 4


# --- (c) OpenAPI drift -----------------------------------------------------------------------

def _export_module():
    spec = importlib.util.spec_from_file_location("export_openapi", REPO / "deploy" / "export_openapi.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_openapi_matches_the_code():
    export = _export_module()
    stale = export.drifted()
    assert stale == [], f"run `python deploy/export_openapi.py`; stale: {[p.name for p in stale]}"
    for service in export.SERVICES:
        doc = _load(CONTRACTS / "openapi" / f"{service}.json")
        assert doc["openapi"].startswith("3.") and doc["info"]["title"] == f"Enlace {service}"


def test_openapi_check_names_the_files_that_differ(tmp_path: Path, capsys):
    export = _export_module()
    for name, text in export.rendered_specs().items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    assert export.main(["--check", "--out-dir", str(tmp_path)]) == 0
    (tmp_path / "referral.json").write_text("{}\n", encoding="utf-8")
    assert export.main(["--check", "--out-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "referral.json" in err and "intake.json differs" not in err


def test_committed_asyncapi_matches_the_code_and_schemas():
    spec = importlib.util.spec_from_file_location("export_asyncapi", REPO / "deploy" / "export_asyncapi.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert ASYNCAPI.read_text(encoding="utf-8") == module.render(module.build()), \
        "run `python deploy/export_asyncapi.py`"
