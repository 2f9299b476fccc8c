"""A throwaway PostgreSQL cluster for the PostgreSQL test lane (tests/postgres/).

One cluster per test session: initdb into a temp dir, fsync off, listening on 127.0.0.1 only at a
free port, its unix socket in the same temp dir. PostgreSQL refuses to run as root, so under root
(CI's `.ci/run`) every server binary runs as the `postgres` system user. Each test gets a fresh
database of its own. Missing binaries fail the tests with a plain message; they are never skipped.
"""

import os
import re
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import asyncpg

SUPERUSER = "postgres"
BIN_ENV = "ENLACE_TEST_PG_BIN"  # a directory holding initdb, pg_ctl, pg_dump; overrides the search


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are not installed (or the cluster would not start)."""


def find_bin_dir() -> Path:
    """The newest PostgreSQL server binaries: $ENLACE_TEST_PG_BIN, Debian's /usr/lib/postgresql/<v>/bin, or PATH."""
    candidates = [Path(os.environ[BIN_ENV])] if os.environ.get(BIN_ENV) else []
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                    key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)], reverse=True)
    candidates += debian
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for directory in candidates:
        if all((directory / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres", "pg_dump")):
            return directory
    raise PostgresUnavailable(
        "the PostgreSQL test lane needs the PostgreSQL server binaries (initdb, pg_ctl, postgres, pg_dump); "
        "none found in $ENLACE_TEST_PG_BIN, /usr/lib/postgresql/*/bin or PATH. Install them, e.g. "
        "`apt-get install postgresql` (.ci/run does so)")


class PostgresCluster:
    """One initdb'd cluster in a temp dir, started with pg_ctl and reachable on 127.0.0.1:<port>."""

    def __init__(self, bin_dir: Path, port: int) -> None:
        self.bin_dir = bin_dir
        self.port = port
        self.host = "127.0.0.1"
        # Not under pytest's tmp dirs: their parents are private to root, and the server may run as postgres.
        self.base = Path(tempfile.mkdtemp(prefix="enlace-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self._as_user = [] if os.geteuid() != 0 else ["runuser", "-u", SUPERUSER, "--"]

    def _run(self, tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        done = subprocess.run([*self._as_user, str(self.bin_dir / tool), *args], capture_output=True, text=True,
                              timeout=timeout, cwd=self.base)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise PostgresUnavailable(f"{tool} {' '.join(args)} failed ({done.returncode}):\n{done.stderr}\n{log}")
        return done

    def start(self) -> None:
        if self._as_user:
            shutil.chown(self.base, user=SUPERUSER, group=None)
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8",
                  "--locale=C", "--no-sync")
        options = (f"-c listen_addresses={self.host} -p {self.port} -c unix_socket_directories={self.base} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log), "-o", options)

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w", timeout=60)
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def dsn(self, database: str = "postgres") -> str:
        """For asyncpg directly (a plain postgresql:// URL)."""
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def url(self, database: str) -> str:
        """For the services (SQLAlchemy's asyncpg dialect), as in INTAKE_DATABASE_URL."""
        return f"postgresql+asyncpg://{SUPERUSER}@{self.host}:{self.port}/{database}"

    async def create_database(self) -> str:
        """A new empty database with a unique name; returns its name."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        conn = await asyncpg.connect(self.dsn())
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return name

    def dump(self, database: str) -> bytes:
        """pg_dump of one database (schema and data), as a backup would hold it."""
        done = subprocess.run([*self._as_user, str(self.bin_dir / "pg_dump"), "-h", str(self.base), "-p",
                               str(self.port), "-U", SUPERUSER, "--no-owner", database],
                              capture_output=True, timeout=120, cwd=self.base)
        if done.returncode != 0:
            raise RuntimeError(f"pg_dump failed: {done.stderr.decode(errors='replace')}")
        return done.stdout
