"""The measurements, run in order on one stack: P1 burst, P2 rate sweep, P5 with and without the downstream
services, the intake-only burst (for P3), then the catch-up and the exactly-once check over every case.

Each scenario starts from a quiet stack (consumer lag and outbox backlog at zero) and reports CPU per case
per process over its own window, from /proc.
"""

import asyncio
import statistics
import time
from dataclasses import dataclass, field

from rich.console import Console

from bench.e2e.client import BorderPost, CaseResult, FlowFailed, burst, steady
from bench.e2e.probes import Scraper, cpu_ms_per_case, cpu_snapshot, memory_kib, series_maxima
from bench.e2e.stack import DOWNSTREAM, Stack
from bench.e2e.tally import Arrivals


def percentiles(values: list[float]) -> dict:
    """p50/p95/p99 and max in milliseconds (nearest rank), or empty when there is nothing to rank."""
    if not values:
        return {}
    ranked = sorted(values)

    def rank(q: float) -> float:
        return round(ranked[min(len(ranked) - 1, max(0, int(round(q * len(ranked))) - 1))] * 1000, 1)
    return {"p50_ms": rank(0.50), "p95_ms": rank(0.95), "p99_ms": rank(0.99), "max_ms": round(ranked[-1] * 1000, 1),
            "samples": len(ranked)}


@dataclass
class Bench:
    stack: Stack
    post: BorderPost
    arrivals: Arrivals
    scraper: Scraper
    console: Console
    stall_s: float = 120.0
    next_index: int = 0
    screened: list[CaseResult] = field(default_factory=list)
    failed: list[CaseResult] = field(default_factory=list)
    peak_memory: dict[str, dict] = field(default_factory=dict)

    def take(self, results: list[CaseResult]) -> list[CaseResult]:
        """Keeps every case for the final exactly-once check; returns the ones intake accepted."""
        ok = [r for r in results if not r.error]
        self.screened += ok
        self.failed += [r for r in results if r.error]
        for failure in [r for r in results if r.error][:3]:
            self.console.print(f"[yellow]case {failure.index} failed: {failure.error}[/yellow]")
        return ok

    def record_memory(self) -> None:
        """P6: VmHWM is per process, so it is read before any service is stopped, and kept at its highest."""
        for process in self.stack.processes():
            reading = memory_kib(process.pid)
            if reading and reading.get("VmHWM", 0) >= self.peak_memory.get(process.name, {}).get("VmHWM", 0):
                self.peak_memory[process.name] = reading

    async def settle(self, timeout_s: float = 180.0) -> None:
        """Until the last scrape shows no lag and no backlog anywhere (the previous scenario's tail is done)."""
        deadline = time.monotonic() + timeout_s
        started = time.time()
        while time.monotonic() < deadline:
            await asyncio.sleep(self.scraper.interval_s)
            fresh = [p for p in self.scraper.series if p["t"] > started]
            if fresh and len(fresh[-1]) > 1 and not any(v for k, v in fresh[-1].items() if k != "t"):
                return
        self.console.print("[yellow]the stack did not settle: lag or backlog left; measuring anyway[/yellow]")

    def window(self) -> "Window":
        return Window(self)


