"""SIGTERM during a broker outage: a real service process (uvicorn, as deploy/services.sh runs it) ends within
the bound, and loses nothing: once broker and service are back, every write's event reaches its topic."""

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.broker import DisposableBroker
from tests.support.harness import REPO, envelopes, eventually, free_port, provision_topics, read_topic, unique_prefix
from tests.support.intake_support import family_group, inm

pytestmark = pytest.mark.kafka

SHUTDOWN_BOUND_S = 20  # issue 13: SIGTERM ends each service within 20 s, whatever the broker does
CASES_DURING_OUTAGE = 5


def graceful_shutdown_flag() -> list[str]:
    """uvicorn's --timeout-graceful-shutdown as deploy/services.sh passes it: the test runs what is deployed."""
    found = re.search(r"--timeout-graceful-shutdown\s+(\d+)", (REPO / "deploy" / "services.sh").read_text())
    assert found, "deploy/services.sh must bound the requests in flight at shutdown"
    return ["--timeout-graceful-shutdown", found.group(1)]


class IntakeProcess:
    """Intake as its own uvicorn process, with its own SQLite database and environment."""

    def __init__(self, tmp_path: Path, bootstrap: str, prefix: str, dev_issuer_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / "intake.log"
        self.env = {
            **os.environ,
            "INTAKE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'intake.db'}",
            "INTAKE_PUBLIC_BASE_URL": self.url,
            "ENLACE_DATA_KEY_FILE": str(tmp_path / "intake-data.key"),
            "ENLACE_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "ENLACE_KAFKA_TOPIC_PREFIX": prefix,
            "ENLACE_AUTH_DEV_PUBLIC_KEY_PATH": str(dev_issuer_dir / "public.pem"),
            "ENLACE_OUTBOX_FALLBACK_POLL_S": "0.5",
            "ENLACE_OUTBOX_RETRY_MAX_S": "2",  # after the outage the rows go soon, not after a long backoff
            "ENLACE_LOG_JSON": "false",
            "OTEL_TRACES_EXPORTER": "none",
        }
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = self.log_path.open("a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "intake.entrypoints.app:create_app",
             "--host", "127.0.0.1", "--port", str(self.port), "--no-access-log", *graceful_shutdown_flag()],
            cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()

    async def ready(self, client: httpx.AsyncClient) -> None:
        """/readyz answers 200 (database and Kafka), and both consumers hold their partitions."""
        async def consuming() -> bool:
            assert self.process.poll() is None, f"intake exited:\n{self.log_tail()}"
            try:
                if (await client.get(f"{self.url}/readyz")).status_code != 200:
                    return False
                scraped = (await client.get(f"{self.url}/metrics")).text
            except httpx.TransportError:
                return False
            return all(f'enlace_consumer_lag{{consumer="{name}"' in scraped
                       for name in ("intake.protection-holds", "intake.referrals"))

        await eventually(consuming, timeout=120, interval=0.5, what="intake ready and consuming")

    async def terminate(self) -> float:
        """SIGTERM, then the seconds until the process is gone; SIGKILL (and a failure) past the bound."""
        sent = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.process.wait, SHUTDOWN_BOUND_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"intake still running {SHUTDOWN_BOUND_S}s after SIGTERM:\n{self.log_tail()}")
        return time.monotonic() - sent

    def ended_gracefully(self) -> bool:
        """uvicorn ran its shutdown to the end (it then exits by the signal it got, as the default would)."""
        return self.process.returncode in (0, -signal.SIGTERM) and "Finished server process" in self.log_tail(5)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


async def test_sigterm_during_a_broker_outage_ends_in_bounded_time_and_loses_no_write(tmp_path, dev_issuer_dir):
    prefix = unique_prefix()
    officer = inm(dev_issuer_dir)
    async with DisposableBroker(tmp_path / "kafka") as broker, httpx.AsyncClient(timeout=60) as client:
        await provision_topics(broker.bootstrap, prefix)
        intake = IntakeProcess(tmp_path, broker.bootstrap, prefix, dev_issuer_dir)
        try:
            intake.start()
            await intake.ready(client)
            before = await client.post(f"{intake.url}/cases", headers=officer, json=family_group())
            assert before.status_code == 201, before.text

            await broker.stop()
            written = [before.json()["id"]]
            for _ in range(CASES_DURING_OUTAGE):
                response = await client.post(f"{intake.url}/cases", headers=officer, json=family_group())
                assert response.status_code == 201, response.text  # the outbox keeps them
                written.append(response.json()["id"])
            read_back = await client.get(f"{intake.url}/cases/{written[-1]}", headers=officer)
            assert read_back.status_code == 200, read_back.text

            took_s = await intake.terminate()
            print(f"intake ended {took_s:.1f}s after SIGTERM, the broker down")  # the figure, in -s runs
            assert intake.ended_gracefully(), intake.log_tail()

            await broker.start()
            intake.start()  # same database, same environment
            await intake.ready(client)
            records = await read_topic(broker.bootstrap, prefix + "intake.case", expected=len(written), timeout=90)
            registered = {e.data["case_id"] for e in envelopes(records) if e.type == "case.registered.v1"}
            assert set(written) <= registered, "a write made before SIGTERM never reached its topic"

            took_s = await intake.terminate()  # and with the broker up, of course
            print(f"intake ended {took_s:.1f}s after SIGTERM, the broker up")
            assert intake.ended_gracefully(), intake.log_tail()
        finally:
            intake.kill()
