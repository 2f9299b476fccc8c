"""A local Kafka cluster for tests: three KRaft nodes on free loopback ports, secured as in production.

Started by the project's own script (``KAFKA_CLUSTER=3 deploy/kafka/kafka.sh``): SASL_SSL with SCRAM-SHA-512,
TLS from the cluster's own CA, the standard authorizer with nothing allowed without an ACL, one principal per
service and per bus.yaml principal, ``enlace-admin`` the super user (docs/operations.md, "Cluster mode")::

    cluster = KafkaCluster(tmp_dir)            # TLS files, passwords and each node's data under tmp_dir
    cluster.start()                            # formats, starts; returns once every broker serves clients
    await cluster.provision(prefix)            # bus.yaml's topics (RF 3, min.insync 2) and ACLs under prefix
    cluster.bootstrap                          # "127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3"
    cluster.ca_file, cluster.password("intake")
    cluster.client_options("intake")           # aiokafka kwargs as that principal
    cluster.service_env("intake")              # ENLACE_KAFKA_* for a subprocess running as that principal
    cluster.kill_broker(2)                     # SIGKILL; stop_broker(2): SIGTERM, waits; start_broker(2)
    cluster.stop()

Nodes are numbered 1..N (their KRaft node.id): ``kill_broker(1)`` kills the first. Every node is broker and
controller at once, so killing one also takes a controller away (two of three stay a quorum). The lifecycle
methods are synchronous (subprocesses and signals) and block until done: start() and start_broker() take
tens of seconds, so inside an event loop that must keep serving, call them with ``asyncio.to_thread``.
"""

import asyncio
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from enlace_platform.settings import ServiceSettings

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "kafka" / "kafka.sh"
ADMIN = "enlace-admin"
MECHANISM = "SCRAM-SHA-512"


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class ClusterError(RuntimeError):
    """kafka.sh failed; the message carries its output."""


