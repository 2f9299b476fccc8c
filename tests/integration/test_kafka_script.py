"""deploy/kafka/kafka.sh: starting twice is harmless, and stopping leaves nothing running."""

import os
import subprocess

import pytest

from tests.support.harness import REPO, free_port

pytestmark = pytest.mark.kafka

SCRIPT = str(REPO / "deploy" / "kafka" / "kafka.sh")


def _run(command: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([SCRIPT, command], env=env, capture_output=True, text=True, timeout=180)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_start_twice_then_stop_leaves_no_broker(tmp_path):
    env = {**os.environ, "KAFKA_STATE_DIR": str(tmp_path / "kafka"), "KAFKA_PORT": str(free_port()),
           "KAFKA_CONTROLLER_PORT": str(free_port())}
    first = _run("start", env)
    assert first.returncode == 0, first.stderr
    pid = int((tmp_path / "kafka" / "kafka.pid").read_text())
    try:
        second = _run("start", env)
        assert second.returncode == 0 and "already running" in second.stderr
        assert int((tmp_path / "kafka" / "kafka.pid").read_text()) == pid, "no second broker was started"
        assert _run("status", env).returncode == 0
    finally:
        stopped = _run("stop", env)
    assert stopped.returncode == 0, stopped.stderr
    assert not _alive(pid)
    assert _run("status", env).returncode == 1
    assert _run("stop", env).returncode == 0, "stopping a stopped broker is harmless too"
