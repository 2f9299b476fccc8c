"""Where each service's CPU goes during the burst: py-spy samples every service process (`--profile`).

py-spy is a measuring tool, not a dependency: install it into the venv only when profiling
(`.venv/bin/pip install py-spy`). Two modes:

* ``python`` (the one to read for CPU): only samples of the thread holding the GIL (``--gil``), read
  without pausing the process (``--nonblocking``). That is the Python-level CPU of the process; the
  rest of its CPU (from /proc) is native work done without the GIL: SQLite's engine on aiosqlite's
  threads, and system calls. Both are reported.
* ``native``: every thread, with C frames (SQLite, uvloop, libc), so waits show where they are:
  SQLite's busy handler sleeping on the write lock, idle queues, the GIL. It pauses the process at
  each sample, so it slows the services a lot: read its shares of wall time, not its throughput.

A profiled run's throughput is not a figure to record: py-spy's own CPU competes with the services.
"""

import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from bench.e2e.probes import CLOCK_TICKS, Process

_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>.*?)(?::\d+)?\)$")
# Frames every stack of a thread starts with: not worth counting as "inside" a package.
ROOT_FILES = ("/click/", "runpy", "/uvicorn/main.py", "/uvicorn/server.py", "/uvicorn/_compat.py",
              "/uvicorn/__main__.py", "/asyncio/runners.py", "/threading.py", "libc.so", "libpython")
WAITS = ("PyThread_acquire_lock_timed", "pthread_cond_timedwait", "pthread_cond_wait", "epoll_wait", "epoll_pwait",
         "_queue_SimpleQueue_get_impl", "sem_timedwait", "sem_wait", "poll", "select")


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def user_system_seconds(pid: int) -> tuple[float, float]:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0, 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


class Profiler:
    def __init__(self, out_dir: Path, native: bool = False, rate_hz: int = 97, top: int = 12) -> None:
        self.out_dir = out_dir
        self.native = native
        self.rate_hz = rate_hz
        self.top = top
        self.recorders: list[tuple[Process, Path, subprocess.Popen, tuple[float, float]]] = []
        self.started = 0.0
        self.tool = py_spy()
        if self.tool is None:
            raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy (for measuring only)")

    def start(self, processes: list[Process]) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        mode = ["--native", "--idle"] if self.native else ["--gil", "--nonblocking"]
        for process in processes:
            output = self.out_dir / f"{process.name}.collapsed.txt"
            recorder = subprocess.Popen(
                [self.tool, "record", "--pid", str(process.pid), "--rate", str(self.rate_hz), "--format", "raw",
                 "--output", str(output), "--full-filenames", *mode],
                stdout=subprocess.DEVNULL, stderr=open(self.out_dir / f"{process.name}.py-spy.log", "wb"))
            self.recorders.append((process, output, recorder, user_system_seconds(process.pid)))

    def stop(self) -> dict:
        """Ends the recordings (SIGINT makes py-spy write its file) and summarises each."""
        seconds = time.monotonic() - self.started
        ended = {process.name: user_system_seconds(process.pid) for process, *_ in self.recorders}
        for *_, recorder, _ in self.recorders:
            recorder.send_signal(signal.SIGINT)
        summaries = {}
        for process, output, recorder, (user, system) in self.recorders:
            try:
                recorder.wait(timeout=60)
            except subprocess.TimeoutExpired:
                recorder.kill()
            if not output.exists():
                continue
            summary = summarize(output.read_text(), self.top, self.native)
            end_user, end_system = ended[process.name]
            summary.update(file=str(output), mode="native" if self.native else "python (GIL held)",
                           seconds=round(seconds, 1), cpu_user_s=round(end_user - user, 1),
                           cpu_system_s=round(end_system - system, 1))
            if not self.native:
                # GIL-held samples are Python CPU; what /proc counts beyond them ran natively without the GIL.
                summary["gil_held_s"] = round(summary["samples"] / self.rate_hz, 1)
            summaries[process.name] = summary
        return summaries


