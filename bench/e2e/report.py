"""The results as tables (rich) and as one JSON document; targets from issue 13, item 8, beside the figures."""

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

SERVICES = ("intake", "referral", "notification")


def _mark(ok: bool | None) -> str:
    return "" if ok is None else ("[green]met[/green]" if ok else "[red]missed[/red]")


def derived(results: dict) -> dict:
    """The figures the issue names, computed from the scenarios' results."""
    p1, extra = results.get("p1") or {}, results.get("p5_and_intake_only") or {}
    intake_only = (extra.get("intake_only") or {}).get("intake_cases_per_s")
    sweep = results.get("p2") or []
    sustained = [step["rate"] for step in sweep if step["sustained"]]
    at_25 = next((s for s in sweep if s["rate"] == 25), None)
    memory = results.get("peak_memory") or {}
    service_peaks = {n: m["VmHWM"] / 1024 for n, m in memory.items() if n.split("-")[0] in SERVICES}
    intake_lag = max((v for k, v in (p1.get("lag_max") or {}).items() if k.startswith("lag intake.")), default=None)
    e2e = p1.get("e2e_cases_per_s")
    return {
        "p1_e2e_cases_per_s": e2e,
        "p1_intake_cases_per_s": p1.get("intake_cases_per_s"),
        "p2_highest_sustained_rate": max(sustained) if sustained else None,
        "p2_p99_ms_at_25": (at_25 or {}).get("screening_to_webhook", {}).get("p99_ms"),
        "p2_25_sustained": at_25["sustained"] if at_25 else None,
        "p3_e2e_over_intake_only": round(e2e / intake_only, 2) if e2e and intake_only else None,
        "p3_same_run": round(e2e / p1["intake_cases_per_s"], 2) if e2e and p1.get("intake_cases_per_s") else None,
        "p5_p99_stopped_over_running": (extra.get("p5") or {}).get("p99_stopped_over_running"),
        "p5_p99_running_over_stopped": (extra.get("p5") or {}).get("p99_running_over_stopped"),
        "p1_services_cpu_ms_per_case": _services_cpu(p1.get("cpu")),
        "p6_peak_rss_mib_max_service": round(max(service_peaks.values()), 1) if service_peaks else None,
        "intake_lag_max_p1": intake_lag,
    }


def show(console: Console, results: dict) -> None:
    m, figures = results["machine"], results["figures"]
    console.rule(f"Enlace end-to-end benchmark · {results['settings']['db']} · "
                 f"{results['settings']['replicas']} replica(s) · {m['date']}")
    console.print(f"{m['nproc']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, Python {m['python']}, load average "
                  f"{m['load_average_at_start']} at the start, {m.get('load_average_at_end')} at the end, "
                  f"commit {m.get('commit')}{' + uncommitted changes' if m.get('uncommitted_changes') else ''}; "
                  f"settings {results['settings']}", highlight=False)
    targets = Table(title="Figures and issue 13's targets (item 8: set for 2 cores, SQLite, make up's settings)")
    for column in ("figure", "measured", "target", ""):
        targets.add_column(column)
    f = figures
    rows = [  # (figure, measured, target, met?)
        ("P1 end to end (cases/s)", f["p1_e2e_cases_per_s"], "≥ 50 (aim 170)", _ge(f["p1_e2e_cases_per_s"], 50)),
        ("P1 intake, same burst (cases/s)", f["p1_intake_cases_per_s"], "", None),
        ("P2 highest sustained rate (cases/s)", f["p2_highest_sustained_rate"], "≥ 25",
         _ge(f["p2_highest_sustained_rate"], 25)),
        ("P2 screening→webhook p99 at 25/s (ms)", f["p2_p99_ms_at_25"], "≤ 500", _le(f["p2_p99_ms_at_25"], 500)),
        ("P3 end to end ÷ intake-only", f["p3_e2e_over_intake_only"], "≥ 0.8",
         _ge(f["p3_e2e_over_intake_only"], 0.8)),
        ("P3 (intake rate of the same burst)", f["p3_same_run"], "", None),
        ("P5 intake p99 stopped ÷ running", f["p5_p99_stopped_over_running"], "≤ 1.1",
         _le(f["p5_p99_stopped_over_running"], 1.1)),
        ("P5 inverse: running ÷ stopped (downstream's cost to intake)", f["p5_p99_running_over_stopped"], "", None),
        ("P1 CPU per case, three services (ms)", f["p1_services_cpu_ms_per_case"], "", None),
        ("P6 peak RSS, largest service (MiB)", f["p6_peak_rss_mib_max_service"], "≤ 200",
         _le(f["p6_peak_rss_mib_max_service"], 200)),
        ("intake consumer lag, max in P1", f["intake_lag_max_p1"], "< 100", _lt(f["intake_lag_max_p1"], 100)),
    ]
    once = results.get("exactly_once") or {}
    rows.append(("exactly once: lost / duplicated cases", f"{once.get('lost')} / {once.get('duplicated_cases')}",
                 "0 / 0", once.get("lost") == 0 and once.get("duplicated_cases") == 0 if once else None))
    dead = once.get("enlace_dlq_messages_total")
    rows.append(("dead letters, any consumer (from /metrics)", dead, "0", None if dead is None else dead == 0))
    if f["p2_highest_sustained_rate"] is None and results.get("p2"):
        rows[2] = (rows[2][0], f"none of {[s['rate'] for s in results['p2']]}", rows[2][2], False)
    comparable = results["settings"]["db"] == "sqlite" and results["settings"]["replicas"] == 1
    for name, value, target, ok in rows:
        targets.add_row(name, "-" if value is None else str(value), target, _mark(ok) if comparable else "")
    console.print(targets)
    _p1(console, results.get("p1"))
    _p2(console, results.get("p2") or [])
    _p5(console, results.get("p5_and_intake_only") or {})
    _cpu(console, results)
    _memory(console, results.get("peak_memory") or {})
    _lag(console, (results.get("p1") or {}).get("lag_series") or [])
    _once(console, once, results.get("failed_cases", 0))
    _profile(console, (results.get("p1") or {}).get("profile"))