class KafkaCluster:
    def __init__(self, base_dir: Path | str, *, nodes: int = 3, heap: str | None = None,
                 start_timeout_s: float = 240.0) -> None:
        self.base_dir = Path(base_dir)
        self.nodes = nodes
        self._heap = heap
        self._start_timeout_s = start_timeout_s
        ports = _free_ports(2 * nodes)
        self.client_ports = ports[:nodes]
        self.controller_ports = ports[nodes:]

    # --- where and how to connect ----------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.client_ports)

    def broker_address(self, node: int) -> str:
        return f"127.0.0.1:{self.client_ports[self._index(node)]}"

    @property
    def ca_file(self) -> Path:
        return self.base_dir / "tls" / "ca.pem"

    def password_file(self, principal: str) -> Path:
        return self.base_dir / "secrets" / f"{principal}.password"

    def password(self, principal: str) -> str:
        return self.password_file(principal).read_text(encoding="utf-8").strip()

    def service_env(self, principal: str) -> dict[str, str]:
        """The ENLACE_KAFKA_* variables a subprocess needs to connect as ``principal`` (a service name, a bus.yaml
        principal or enlace-admin); add ENLACE_KAFKA_TOPIC_PREFIX yourself."""
        return {
            "ENLACE_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "ENLACE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "ENLACE_KAFKA_SASL_MECHANISM": MECHANISM,
            "ENLACE_KAFKA_SASL_USERNAME": principal,
            "ENLACE_KAFKA_SASL_PASSWORD_FILE": str(self.password_file(principal)),
            "ENLACE_KAFKA_SSL_CAFILE": str(self.ca_file),
        }

    def settings(self, principal: str, **overrides: Any) -> ServiceSettings:
        """ServiceSettings that connect as ``principal`` (overrides: any other field, e.g. kafka_topic_prefix)."""
        return ServiceSettings(
            kafka_bootstrap_servers=self.bootstrap, kafka_security_protocol="SASL_SSL",
            kafka_sasl_mechanism=MECHANISM, kafka_sasl_username=principal,
            kafka_sasl_password_file=str(self.password_file(principal)), kafka_ssl_cafile=str(self.ca_file),
            **overrides)

    def client_options(self, principal: str) -> dict[str, Any]:
        """aiokafka keyword arguments (security_protocol, sasl_*, ssl_context) to connect as ``principal``;
        pass bootstrap_servers=cluster.bootstrap beside them."""
        return self.settings(principal).kafka_client_options()

    def admin_options(self) -> dict[str, Any]:
        return self.client_options(ADMIN)

    def librdkafka_config(self, principal: str) -> dict[str, Any]:
        """The same as confluent-kafka configuration (bootstrap.servers included)."""
        from enlace_platform.topics import librdkafka_config
        return librdkafka_config(self.settings(principal))

    # --- topics and ACLs ---------------------------------------------------------------------------------------

    async def provision(self, prefix: str) -> None:
        """bus.yaml's topics under ``prefix`` with their declared settings (replication 3, min.insync 2), and
        its ACLs for that prefix, as enlace-admin. Idempotent."""
        from enlace_platform.topics import all_topics, apply_acls, librdkafka_config, provision
        admin = self.settings(ADMIN)
        # bus.yaml's replication factor, whatever the single-broker session set in the environment.
        await provision(self.bootstrap, all_topics(prefix), prefix=prefix, replication_factor=3,
                        client_options=admin.kafka_client_options(), brokers_wait_s=60)
        await asyncio.to_thread(apply_acls, librdkafka_config(admin), prefix)

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "KAFKA_CLUSTER": str(self.nodes),
            "KAFKA_STATE_DIR": str(self.base_dir),
            "KAFKA_PORTS": ",".join(map(str, self.client_ports)),
            "KAFKA_CONTROLLER_PORTS": ",".join(map(str, self.controller_ports)),
            "KAFKA_START_TIMEOUT": str(int(self._start_timeout_s)),
        }
        if self._heap:
            env["KAFKA_HEAP"] = self._heap
        return env

    def _script(self, *args: str, timeout_s: float) -> str:
        done = subprocess.run([str(SCRIPT), *args], env=self._env(), capture_output=True, text=True,
                              timeout=timeout_s)
        if done.returncode != 0:
            raise ClusterError(f"kafka.sh {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
        return done.stderr

    def start(self) -> None:
        """Formats (first time), starts every node and waits until each serves clients (registered, unfenced)."""
        self._script("start", timeout_s=self._start_timeout_s + 60)

    def stop(self) -> None:
        self._script("stop", timeout_s=120)

    def start_broker(self, node: int) -> None:
        """Starts a node that was stopped or killed; returns once it serves clients again."""
        self._script("start", str(self._checked(node)), timeout_s=self._start_timeout_s + 60)

    def stop_broker(self, node: int) -> None:
        """SIGTERM (controlled shutdown: leadership moves away first); returns once the process is gone."""
        self._script("stop", str(self._checked(node)), timeout_s=120)

    def kill_broker(self, node: int) -> None:
        """SIGKILL: no controlled shutdown, as a crash. Returns once the process is gone."""
        pid = self.pid(node)
        if pid is None:
            return
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while self._alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._pidfile(node).unlink(missing_ok=True)

    def running(self, node: int) -> bool:
        pid = self.pid(node)
        return pid is not None and self._alive(pid)

    def pid(self, node: int) -> int | None:
        try:
            return int(self._pidfile(self._checked(node)).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def log_file(self, node: int) -> Path:
        return self.base_dir / f"node-{self._checked(node)}" / "logs" / "server.log"

    def _pidfile(self, node: int) -> Path:
        return self.base_dir / f"node-{node}" / "kafka.pid"

    @staticmethod
    def _alive(pid: int) -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")  # a zombie is gone for our purposes

    def _index(self, node: int) -> int:
        return self._checked(node) - 1

    def _checked(self, node: int) -> int:
        if not 1 <= node <= self.nodes:
            raise ValueError(f"nodes are numbered 1..{self.nodes}, not {node}")
        return node
