"""Published contracts (contracts/) against the code that produces the events, webhooks and APIs.

* Every JSON Schema is itself valid draft 2020-12 and strict (``additionalProperties: false``).
* Hand-built payloads that mirror the code validate; a stray personal-data field is rejected.
* One schema per published event type; every type a service publishes or consumes has one.
* asyncapi.yaml names the catalog's topics, points at the schemas, and its examples validate.
* The committed OpenAPI documents and asyncapi.yaml match what the code produces.

What the real code writes is checked per service (test_<service>_events.py) and, on the real
topics, by tests/e2e/test_system.py. No broker and no network here.
"""

import asyncio
import copy
import importlib.util
import json
import types
from datetime import UTC, datetime, timedelta, timezone
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

def _published_types() -> set[str]:
    from intake.domain import events as intake_events
    from referral.domain import events as referral_events

    return {*intake_events.PUBLISHED, *referral_events.PUBLISHED}


def test_there_is_one_schema_per_published_event_type_and_one_for_webhooks():
    assert {p.relative_to(CONTRACTS).as_posix() for p in _schema_files()} == {
        *(f"events/{t}.schema.json" for t in _published_types()), "webhooks/webhook-payload.v1.schema.json"}


# Properties a published version gained after its first release: optional, so earlier events stay
# valid (docs/event-catalog.md, compatibility rule). Every other property is always sent.
ADDED_LATER = {
    "case.screened.v1.schema.json": {"consent_scope"},
    "referral.reassigned.v1.schema.json": {"previous_to_agency_id"},
    "referral.requested.v1.schema.json": {"to_agency_type", "coordinator_agency_id", "due_at", "previous_referral_id",
                                          "actor_agency_id", "reason_code", "outcome_code", "occurred_at"},
}


@pytest.mark.parametrize("path", _schema_files(), ids=lambda p: p.name)
def test_schema_is_valid_draft_2020_12_and_strict(path: Path):
    schema = _load(path)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].startswith("https://") and schema["$id"].endswith("/" + path.relative_to(CONTRACTS).as_posix())
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    optional = set(schema["properties"]) - set(schema["required"])
    assert set(schema["required"]) <= set(schema["properties"])
    assert optional == ADDED_LATER.get(path.name, set()), "every field is required unless added to a published version"
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


def test_every_event_type_the_code_publishes_or_consumes_has_a_schema():
    from enlace_platform.contracts import published_contracts
    from intake.bootstrap import build_runtime as intake_runtime
    from intake.config import IntakeSettings
    from notification.bootstrap import build_runtime as notification_runtime
    from notification.config import NotificationSettings
    from referral.bootstrap import build_runtime as referral_runtime
    from referral.config import ReferralSettings

    memory = "sqlite+aiosqlite:///:memory:"
    consumed = {event_type
                for runtime in (intake_runtime(IntakeSettings(database_url=memory)),
                                referral_runtime(ReferralSettings(database_url=memory)),
                                notification_runtime(NotificationSettings(database_url=memory)))
                for spec in runtime.consumers for event_type in spec.handlers}
    for event_type in _published_types() | consumed:
        path = _event_schema(event_type)
        assert path.is_file(), f"no schema for {event_type}"
        assert _load(path)["title"] == event_type
    assert published_contracts().event_types == _published_types()


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


# --- (b) what the real code writes: each service's tests/contracts/test_<service>_events.py checks its
# own outbox; tests/e2e/test_system.py checks every record of the demo flow on the real topics with kcat.

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
    assert checked >= 4, "the examples in the schemas reach asyncapi.yaml"


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
