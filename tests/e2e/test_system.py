"""The whole system as `make up` runs it: three service processes, Kafka, Zipkin, and the demo flow.

Then two outsiders check it:
* kcat (C, from Debian) reads every topic and each record's headers and payload are checked against
  contracts/ — an integrator in another language sees exactly what the contracts promise;
* Zipkin's API shows each journey as one trace across the three services, from the intake POST
  to the webhook POST.
"""

import importlib.util
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft7Validator, Draft202012Validator

from enlace_platform.contracts import FORMATS
from enlace_platform.topics import CATALOG, all_topics
from tests.support.harness import REPO, bearer, database_bytes, free_port, provision_topics, unique_prefix

pytestmark = pytest.mark.kafka

CONTRACTS = REPO / "contracts"
SERVICES = ("intake", "referral", "notification")
# ce_subject names the thing an event is about (docs/event-catalog.md).
SUBJECT_FIELDS = {"case.registered.v1": "case_id", "case.screened.v1": "screening_id",
                  "consent.changed.v1": "consent_id", "person.erased.v1": "person_id", "referral": "referral_id",
                  "protection_hold": "hold_id", "agency": "agency_id"}
# Every topic is keyed by case id except the directory's, keyed by agency id (compacted).
KEY_FIELDS = {"agency.changed.v1": "agency_id"}


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def zipkin(tmp_path_factory):
    port = free_port()
    env = {**os.environ, "ZIPKIN_PORT": str(port), "ZIPKIN_STATE_DIR": str(tmp_path_factory.mktemp("zipkin"))}
    script = REPO / "deploy" / "zipkin" / "zipkin.sh"
    subprocess.run([str(script), "start"], env=env, check=True, timeout=180)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        subprocess.run([str(script), "stop"], env=env, timeout=60)