def _services_cpu(cpu: dict | None) -> float | None:
    if not cpu:
        return None
    return round(sum(v["cpu_ms_per_case"] for n, v in cpu.items() if n.split("-")[0] in SERVICES), 1)


def _ge(value, bound) -> bool | None:
    return None if value is None else value >= bound


def _le(value, bound) -> bool | None:
    return None if value is None else value <= bound


def _lt(value, bound) -> bool | None:
    return None if value is None else value < bound


def _pct(p: dict) -> str:
    return f"{p['p50_ms']:.0f} / {p['p95_ms']:.0f} / {p['p99_ms']:.0f}" if p else "-"


def _p1(console: Console, p1: dict | None) -> None:
    if not p1:
        return
    table = Table(title=f"P1 burst: {p1['cases']} cases, {p1['concurrency']} at a time")
    for column in ("", "value"):
        table.add_column(column)
    for key in ("accepted", "failed", "retries", "arrived", "intake_seconds", "intake_cases_per_s", "e2e_seconds",
                "e2e_cases_per_s"):
        table.add_row(key.replace("_", " "), str(p1[key]))
    table.add_row("screening→webhook p50/p95/p99 (ms)", _pct(p1["screening_to_webhook"]))
    for step, p in p1["intake_request"].items():
        table.add_row(f"intake {step} p50/p95/p99 (ms)", _pct(p))
    console.print(table)


def _p2(console: Console, sweep: list[dict]) -> None:
    if not sweep:
        return
    table = Table(title="P2 fixed arrival rates: screening → webhook")
    for column in ("rate", "achieved", "cases", "arrived", "p50/p95/p99 ms", "median 1st→last third", "sustained"):
        table.add_column(column)
    for s in sweep:
        table.add_row(str(s["rate"]), str(s["achieved_cases_per_s"]), str(s["accepted"]), str(s["arrived"]),
                      _pct(s["screening_to_webhook"]), f"{s['median_first_third_ms']} → {s['median_last_third_ms']}",
                      "yes" if s["sustained"] else "no: " + "; ".join(s["not_sustained_because"]))
    console.print(table)