def _frame(text: str) -> tuple[str, str]:
    match = _FRAME.match(text)
    return (match["function"], match["file"]) if match else (text, "")


def _short(path: str) -> str:
    for marker in ("site-packages/", "/services/", "/libs/"):
        if marker in path:
            rest = path.split(marker, 1)[1]
            return rest.split("/", 1)[1] if marker == "/services/" else rest
    if ".so" in path:
        return Path(path).name
    return re.sub(r"^.*/python3\.\d+/", "", path)


def package_of(path: str) -> str:
    """Whose code a frame is: a site-packages distribution, the project's package, the stdlib, or a native library."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if "/services/" in path:
        return "project: " + path.split("/services/", 1)[1].split("/")[0]
    if "/libs/" in path:
        return "project: " + path.split("/libs/", 1)[1].split("/")[0]
    if ".so" in path or path.endswith((".c", ".h")):
        return "native: " + Path(path).name.split(".so")[0]
    if path.startswith("<") and not path.startswith("<frozen"):
        return path[1:].split()[0].rstrip(">")  # code generated at runtime, e.g. "<sqlalchemy generated …>"
    if re.search(r"/python3\.\d+/", path) or path.startswith("<frozen"):
        return "stdlib: " + re.sub(r"^.*/python3\.\d+/", "", path).split("/", 1)[0].removesuffix(".py")
    return path or "?"


def _state(frames: list[tuple[str, str]]) -> str:
    """Native mode: what a thread was doing, from its innermost frames."""
    names = [f[0] for f in frames]
    if "sqlite3InvokeBusyHandler" in names:
        return "waiting: SQLite busy handler (another connection holds the lock)"
    if "take_gil" in names[-6:]:
        return "waiting: for the GIL"
    if any(n in WAITS for n in names[-4:]) or names[-1] in ("clock_nanosleep", "nanosleep"):
        return "waiting: idle (queue, event loop, timer)"
    if any(n in ("fdatasync", "fsync", "__libc_fsync") for n in names[-4:]):
        return "waiting: disk sync"
    return "running"


def _orphan(frames: list[tuple[str, str]]) -> str:
    """A sample without project frames. SQLAlchemy's asyncio layer runs the ORM in greenlets whose stacks
    start at the session call (no caller frames), so those are named by that call."""
    function, path = frames[0]
    if "sqlalchemy/" in path or "sqlmodel/" in path:
        return f"(greenlet) {function} ({_short(path)})"
    return "(no project frame)"


def summarize(collapsed: str, top: int, native: bool = False) -> dict:
    """From py-spy's collapsed stacks: the hottest leaf functions (self), the project functions on whose behalf
    the samples were spent (the innermost project frame), and packages, self and inclusive."""
    total = 0
    states: Counter = Counter()
    leaf: Counter = Counter()
    on_behalf: Counter = Counter()
    packages: Counter = Counter()
    inclusive: Counter = Counter()
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        if native:
            state = _state(frames)
            states[state] += count
            if state != "running":
                continue
        total += count
        function, path = frames[-1]
        leaf[f"{function} ({_short(path)})"] += count
        packages[package_of(path)] += count
        inclusive.update({package_of(p): count for _, p in frames if not any(r in p for r in ROOT_FILES)})
        project = [f for f in frames if "/services/" in f[1] or "/libs/" in f[1]]
        on_behalf[f"{project[-1][0]} ({_short(project[-1][1])})" if project else _orphan(frames)] += count

    def shares(counter: Counter, of: int = total) -> list[list]:
        return [[name, round(100 * n / of, 1)] for name, n in counter.most_common(top)] if of else []
    summary = {"samples": total, "self": shares(leaf), "project_frame": shares(on_behalf),
               "packages_inclusive": shares(inclusive), "packages_self": shares(packages)}
    if native:
        summary["thread_time"] = shares(states, sum(states.values()))
    return summary


if __name__ == "__main__":  # summarise a kept recording: python -m bench.e2e.profiling FILE [native]
    import json
    print(json.dumps(summarize(Path(sys.argv[1]).read_text(), 20, sys.argv[2:] == ["native"]), indent=1))