@pytest.fixture(scope="module")
async def system(kafka_bootstrap, zipkin, dev_issuer_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("system")
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    ports = {name: free_port() for name in SERVICES}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    env = {
        **os.environ,
        "ENLACE_RUN_DIR": str(run_dir),
        **{f"{name.upper()}_PORT": str(port) for name, port in ports.items()},
        **{f"{name.upper()}_DATABASE_URL": f"sqlite+aiosqlite:///{run_dir / name}.db" for name in SERVICES},
        **{f"{name.upper()}_PUBLIC_BASE_URL": url for name, url in urls.items()},
        "ENLACE_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "ENLACE_KAFKA_TOPIC_PREFIX": prefix,
        "ENLACE_AUTH_DEV_PUBLIC_KEY_PATH": str(dev_issuer_dir / "public.pem"),
        "ENLACE_OUTBOX_FALLBACK_POLL_S": "0.5",
        "NOTIFICATION_WEBHOOK_ALLOW_LOOPBACK": "true",  # as make up sets it: the demo's receiver is on loopback
        "OTEL_TRACES_EXPORTER": "zipkin",
        "OTEL_EXPORTER_ZIPKIN_ENDPOINT": f"{zipkin}/api/v2/spans",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "PYTHON_BIN": sys.executable,
    }
    services = REPO / "deploy" / "services.sh"
    subprocess.run([str(services), "start"], env=env, check=True, timeout=180)
    try:
        yield {"env": env, "urls": urls, "prefix": prefix, "bootstrap": kafka_bootstrap, "run_dir": run_dir}
    finally:
        subprocess.run([str(services), "stop"], env=env, timeout=120)


@pytest.fixture(scope="module")
def demo(system, dev_issuer_dir):
    urls = system["urls"]
    env = {**system["env"], "DEMO_INTAKE_URL": urls["intake"], "DEMO_REFERRAL_URL": urls["referral"],
           "DEMO_NOTIFICATION_URL": urls["notification"], "DEMO_RECEIVER_PORT": str(free_port()),
           "DEMO_KEY_DIR": str(dev_issuer_dir), "DEMO_SUMMARY_PATH": str(system["run_dir"] / "demo.json")}
    result = subprocess.run([sys.executable, str(REPO / "deploy" / "demo" / "run_demo.py")], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"demo failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return json.loads((system["run_dir"] / "demo.json").read_text())


def _kcat_records(bootstrap: str, topic: str) -> list[dict]:
    kcat = shutil.which("kcat")
    assert kcat, "kcat (Debian package kcat) is needed: .ci/run installs it"
    result = subprocess.run([kcat, "-b", bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-J", "-q"],
                            capture_output=True, text=True, timeout=60, check=True)
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def _asyncapi_header_validator() -> Draft7Validator:
    doc = yaml.safe_load((CONTRACTS / "asyncapi.yaml").read_text())
    return Draft7Validator(doc["components"]["schemas"]["cloudEventHeaders"], format_checker=FORMATS)


def test_kcat_reads_every_event_of_the_demo_and_each_matches_the_published_contracts(system, demo):
    headers_schema = _asyncapi_header_validator()
    seen_types: dict[str, int] = defaultdict(int)
    problems: list[str] = []
    for base in CATALOG:
        for record in _kcat_records(system["bootstrap"], system["prefix"] + base):
            flat = record.get("headers") or []
            headers = dict(zip(flat[::2], flat[1::2], strict=True))
            where = f"{base}[{record['partition']}]@{record['offset']}"
            problems += [f"{where} header {'/'.join(map(str, e.path))}: {e.message}"
                         for e in headers_schema.iter_errors(headers)]
            event_type = headers.get("ce_type", "?")
            schema_path = CONTRACTS / "events" / f"{event_type}.schema.json"
            if not schema_path.is_file():
                problems.append(f"{where}: no schema for {event_type}")
                continue
            payload = json.loads(record["payload"])
            validator = Draft202012Validator(json.loads(schema_path.read_text()), format_checker=FORMATS)
            problems += [f"{where} {event_type} {'/'.join(map(str, e.absolute_path))}: {e.message}"
                         for e in validator.iter_errors(payload)]
            key_field = KEY_FIELDS.get(event_type, "case_id")
            if record["key"] != payload.get(key_field):
                problems.append(f"{where}: key {record['key']!r} is not the payload's {key_field}")
            subject_field = SUBJECT_FIELDS.get(event_type) or SUBJECT_FIELDS[event_type.split(".")[0]]
            if headers.get("ce_subject") != payload.get(subject_field):
                problems.append(f"{where}: ce_subject is not the payload's {subject_field}")
            seen_types[event_type] += 1
    assert problems == []
    assert set(demo["event_types"]) <= set(seen_types), f"kcat saw {dict(seen_types)}"
    # The enforcement side's redacted mirror and the directory's snapshots are on the bus too.
    assert {"referral.status_changed.v1", "agency.changed.v1"} <= set(seen_types), f"kcat saw {dict(seen_types)}"


def _find_journey_trace(zipkin: str, deadline_s: float = 60) -> tuple[list[dict], list]:
    traces: list = []
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        # Journeys start with intake's screening POST; Zipkin keeps span names in lower case.
        traces = _get_json(f"{zipkin}/api/v2/traces?serviceName=intake&spanName=post%20/cases/%7Bcase_id%7D/screenings"
                           "&limit=50&lookback=3600000")
        for trace in traces:
            services = {span.get("localEndpoint", {}).get("serviceName") for span in trace}
            webhook_posts = [s for s in trace if s.get("kind") == "CLIENT"
                             and s.get("localEndpoint", {}).get("serviceName") == "notification"
                             and s.get("tags", {}).get("http.request.method", s.get("tags", {}).get("http.method")) == "POST"]
            intake_posts = [s for s in trace if s.get("kind") == "SERVER"
                            and s.get("localEndpoint", {}).get("serviceName") == "intake"
                            and s.get("name", "").lower().startswith("post ")]
            if set(SERVICES) <= services and webhook_posts and intake_posts:
                return trace, traces
        time.sleep(1)
    return [], traces


def test_zipkin_shows_a_journey_as_one_trace_from_the_intake_post_to_the_webhook_post(system, demo, zipkin):
    trace, traces = _find_journey_trace(zipkin)
    summary = [sorted({s.get("localEndpoint", {}).get("serviceName") for s in t}) for t in traces[:10]]
    assert trace, f"no trace spans intake → referral → notification with the webhook POST; traces seen: {summary}"
    assert len({span["traceId"] for span in trace}) == 1
    kafka_consumers = {s["localEndpoint"]["serviceName"] for s in trace if s.get("kind") == "CONSUMER"}
    assert {"referral", "notification"} <= kafka_consumers


def _metrics(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    return {name: float(value) for name, value in (line.rsplit(" ", 1) for line in lines
                                                   if line and not line.startswith("#"))}


def test_each_service_serves_prometheus_metrics_after_the_demo(system, demo):
    metrics = {name: _metrics(url) for name, url in system["urls"].items()}
    for name, samples in metrics.items():
        assert "enlace_outbox_backlog" in samples, name
        assert any('outcome="handled"' in sample and value > 0 for sample, value in samples.items()
                   if sample.startswith("enlace_handler_duration_seconds_count")), f"{name} handled no event"
    referral, notification = metrics["referral"], metrics["notification"]
    assert referral['enlace_referrals{status="completed"}'] >= 1
    assert referral["enlace_protection_holds_active"] >= 1
    assert "enlace_referrals_overdue" in referral and "enlace_referrals_unassigned" in referral
    assert notification['enlace_notification_deliveries{channel="webhook",status="delivered"}'] >= demo["webhooks"]


def _demo_personal_data() -> list[str]:
    spec = importlib.util.spec_from_file_location("run_demo", REPO / "deploy" / "demo" / "run_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    values = []
    for person in module.FAMILY["persons"]:
        values += [person["given_names"], person["family_names"]]
        values += [document["number"] for document in person.get("documents", [])]
    return values


def _scrape_text(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        return response.read().decode()


def _leaks(personal: list[str], places: dict[str, str]) -> list[tuple[str, str]]:
    return [(value, where) for where, text in places.items() for value in personal
            if value in text or value in text.encode("unicode_escape").decode()]


def test_no_name_or_document_number_of_the_demo_leaves_intake(system, demo, zipkin, dev_issuer_dir):
    """Issue 6: after the whole flow, the persons' names and document numbers are in none of the Kafka
    records (dead-letter topics included), log lines, spans, or metric series of any service."""
    personal = _demo_personal_data()
    places = {f"kafka {topic}": json.dumps(_kcat_records(system["bootstrap"], topic), ensure_ascii=False)
              for topic in all_topics(system["prefix"])}
    places |= {f"log {name}": Path(system["run_dir"], "logs", f"{name}.log").read_text() for name in SERVICES}
    places |= {f"metrics {name}": _scrape_text(url) for name, url in system["urls"].items()}
    for name in SERVICES:
        traces = _get_json(f"{zipkin}/api/v2/traces?serviceName={name}&limit=1000&lookback=3600000")
        places[f"traces {name}"] = json.dumps(traces, ensure_ascii=False)
    assert all(places[f"kafka {system['prefix']}{base}"] for base in CATALOG)
    assert all(places[f"{kind} {name}"] for kind in ("log", "metrics", "traces") for name in SERVICES)
    assert _leaks(personal, places) == []

    # The scan looks for what is really there: intake serves the names to the agency that registered them.
    inm = bearer(dev_issuer_dir, "MX-INM", "migration_authority", "MX")
    request = urllib.request.Request(f"{system['urls']['intake']}/cases/{demo['case_id']}", headers=inm)
    with urllib.request.urlopen(request, timeout=5) as response:
        case_view = response.read().decode()
    assert "Demo Ramos" in case_view


def test_intake_keeps_personal_data_sealed_and_the_erased_person_is_gone(system, demo):
    """Read as a database dump would be: the intake and referral database files (and their write-ahead
    logs) hold no name or document number in clear; the erased person's key is gone."""
    personal = _demo_personal_data()
    files = {name: database_bytes(system["env"][f"{name.upper()}_DATABASE_URL"]).decode("latin-1")
             for name in ("intake", "referral")}
    assert all(files.values())
    utf8 = [v.encode().decode("latin-1") for v in personal]  # the files hold UTF-8 bytes
    assert [(v, where) for where, text in files.items() for v in utf8 if v in text] == []
    with sqlite3.connect(system["run_dir"] / "intake.db") as db:
        keys = {row[0] for row in db.execute("SELECT subject_id FROM subject_keys")}
    assert demo["erased_person_id"] not in keys
    assert len(keys) >= 4, "the other persons of the family still have their keys"


def test_service_logs_are_json_lines_with_trace_and_service(system, demo):
    for name in SERVICES:
        lines = Path(system["run_dir"], "logs", f"{name}.log").read_text().splitlines()
        parsed = [json.loads(line) for line in lines if line.startswith("{")]
        assert parsed, f"{name} wrote no JSON log lines"
        assert len(parsed) == len([line for line in lines if line.strip()]), f"{name} wrote non-JSON lines"
        assert all(entry["service"] == name for entry in parsed)