class Window:
    """CPU of every process over one scenario."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.processes = bench.stack.processes()
        self.before = cpu_snapshot(self.processes)
        self.started = time.time()

    def close(self, cases: int) -> dict:
        after = cpu_snapshot(self.processes)
        return cpu_ms_per_case(self.before, after, cases, time.time() - self.started)


def _latencies(bench: Bench, cases: list[CaseResult]) -> list[float]:
    return [at - r.screened_at for r in cases if (at := bench.arrivals.arrived_at(r.case_id)) is not None]


def _progress(bench: Bench, label: str, total: int):
    last = [0.0]

    def show(done: int) -> None:
        if time.monotonic() - last[0] > 5 or done == total:
            last[0] = time.monotonic()
            bench.console.print(f"  {label}: {done}/{total}", highlight=False)
    return show


async def p1_burst(bench: Bench, cases: int, concurrency: int, profiler=None) -> dict:
    await bench.settle()
    indices = range(bench.next_index, bench.next_index + cases)
    bench.next_index += cases
    window = bench.window()
    if profiler:
        profiler.start(bench.stack.service_processes())
    screened = [0]
    show = _progress(bench, "screened", cases)

    def on_done(_: CaseResult) -> None:
        screened[0] += 1
        if screened[0] % 100 == 0:
            show(screened[0])
    results = await burst(bench.post, indices, concurrency, on_done)
    ok = bench.take(results)
    last_arrival = await bench.arrivals.wait_for([r.case_id for r in ok], bench.stall_s,
                                                 _progress(bench, "webhooks", len(ok)))
    cpu = window.close(len(ok))
    profile = profiler.stop() if profiler else None
    first = min(r.started_at for r in results)
    intake_s = max(r.screened_at for r in ok) - first if ok else 0
    arrived = bench.arrivals.arrived([r.case_id for r in ok])
    e2e_s = (last_arrival - first) if last_arrival else None
    lag = bench.scraper.window(window.started, time.time())
    bench.record_memory()
    return {
        "cases": cases, "concurrency": concurrency, "accepted": len(ok), "failed": len(results) - len(ok),
        "retries": sum(r.retries for r in results), "arrived": arrived,
        "intake_seconds": round(intake_s, 1), "intake_cases_per_s": round(len(ok) / intake_s, 1) if intake_s else None,
        "e2e_seconds": round(e2e_s, 1) if e2e_s else None,
        "e2e_cases_per_s": round(arrived / e2e_s, 1) if e2e_s else None,
        "screening_to_webhook": percentiles(_latencies(bench, ok)),
        "intake_request": {step: percentiles([r.latencies[step] for r in ok if step in r.latencies])
                           for step in ("register", "consent", "screening")},
        "cpu": cpu, "lag_series": lag, "lag_max": series_maxima(lag), "profile": profile,
    }


def _trend(bench: Bench, cases: list[CaseResult]) -> tuple[float | None, float | None]:
    """Median screening -> webhook latency of the first and last third of the run, in ms."""
    ordered = sorted(cases, key=lambda r: r.screened_at)
    third = len(ordered) // 3
    if third < 3:
        return None, None
    first, last = _latencies(bench, ordered[:third]), _latencies(bench, ordered[-third:])
    if not first or not last:
        return None, None
    return round(statistics.median(first) * 1000, 1), round(statistics.median(last) * 1000, 1)


async def p2_step(bench: Bench, rate: float, duration_s: float, max_in_flight: int, settle_s: float) -> dict:
    await bench.settle()
    window = bench.window()
    run = await steady(bench.post, bench.next_index, rate, duration_s, max_in_flight)
    bench.next_index += run.offered
    ok = bench.take(run.results)
    if not ok:
        raise FlowFailed(f"no case was accepted at {rate} cases/s")
    last_screened = max(r.screened_at for r in ok)
    last_arrival = await bench.arrivals.wait_for([r.case_id for r in ok], bench.stall_s)
    cpu = window.close(len(ok))
    first = min(r.started_at for r in ok)
    achieved = len(ok) / (last_screened - first) if last_screened > first else 0
    arrived = bench.arrivals.arrived([r.case_id for r in ok])
    tail_s = (last_arrival - last_screened) if last_arrival else None
    early, late = _trend(bench, ok)
    reasons = []
    if run.overflowed:
        reasons.append(f"intake fell behind: over {max_in_flight} cases in flight")
    if achieved < 0.9 * rate:
        reasons.append(f"intake completed {achieved:.1f} cases/s")
    if arrived < len(ok):
        reasons.append(f"{len(ok) - arrived} webhooks missing")
    if tail_s is not None and tail_s > settle_s:
        reasons.append(f"last webhook {tail_s:.1f} s after the last screening")
    if early is not None and late is not None and late > 2 * early + 250:
        reasons.append(f"latency grew from {early:.0f} to {late:.0f} ms (median, first and last third)")
    if len(run.results) > len(ok):
        reasons.append(f"{len(run.results) - len(ok)} cases failed")
    lag = bench.scraper.window(window.started, time.time())
    return {"rate": rate, "duration_s": duration_s, "offered": run.offered, "accepted": len(ok), "arrived": arrived,
            "achieved_cases_per_s": round(achieved, 1), "screening_to_webhook": percentiles(_latencies(bench, ok)),
            "median_first_third_ms": early, "median_last_third_ms": late,
            "tail_after_last_screening_s": round(tail_s, 2) if tail_s is not None else None,
            "sustained": not reasons, "not_sustained_because": reasons, "cpu": cpu, "lag_max": series_maxima(lag)}


async def intake_phase(bench: Bench, rate: float, duration_s: float,
                       max_in_flight: int) -> tuple[list[CaseResult], dict]:
    """Intake's request latency under a fixed arrival rate (P5): every call of every case is one sample."""
    await bench.settle()
    window = bench.window()
    run = await steady(bench.post, bench.next_index, rate, duration_s, max_in_flight)
    bench.next_index += run.offered
    ok = bench.take(run.results)
    samples = [seconds for r in ok for seconds in r.latencies.values()]
    return ok, {"rate": rate, "duration_s": duration_s, "accepted": len(ok), "overflowed": run.overflowed,
                "intake_request": percentiles(samples),
                "by_step": {step: percentiles([r.latencies[step] for r in ok if step in r.latencies])
                            for step in ("register", "consent", "screening")},
                "cpu": window.close(len(ok))}


