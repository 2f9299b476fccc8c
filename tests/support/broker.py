"""A Kafka broker of a test's own, to stop and start again: for outage tests.

The session broker (tests/conftest.py) is shared by every test and must never be stopped. An outage test
starts a :class:`DisposableBroker` instead::

    from tests.support.broker import DisposableBroker

    async def test_something_during_an_outage(tmp_path):
        async with DisposableBroker(tmp_path / "kafka") as broker:   # started and answering
            await provision_topics(broker.bootstrap, prefix)
            ...                                                      # services on broker.bootstrap
            await broker.stop()     # graceful (SIGTERM); kill() is the abrupt kill -9
            ...                                                      # the outage
            await broker.start()    # same ports, same data: topics, records, offsets and producer ids survive
        # leaving the block stops the broker (whatever state it is in)

- It runs the project's own script (deploy/kafka/kafka.sh) with its own free ports and its own state
  folder, so it never touches the session broker or `make up`'s.
- ``start()``, ``stop()``, ``kill()`` and ``restart()`` are coroutines: the script runs in a subprocess,
  so the test's event loop (and the services in it) keeps running meanwhile. Each returns once the broker
  answers (start) or its process is gone (stop, kill). ``start_sync()``/``stop_sync()`` do the same from
  plain code (e.g. a sync fixture).
- ``running`` says whether its process is alive. Startup takes ~5-10 s on a 2-core machine.
"""

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from tests.support.harness import REPO, free_port

SCRIPT = REPO / "deploy" / "kafka" / "kafka.sh"


class BrokerScriptFailed(RuntimeError):
    """deploy/kafka/kafka.sh exited with an error; the message carries its output."""


class DisposableBroker:
    """One single-node Kafka (KRaft) on 127.0.0.1 with free ports and a state folder of its own.

    ``state_dir``: where its data, config and logs go (default: a new temp folder). Given a folder that
    already holds a broker's data, it comes up with that data.
    """

    def __init__(self, state_dir: Path | None = None, *, heap: str = "384m", start_timeout_s: float = 120) -> None:
        self._own_state_dir = state_dir is None  # removed when the context manager ends
        self.state_dir = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="enlace-kafka-"))
        self.port = free_port()
        self.controller_port = free_port()
        self._heap = heap
        self._start_timeout_s = start_timeout_s

    @property
    def bootstrap(self) -> str:
        """The bootstrap address for clients: the same across stop and start."""
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        pid = self._pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    async def start(self) -> None:
        """Start it (with the data it had, if any) and return once it answers metadata requests."""
        await self._script_async("start", self._start_timeout_s)

    async def stop(self) -> None:
        """Shut it down gracefully (SIGTERM; the script escalates to SIGKILL after 30 s). Its data stays."""
        await self._script_async("stop", 60)

    async def kill(self) -> None:
        """Kill it abruptly (SIGKILL), as a crash or a pulled cable would. Its data stays."""
        pid = self._pid()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            while self.running:
                await asyncio.sleep(0.1)
        await self.stop()  # clears the pid file

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    def start_sync(self) -> None:
        self._script_sync("start", self._start_timeout_s)

    def stop_sync(self) -> None:
        self._script_sync("stop", 60)

    async def __aenter__(self) -> "DisposableBroker":
        await self.start()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()
        if self._own_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KAFKA_STATE_DIR": str(self.state_dir),
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(self.controller_port),
            "KAFKA_HEAP": self._heap,
        }

    def _pid(self) -> int | None:
        try:
            return int((self.state_dir / "kafka.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    async def _script_async(self, command: str, timeout_s: float) -> None:
        process = await asyncio.create_subprocess_exec(
            str(SCRIPT), command, env=self._env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise BrokerScriptFailed(f"kafka.sh {command} did not finish in {timeout_s:.0f}s") from None
        if process.returncode != 0:
            raise BrokerScriptFailed(f"kafka.sh {command} failed ({process.returncode}):\n"
                                     f"{stdout.decode(errors='replace')}{stderr.decode(errors='replace')}")

    def _script_sync(self, command: str, timeout_s: float) -> None:
        done = subprocess.run([str(SCRIPT), command], env=self._env(), capture_output=True, text=True,
                              timeout=timeout_s)
        if done.returncode != 0:
            raise BrokerScriptFailed(f"kafka.sh {command} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
