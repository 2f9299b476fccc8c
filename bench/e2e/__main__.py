"""`make bench-e2e` (or `.venv/bin/python -m bench.e2e --help`): the end-to-end benchmark on its own stack.

    make bench-e2e                                        # 10,000-case burst, rate sweep, P5, on SQLite
    make bench-e2e BENCH_ARGS="--cases 2000 --rates 10,25"
    make bench-e2e BENCH_ARGS="--db postgres --replicas 2 --cases 500"
    BENCH_E2E_PROFILE=native make bench-e2e BENCH_ARGS="--cases 1000 --scenarios p1"   # py-spy on every service
"""

import argparse
import asyncio
import os
import signal
import sys
import traceback
from datetime import UTC, datetime
from pathlib import Path

import httpx
from rich.console import Console

from bench.e2e.client import RECEIVER, BorderPost, bearer, new_client
from bench.e2e.probes import Scraper, machine
from bench.e2e.profiling import Profiler
from bench.e2e.report import derived, show, write_json
from bench.e2e.scenarios import Bench, p1_burst, p2_step, p5_and_intake_only
from bench.e2e.stack import REPO, SERVICES, Stack, StackOptions
from bench.e2e.tally import Arrivals, expected_types

SCENARIOS = ("p1", "p2", "p5", "intake-only")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e", description="Enlace end-to-end benchmark "
                                     "(docs/benchmarks.md). Everything runs on its own stack on free ports.")
    parser.add_argument("--cases", type=int, default=10_000, help="P1 burst size (default 10000)")
    parser.add_argument("--concurrency", type=int, default=16, help="cases in flight during a burst (default 16)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"any of {','.join(SCENARIOS)}")
    parser.add_argument("--rates", default="10,25,50", help="P2 arrival rates, cases/s (default 10,25,50)")
    parser.add_argument("--p2-duration", type=float, default=30.0, help="seconds per P2 rate (default 30)")
    parser.add_argument("--p2-settle", type=float, default=5.0,
                        help="P2: a rate is sustained only if the last webhook comes within this many seconds of "
                             "the last screening (default 5)")
    parser.add_argument("--max-in-flight", type=int, default=200,
                        help="fixed-rate runs stop offering cases past this many unfinished (default 200)")
    parser.add_argument("--p5-rate", type=float, default=5.0,
                        help="P5 arrival rate, cases/s: one intake sustains today, so the ratio shows interference, "
                             "not saturation (default 5)")
    parser.add_argument("--p5-duration", type=float, default=30.0, help="seconds per P5 phase (default 30)")
    parser.add_argument("--intake-only-cases", type=int, default=None,
                        help="burst with referral and notification stopped, for P3 (default min(cases, 1000))")
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--replicas", type=int, default=1, help="processes per service (PostgreSQL only)")
    parser.add_argument("--no-tracing", action="store_true", help="OTEL_TRACES_EXPORTER=none, no Zipkin")
    parser.add_argument("--zipkin-heap", default=None, help="ZIPKIN_HEAP of the stack's Zipkin (default: the script's)")
    parser.add_argument("--event-types", default="referral.*,protection_hold.*",
                        help="the receiving agency's subscription (default: referral.*,protection_hold.*)")
    parser.add_argument("--scrape-interval", type=float, default=2.0, help="seconds between /metrics scrapes")
    parser.add_argument("--stall", type=float, default=120.0,
                        help="stop waiting for webhooks after this many seconds without a new one (default 120)")
    parser.add_argument("--profile", choices=("off", "python", "native"),
                        default=os.environ.get("BENCH_E2E_PROFILE", "off"),
                        help="py-spy every service during P1 (or BENCH_E2E_PROFILE=python|native); native adds C "
                             "frames (SQLite, uvloop, waits) and pauses the processes to sample; needs py-spy")
    parser.add_argument("--output", type=Path, default=None, help="JSON results (default .run/bench-e2e/…json)")
    parser.add_argument("--keep", action="store_true", help="keep the stack's temp dir (logs, databases)")
    args = parser.parse_args()
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {SCENARIOS}")
    if args.replicas > 1 and args.db == "sqlite":
        parser.error("--replicas needs --db postgres (SQLite replicas would share one file across processes)")
    if not expected_types([t.strip() for t in args.event_types.split(",")]):
        parser.error("--event-types must cover referral.requested.v1 (the case's arrival)")
    args.rates = [float(r) if "." in r else int(r) for r in args.rates.split(",") if r.strip()]
    if args.intake_only_cases is None:
        args.intake_only_cases = min(args.cases, 1000)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.output = args.output or REPO / ".run" / "bench-e2e" / f"e2e-{args.db}-{args.replicas}r-{stamp}.json"
    return args


async def subscribe(http: httpx.AsyncClient, stack: Stack, event_types: list[str]) -> None:
    """The child-protection agency's supervisor subscribes its endpoint (the receiver) through notification's API."""
    response = await http.post(f"{stack.urls('notification')[0]}/subscriptions",
                               headers={**bearer(stack.key_dir, RECEIVER, "supervisor"), "Idempotency-Key": "bench"},
                               json={"url": f"{stack.receiver_url}/hooks/{RECEIVER}", "event_types": event_types})
    if response.status_code != 201:
        raise RuntimeError(f"subscription refused: {response.status_code} {response.text}")
    (await http.post(f"{stack.receiver_url}/_bench/secret", json={"secret": response.json()["secret"]})
     ).raise_for_status()


async def run(args: argparse.Namespace, console: Console) -> dict:
    results: dict = {"machine": machine(), "settings": {
        "db": args.db, "replicas": args.replicas, "tracing": not args.no_tracing, "cases": args.cases,
        "concurrency": args.concurrency, "scenarios": args.scenarios, "rates": args.rates,
        "p2_duration_s": args.p2_duration, "p5_rate": args.p5_rate, "p5_duration_s": args.p5_duration,
        "intake_only_cases": args.intake_only_cases, "event_types": args.event_types, "profile": args.profile,
        "sampler": os.environ.get("OTEL_TRACES_SAMPLER")}}
    profiler = (Profiler(args.output.with_suffix(".profile"), native=args.profile == "native")
                if args.profile != "off" else None)
    stack = Stack(StackOptions(db=args.db, replicas=args.replicas, tracing=not args.no_tracing,
                               zipkin_heap=args.zipkin_heap, keep=args.keep), log=console.print)
    followers: list[asyncio.Task] = []
    try:
        await stack.start()
        async with new_client(max(args.concurrency, args.max_in_flight)) as http:
            subscribed = [t.strip() for t in args.event_types.split(",")]
            await subscribe(http, stack, subscribed)
            arrivals = Arrivals(stack.receiver_url, expected_types(subscribed))
            scraper = Scraper([(svc, url) for svc in SERVICES for url in stack.urls(svc)], args.scrape_interval)
            followers = [asyncio.create_task(arrivals.follow()), asyncio.create_task(scraper.run())]
            bench = Bench(stack, BorderPost(http, stack.urls("intake"), stack.key_dir), arrivals, scraper, console,
                          stall_s=args.stall)
            try:
                await scenarios(args, bench, results, profiler)
            except Exception as exc:  # report what was measured before the failure
                console.print(f"[red]benchmark stopped: {type(exc).__name__}: {exc}[/red]")
                results["error"] = traceback.format_exc()[-3000:]
            ids = [r.case_id for r in bench.screened]
            console.print("[bold]exactly once[/bold]: waiting for the last webhooks")
            await bench.arrivals.wait_for(ids, min(args.stall, 60), kinds=arrivals.expected)
            bench.record_memory()
            results["exactly_once"] = {**arrivals.exactly_once(ids), **scraper.counter_totals()}
            results["failed_cases"] = len(bench.failed)
            results["failures_sample"] = [r.error for r in bench.failed[:5]]
            results["peak_memory"] = bench.peak_memory
            results["scrape_failures"] = scraper.failures
    finally:
        for task in followers:
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
        stack.close()
    return results


async def scenarios(args: argparse.Namespace, bench: Bench, results: dict, profiler: Profiler | None) -> None:
    console = bench.console
    if "p1" in args.scenarios:
        console.print(f"[bold]P1[/bold] burst: {args.cases} cases, {args.concurrency} at a time")
        results["p1"] = await p1_burst(bench, args.cases, args.concurrency, profiler)
    if "p2" in args.scenarios:
        results["p2"] = []
        for rate in args.rates:
            console.print(f"[bold]P2[/bold] {rate} cases/s for {args.p2_duration:.0f} s")
            results["p2"].append(await p2_step(bench, rate, args.p2_duration, args.max_in_flight, args.p2_settle))
    if "p5" in args.scenarios or "intake-only" in args.scenarios:
        console.print(f"[bold]P5[/bold] {args.p5_rate} cases/s, downstream running then stopped; intake-only burst")
        results["p5_and_intake_only"] = await p5_and_intake_only(
            bench, args.p5_rate if "p5" in args.scenarios else 0, args.p5_duration, args.max_in_flight,
            args.intake_only_cases if "intake-only" in args.scenarios else 0, args.concurrency)


def main() -> int:
    args = arguments()
    console = Console(width=None if sys.stdout.isatty() else 160)

    async def guarded() -> dict:
        task = asyncio.current_task()
        for sig in (signal.SIGTERM, signal.SIGINT):  # either tears the stack down
            asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
        return await run(args, console)
    results = asyncio.run(guarded())
    results["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    results["figures"] = derived(results)
    write_json(args.output, results)
    show(console, results)
    console.print(f"JSON: {args.output}")
    return 1 if results.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
