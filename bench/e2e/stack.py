"""The benchmark's own stack, on free loopback ports in a temp dir: Kafka, Zipkin, the databases, the services.

Kafka and Zipkin come from deploy/kafka/kafka.sh and deploy/zipkin/zipkin.sh, the services from
deploy/services.sh (one run dir per replica set), each with `make up`'s environment (Makefile
`services-up`) pointed at this stack. PostgreSQL is the tests' throwaway cluster (tests/support/postgres.py).
Only processes started here are ever stopped, by the pid files the scripts write.
"""

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.e2e.probes import Process

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("intake", "referral", "notification")
DOWNSTREAM = ("referral", "notification")
RESERVED_PORTS = {9092, 9093, 8001, 8002, 8003, 9411}  # make up's: never touched
# Routing stops at a service's capacity (open referrals); the benchmark's cases must all reach child protection.
BENCH_CAPACITY = 1_000_000


class StackFailed(RuntimeError):
    pass


def free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in RESERVED_PORTS and port not in ports and port + 1 not in ports and port - 1 not in ports:
            ports.append(port)
    return ports


@dataclass
class StackOptions:
    db: str = "sqlite"
    replicas: int = 1
    tracing: bool = True
    zipkin_heap: str | None = None
    keep: bool = False


class Stack:
    def __init__(self, options: StackOptions, log=print) -> None:
        self.options = options
        self.log = log
        self.base = Path(tempfile.mkdtemp(prefix="enlace-bench-e2e-"))
        (self.base / "logs").mkdir()
        ports = iter(free_ports(4 + 3 * options.replicas))
        self.kafka_port, self.zipkin_port, self.receiver_port = next(ports), next(ports), next(ports)
        self.kafka_controller_port = next(ports)  # not KAFKA_PORT+1: that one may be taken
        self.ports = [{svc: next(ports) for svc in SERVICES} for _ in range(options.replicas)]
        self.run_dirs = [self.base / f"run-{r + 1}" for r in range(options.replicas)]
        self.key_dir = self.base / "dev-issuer"
        self.postgres = None
        self.databases: dict[str, str] = {}
        self.receiver: subprocess.Popen | None = None

    # --- addresses -----------------------------------------------------------------------------------------------
    def urls(self, service: str) -> list[str]:
        return [f"http://127.0.0.1:{ports[service]}" for ports in self.ports]

    @property
    def receiver_url(self) -> str:
        return f"http://127.0.0.1:{self.receiver_port}"

    def service_processes(self) -> list[Process]:
        found = []
        for replica, run in enumerate(self.run_dirs, start=1):
            for service in SERVICES:
                pid = _read_pid(run / f"{service}.pid")
                if pid:
                    name = service if self.options.replicas == 1 else f"{service}-{replica}"
                    found.append(Process(name, pid))
        return found

    def processes(self) -> list[Process]:
        found = self.service_processes()
        for name, pidfile in (("kafka", self.base / "kafka" / "kafka.pid"),
                              ("zipkin", self.base / "zipkin" / "zipkin.pid")):
            if pid := _read_pid(pidfile):
                found.append(Process(name, pid))
        if self.postgres is not None and (pid := _read_pid(self.postgres.data / "postmaster.pid")):
            found.append(Process("postgres", pid, children_too=True))  # CPU: with its backends; memory: postmaster
        if self.receiver is not None:
            found.append(Process("webhook receiver", self.receiver.pid))
        found.append(Process("bench client", os.getpid()))
        return found

    # --- start and stop ------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self.log(f"stack: state in {self.base}")
        self._script("kafka", ["deploy/kafka/kafka.sh", "start"], {
            "KAFKA_STATE_DIR": str(self.base / "kafka"), "KAFKA_PORT": str(self.kafka_port),
            "KAFKA_CONTROLLER_PORT": str(self.kafka_controller_port)})
        self._script("topics", [sys.executable, "-m", "enlace_platform.topics"],
                     {"ENLACE_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{self.kafka_port}",
                      "ENLACE_KAFKA_REPLICATION_FACTOR": "1"})  # one local broker
        if self.options.tracing:
            zipkin_env = {"ZIPKIN_STATE_DIR": str(self.base / "zipkin"), "ZIPKIN_PORT": str(self.zipkin_port)}
            if self.options.zipkin_heap:
                zipkin_env["ZIPKIN_HEAP"] = self.options.zipkin_heap
            self._script("zipkin", ["deploy/zipkin/zipkin.sh", "start"], zipkin_env)
        self.databases = await self._databases()
        from enlace_platform.dev_issuer import ensure_keypair  # the Makefile creates the key before the services
        ensure_keypair(self.key_dir)
        seed = self.base / "agencies.json"
        seed.write_text(json.dumps(_roomy_directory()))
        from enlace_platform.crypto import load_key_encryption_key
        for replica, run in enumerate(self.run_dirs):
            # Where services.sh puts each service's key-encryption key, made now (a service may create its own
            # lazily) so that the replicas of a service share one (docs/operations.md).
            for service in SERVICES:
                if replica:
                    run.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(self.run_dirs[0] / f"{service}-data.key", run / f"{service}-data.key")
                else:
                    load_key_encryption_key(None, str(run / f"{service}-data.key"))
            self._script(f"services-{replica + 1}", ["deploy/services.sh", "start"],
                         self._service_env(replica))
        await self._start_receiver()

    async def _databases(self) -> dict[str, str]:
        if self.options.db == "sqlite":
            return {svc: f"sqlite+aiosqlite:///{self.base / f'{svc}.db'}" for svc in SERVICES}
        sys.path.insert(0, str(REPO))
        from tests.support.postgres import PostgresCluster, find_bin_dir
        self.postgres = PostgresCluster(find_bin_dir(), free_ports(1)[0])
        self.log(f"stack: PostgreSQL cluster on 127.0.0.1:{self.postgres.port}")
        await asyncio.to_thread(self.postgres.start)
        return {svc: self.postgres.url(await self.postgres.create_database()) for svc in SERVICES}

    def _service_env(self, replica: int) -> dict[str, str]:
        ports = self.ports[replica]
        env = {
            "ENLACE_RUN_DIR": str(self.run_dirs[replica]),
            "ENLACE_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{self.kafka_port}",
            "ENLACE_AUTH_DEV_PUBLIC_KEY_PATH": str(self.key_dir / "public.pem"),
            "REFERRAL_DIRECTORY_SEED_PATH": str(self.base / "agencies.json"),
            "NOTIFICATION_REFERRAL_API_URL": self.urls("referral")[0],
            "NOTIFICATION_WEBHOOK_ALLOW_LOOPBACK": "true",  # make up's default: the receiver is on loopback
            "OTEL_TRACES_EXPORTER": os.environ.get("OTEL_TRACES_EXPORTER", "zipkin") if self.options.tracing
            else "none",
            "OTEL_EXPORTER_ZIPKIN_ENDPOINT": f"http://127.0.0.1:{self.zipkin_port}/api/v2/spans",
        }
        for service in SERVICES:
            upper = service.upper()
            env[f"{upper}_PORT"] = str(ports[service])
            env[f"{upper}_DATABASE_URL"] = self.databases[service]
            env[f"{upper}_PUBLIC_BASE_URL"] = f"http://127.0.0.1:{ports[service]}"
        return env

    async def _start_receiver(self) -> None:
        log = open(self.base / "logs" / "receiver.log", "wb")
        command = [sys.executable, "-m", "bench.e2e.receiver", "--port", str(self.receiver_port)]
        self.receiver = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        async with httpx.AsyncClient(timeout=2) as http:
            for _ in range(100):
                try:
                    (await http.get(f"{self.receiver_url}/_bench/arrivals?since=0")).raise_for_status()
                    return
                except httpx.HTTPError:
                    await asyncio.sleep(0.1)
        raise StackFailed(f"the webhook receiver did not start; see {self.base / 'logs' / 'receiver.log'}")

    def stop_services(self, names: tuple[str, ...]) -> None:
        """SIGTERM to those services (every replica), as services.sh stop does; SIGKILL after 30 s."""
        for run in self.run_dirs:
            for name in names:
                pidfile = run / f"{name}.pid"
                if pid := _read_pid(pidfile):
                    _terminate(pid, grace_s=30)
                pidfile.unlink(missing_ok=True)

    def start_services(self) -> None:
        """services.sh start again: it starts the stopped ones and leaves the running ones."""
        for replica, run in enumerate(self.run_dirs):
            self._script(f"services-{replica + 1}", ["deploy/services.sh", "start"], self._service_env(replica))

    def close(self) -> None:
        for run in self.run_dirs:
            if run.exists():
                self._script("services-stop", ["deploy/services.sh", "stop"], {"ENLACE_RUN_DIR": str(run)},
                             check=False)
        if self.receiver is not None:
            self.receiver.terminate()
            try:
                self.receiver.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.receiver.kill()
        self._script("zipkin-stop", ["deploy/zipkin/zipkin.sh", "stop"],
                     {"ZIPKIN_STATE_DIR": str(self.base / "zipkin"), "ZIPKIN_PORT": str(self.zipkin_port)}, check=False)
        self._script("kafka-stop", ["deploy/kafka/kafka.sh", "stop"],
                     {"KAFKA_STATE_DIR": str(self.base / "kafka"), "KAFKA_PORT": str(self.kafka_port)}, check=False)
        if self.postgres is not None:
            self.postgres.stop()
        if not self.options.keep:
            shutil.rmtree(self.base, ignore_errors=True)
        else:
            self.log(f"stack: kept {self.base} (logs in logs/ and run-*/logs/)")

    def _script(self, label: str, command: list[str], env: dict[str, str], check: bool = True) -> None:
        log_path = self.base / "logs" / f"{label}.log"
        with open(log_path, "ab") as log:
            done = subprocess.run(command, cwd=REPO, env={**_clean_environment(), **env}, stdout=log,
                                  stderr=subprocess.STDOUT, timeout=300)
        if check and done.returncode != 0:
            tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
            raise StackFailed(f"{' '.join(command)} failed ({done.returncode}):\n{tail}")


def _clean_environment() -> dict[str, str]:
    """The caller's environment without what would point the stack at `make up`'s state."""
    dropped = ("ENLACE_RUN_DIR", "ENLACE_DATA_KEY", "ENLACE_DATA_KEY_FILE", "ENLACE_KAFKA_BOOTSTRAP_SERVERS",
               "ENLACE_AUTH_DEV_PUBLIC_KEY_PATH", "ENLACE_AUTH_JWKS_URL", "KAFKA_STATE_DIR", "ZIPKIN_STATE_DIR")
    return {k: v for k, v in os.environ.items()
            if k not in dropped and not k.endswith(("_DATABASE_URL", "_PORT", "_PUBLIC_BASE_URL"))}


def _roomy_directory() -> dict:
    directory = json.loads((REPO / "deploy" / "demo" / "agencies.json").read_text())
    for agency in directory["agencies"]:
        for service in agency["services"]:
            service["capacity"] = max(service["capacity"], BENCH_CAPACITY)
    return directory


def _read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    return pid


def _terminate(pid: int, grace_s: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