async def p5_and_intake_only(bench: Bench, rate: float, duration_s: float, max_in_flight: int,
                             intake_only_cases: int, concurrency: int) -> dict:
    """P5 with all running, then with referral and notification stopped; while they are stopped, the
    intake-only burst (P3's denominator). Then they start again and drain what waited in Kafka (catch-up)."""
    out: dict = {}
    if rate > 0:
        _, running = await intake_phase(bench, rate, duration_s, max_in_flight)
    bench.record_memory()
    await bench.settle()
    bench.console.print("  stopping referral and notification (SIGTERM)")
    bench.stack.stop_services(DOWNSTREAM)
    waiting: list[CaseResult] = []
    if rate > 0:
        accepted, stopped = await intake_phase(bench, rate, duration_s, max_in_flight)
        waiting += accepted
        ratio = inverse = None
        if running["intake_request"] and stopped["intake_request"]:
            ratio = round(stopped["intake_request"]["p99_ms"] / running["intake_request"]["p99_ms"], 2)
            inverse = round(running["intake_request"]["p99_ms"] / stopped["intake_request"]["p99_ms"], 2)
        out["p5"] = {"running": running, "stopped": stopped, "p99_stopped_over_running": ratio,
                     "p99_running_over_stopped": inverse}
    if intake_only_cases:
        bench.console.print(f"  intake-only burst: {intake_only_cases} cases, downstream stopped")
        indices = range(bench.next_index, bench.next_index + intake_only_cases)
        bench.next_index += intake_only_cases
        window = bench.window()
        results = await burst(bench.post, indices, concurrency)
        ok = bench.take(results)
        waiting += ok
        seconds = max(r.screened_at for r in ok) - min(r.started_at for r in results) if ok else 0
        out["intake_only"] = {"cases": intake_only_cases, "concurrency": concurrency, "accepted": len(ok),
                              "intake_seconds": round(seconds, 1),
                              "intake_cases_per_s": round(len(ok) / seconds, 1) if seconds else None,
                              "cpu": window.close(len(ok))}
    bench.console.print("  starting referral and notification again; catching up")
    restarted = time.time()
    bench.stack.start_services()
    last = await bench.arrivals.wait_for([r.case_id for r in waiting], bench.stall_s,
                                         _progress(bench, "caught up", len(waiting)))
    if waiting and last:
        out["catch_up"] = {"cases": len(waiting), "seconds_from_restart": round(last - restarted, 1),
                           "cases_per_s": round(len(waiting) / (last - restarted), 1),
                           "arrived": bench.arrivals.arrived([r.case_id for r in waiting])}
    bench.record_memory()
    return out
