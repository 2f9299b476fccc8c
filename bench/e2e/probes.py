"""What the benchmark reads from outside the services: /proc (CPU, memory), /metrics (lag, backlog), the machine."""

import asyncio
import os
import platform
import re
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, children_too: bool = False) -> float | None:
    """User + system CPU of a process (and of its reaped and live children when asked), or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    # After the command: state is field 3, utime 14, stime 15, cutime 16, cstime 17 (proc(5)).
    ticks = int(fields[11]) + int(fields[12])
    if children_too:
        ticks += int(fields[13]) + int(fields[14])
        ticks += sum(int(c[11]) + int(c[12]) for c in _children_stats(pid))
    return ticks / CLOCK_TICKS


def _children_stats(pid: int) -> list[list[str]]:
    stats = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        rest = text[text.rindex(")") + 2:].split()
        if rest[1] == str(pid):
            stats.append(rest)
    return stats


def memory_kib(pid: int) -> dict[str, int]:
    """VmHWM (peak resident set) and VmRSS of a process, in KiB; empty once it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    values = {}
    for line in lines:
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            values[key] = int(rest.split()[0])
    return values


@dataclass
class Process:
    """A process the benchmark watches: a service replica, Kafka, Zipkin, PostgreSQL, the receiver or itself."""
    name: str
    pid: int
    children_too: bool = False  # PostgreSQL: one backend process per connection

    def cpu(self) -> float | None:
        return cpu_seconds(self.pid, self.children_too)


def cpu_snapshot(processes: list[Process]) -> dict[str, float]:
    return {p.name: cpu for p in processes if (cpu := p.cpu()) is not None}


def cpu_ms_per_case(before: dict[str, float], after: dict[str, float], cases: int, seconds: float) -> dict:
    """Per process: CPU milliseconds per case and the share of one core used over the window."""
    out = {}
    for name, end in after.items():
        if name in before and cases:
            used = end - before[name]
            out[name] = {"cpu_ms_per_case": round(used * 1000 / cases, 1),
                         "cores_busy": round(used / seconds, 2) if seconds else None}
    return out


# --- /metrics --------------------------------------------------------------------------------------------------

# Seen over the whole run (summed over replicas and restarts): dead letters and transient faults.
COUNTERS = ("enlace_dlq_messages_total", "enlace_consumer_transient_faults_total")
_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str, wanted: tuple[str, ...]) -> list[tuple[str, dict[str, str], float]]:
    samples = []
    for line in text.splitlines():
        if not line or line[0] == "#" or not line.startswith(wanted):
            continue
        match = _SAMPLE.match(line)
        if match and match["name"] in wanted:
            samples.append((match["name"], dict(_LABEL.findall(match["labels"] or "")), float(match["value"])))
    return samples


@dataclass
class Scraper:
    """Scrapes every replica's /metrics at an interval: consumer lag per consumer, outbox backlog, pending webhooks.

    Lag is summed over partitions and replicas (each replica reports the partitions it owns). Backlogs are
    counts of a database the replicas share, so the largest report is taken.
    """
    targets: list[tuple[str, str]]  # (service, base url)
    interval_s: float = 2.0
    series: list[dict] = field(default_factory=list)
    failures: int = 0
    # Counters that must stay at zero, accumulated across process restarts: {(url, name, labels): (last, total)}.
    counters: dict[tuple, tuple[float, float]] = field(default_factory=dict)

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            while True:
                started = time.time()
                self.series.append(await self._sample(http, started))
                await asyncio.sleep(max(0.0, self.interval_s - (time.time() - started)))

    async def _sample(self, http: httpx.AsyncClient, at: float) -> dict:
        point: dict = {"t": at}
        names = ("enlace_consumer_lag", "enlace_outbox_backlog", "enlace_notification_deliveries", *COUNTERS)
        for service, url in self.targets:
            try:
                response = await http.get(f"{url}/metrics")
                response.raise_for_status()
            except httpx.HTTPError:
                self.failures += 1
                continue
            for name, labels, value in parse_metrics(response.text, names):
                if name in COUNTERS:
                    key = (url, name, tuple(sorted(labels.items())))
                    last, total = self.counters.get(key, (0.0, 0.0))
                    self.counters[key] = (value, total + (value - last if value >= last else value))
                elif name == "enlace_consumer_lag":
                    key = f"lag {labels.get('consumer', service)}"
                    point[key] = point.get(key, 0) + value
                elif name == "enlace_outbox_backlog":
                    key = f"outbox {service}"
                    point[key] = max(point.get(key, 0), value)
                elif labels.get("status") == "pending" and labels.get("channel") == "webhook":
                    point["webhooks pending"] = max(point.get("webhooks pending", 0), value)
        return point

    def counter_totals(self) -> dict[str, float]:
        totals = dict.fromkeys(COUNTERS, 0.0)
        for (_, name, _), (_, total) in self.counters.items():
            totals[name] += total
        return totals

    def window(self, start: float, end: float) -> list[dict]:
        return [p for p in self.series if start <= p["t"] <= end]


def series_maxima(points: list[dict]) -> dict[str, float]:
    maxima: dict[str, float] = {}
    for point in points:
        for key, value in point.items():
            if key != "t":
                maxima[key] = max(maxima.get(key, 0), value)
    return maxima


# --- the machine -----------------------------------------------------------------------------------------------

def machine() -> dict:
    meminfo = Path("/proc/meminfo").read_text()
    total_kib = int(re.search(r"MemTotal:\s+(\d+)", meminfo)[1])
    models = re.findall(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "memory_gib": round(total_kib / 1024 / 1024, 1),
        "cpu_model": models[0].strip() if models else platform.processor(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        **_source_revision(),
    }


def _source_revision() -> dict:
    """The commit measured, and whether the working tree differed from it (read-only git)."""
    repo = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": head, "uncommitted_changes": bool(dirty)}