def _p5(console: Console, extra: dict) -> None:
    p5 = extra.get("p5")
    if p5:
        table = Table(title=f"P5 intake requests at {p5['running']['rate']} cases/s "
                            f"(register, consent, screening together)")
        for column in ("referral and notification", "requests", "p50/p95/p99 ms"):
            table.add_column(column)
        for state in ("running", "stopped"):
            table.add_row(state, str(p5[state]["intake_request"].get("samples")), _pct(p5[state]["intake_request"]))
        console.print(table)
    for key in ("intake_only", "catch_up"):
        if extra.get(key):
            shown = {k: v for k, v in extra[key].items() if k != "cpu"}
            console.print(f"{key.replace('_', '-')}: {shown}", highlight=False)


def _cpu(console: Console, results: dict) -> None:
    windows = {"P1": (results.get("p1") or {}).get("cpu")}
    for step in results.get("p2") or []:
        windows[f"P2 {step['rate']}/s"] = step["cpu"]
    windows["intake-only"] = ((results.get("p5_and_intake_only") or {}).get("intake_only") or {}).get("cpu")
    windows = {k: v for k, v in windows.items() if v}
    if not windows:
        return
    table = Table(title="CPU ms per case (cores busy on average over the window)")
    table.add_column("process")
    for name in windows:
        table.add_column(name, justify="right")
    for process in dict.fromkeys(name for window in windows.values() for name in window):
        table.add_row(process, *(f"{w[process]['cpu_ms_per_case']} ({w[process]['cores_busy']})" if process in w
                                 else "-" for w in windows.values()))
    table.add_row("the services together", *(str(_services_cpu(w)) for w in windows.values()))
    console.print(table)


def _memory(console: Console, memory: dict) -> None:
    table = Table(title="P6 memory per process (MiB)")
    for column in ("process", "peak (VmHWM)", "last (VmRSS)"):
        table.add_column(column)
    for name, reading in memory.items():
        table.add_row(name, f"{reading['VmHWM'] / 1024:.0f}", f"{reading.get('VmRSS', 0) / 1024:.0f}")
    console.print(table)


def _lag(console: Console, series: list[dict], rows: int = 16) -> None:
    if not series:
        return
    keys = sorted({k for point in series for k in point if k != "t"})
    step = max(1, len(series) // rows)
    table = Table(title="During P1, scraped from /metrics: consumer lag per consumer group, outbox backlog per "
                        "service, webhooks pending (records)")
    table.add_column("t (s)", justify="right")
    for key in keys:
        table.add_column(key.removeprefix("lag ").replace("protection-holds", "holds"), justify="right")
    start = series[0]["t"]
    for point in series[::step]:
        table.add_row(f"{point['t'] - start:.0f}", *(f"{point[k]:.0f}" if k in point else "-" for k in keys))
    table.add_row("max", *(f"{max(p.get(k, 0) for p in series):.0f}" for k in keys))
    console.print(table)


def _once(console: Console, once: dict, failed: int) -> None:
    if not once:
        return
    table = Table(title="Exactly once, over every case screened in the run")
    for column in ("", "count"):
        table.add_column(column)
    for key, value in once.items():
        table.add_row(key.replace("_", " "), json.dumps(value) if isinstance(value, dict) else str(value))
    table.add_row("cases intake failed (not counted above)", str(failed))
    console.print(table)


def _profile(console: Console, profile: dict | None) -> None:
    for name, summary in (profile or {}).items():
        cpu = summary["cpu_user_s"] + summary["cpu_system_s"]
        title = (f"Profile of {name} during P1, py-spy {summary['mode']}: {summary['samples']} samples over "
                 f"{summary['seconds']} s; CPU from /proc {cpu:.1f} s (user {summary['cpu_user_s']}, system "
                 f"{summary['cpu_system_s']})")
        if "gil_held_s" in summary:
            title += f", GIL held {summary['gil_held_s']} s"
        table = Table(title=title + " · % of samples")
        lists = [summary["self"], summary["project_frame"], summary["packages_self"]]
        headers = ["self (leaf function)", "on behalf of (innermost project frame)", "package (self)"]
        if summary.get("thread_time"):
            lists.append(summary["thread_time"])
            headers.append("thread time")
        for header in headers:
            table.add_column(header, overflow="fold", max_width=44)
            table.add_column("%", justify="right")
        for i in range(max(len(x) for x in lists)):
            cells = []
            for items in lists:
                cells += [items[i][0], str(items[i][1])] if i < len(items) else ["", ""]
            table.add_row(*cells)
        console.print(table)


def write_json(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str))
