"""Session-wide fixtures: one real Kafka broker per test session, and an in-memory span exporter.

The broker is started by the project's own script (deploy/kafka/kafka.sh) on a free port with
its state in a temp folder, so it never collides with `make up`. Set ENLACE_TEST_KAFKA_BOOTSTRAP
to use an already running broker instead. Tests isolate themselves with unique topic prefixes
and consumer groups. If the broker cannot start, Kafka tests fail; they are never skipped.
"""

import os
import socket
import subprocess
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from enlace_platform.dev_issuer import ensure_keypair
from tests.support.database_support import databases, postgres_cluster  # noqa: F401 - fixtures of the whole suite

REPO = Path(__file__).resolve().parents[1]
# The session's broker is a single node: topics get one replica (bus.yaml declares three, for clusters).
# The cluster tests (tests/cluster) give their own replication factor explicitly.
os.environ.setdefault("ENLACE_KAFKA_REPLICATION_FACTOR", "1")

# Installed before any service app exists, so every span of the session lands here.
SPANS = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(SPANS))
trace.set_tracer_provider(_provider)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory):
    external = os.environ.get("ENLACE_TEST_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    port = _free_port()
    controller_port = _free_port()
    env = {
        **os.environ,
        "KAFKA_STATE_DIR": str(tmp_path_factory.mktemp("kafka")),
        "KAFKA_PORT": str(port),
        "KAFKA_CONTROLLER_PORT": str(controller_port),
    }
    script = REPO / "deploy" / "kafka" / "kafka.sh"
    started = subprocess.run([str(script), "start"], env=env, capture_output=True, text=True, timeout=180)
    if started.returncode != 0:
        pytest.fail(f"could not start the test Kafka broker:\n{started.stderr}", pytrace=False)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(script), "stop"], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="session")
def dev_issuer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key_dir = tmp_path_factory.mktemp("dev-issuer")
    ensure_keypair(key_dir)
    return key_dir


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return SPANS


_skipped_kafka_tests: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The Helm chart's tests go last: on a new machine helm is still being built beside the suite
    # (deploy/prerequisites.sh starts it in the background; deploy/k8s/helm.sh waits for that build).
    last = [item for item in items if item.nodeid.startswith("tests/deploy/test_k8s.py")]
    items[:] = [item for item in items if item not in last] + last


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and "kafka" in report.keywords:
        _skipped_kafka_tests.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # In CI a Kafka test that did not run is a failure, whatever the reason.
    if os.environ.get("CI") and _skipped_kafka_tests:
        print(f"\nKafka tests did not run in CI: {_skipped_kafka_tests}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
