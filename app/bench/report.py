"""The bench's result: the figures, as one JSON object or as a table with how each was measured."""

from __future__ import annotations

import math
import os
from typing import Any

import orjson

from app.bench.ceiling import Ceiling
from app.bench.latency import PROBE_TIMEOUT_S, Latency
from app.bench.options import BenchOptions
from app.bench.worker import WorkerRun

JSON_KEYS = ("ceiling_events_per_s", "events_per_s", "ratio", "batched_events_per_s",
             "batched_ratio", "latency_p50_ms", "latency_p99_ms", "rss_mb_peak",
             "state_bytes_per_1000_users", "counts_correct", "events", "users", "partitions",
             "workers")
STATE_KINDS = {"u": "user buckets", "t": "team buckets", "s": "dedup memory",
               "e": "statement lines", "f": "first-use flags", "k": "rule state",
               "c": "close markers", "a": "at-risk markers"}


def _round(value: float | None, digits: int = 0) -> float | int | None:
    if value is None or math.isnan(value):
        return None
    return round(value) if digits == 0 else round(value, digits)


def build_report(options: BenchOptions, top: Ceiling, runs: list[WorkerRun],
            latency: Latency | None) -> dict[str, Any]:
    """``{"figures": ..., "text": ...}``: the figures, and what to print (JSON or table)."""
    single, batched = runs
    rss = [mb for run in runs for mb in run.rss_mb_peak.values() if mb is not None]
    figures = {
        "ceiling_events_per_s": _round(top.events_per_s),
        "events_per_s": _round(single.events_per_s),
        "ratio": _round(single.events_per_s / top.events_per_s, 4),
        "batched_events_per_s": _round(batched.events_per_s),
        "batched_ratio": _round(batched.events_per_s / top.events_per_s, 4),
        "latency_p50_ms": _round(latency.p50_ms, 1) if latency else None,
        "latency_p99_ms": _round(latency.p99_ms, 1) if latency else None,
        "rss_mb_peak": _round(max(rss), 1) if rss else None,
        "state_bytes_per_1000_users": _round(
            sum(single.state_bytes.values()) / options.users * 1000),
        "counts_correct": not single.problems and not batched.problems,
        "events": options.events,
        "users": options.users,
        "partitions": options.partitions,
        "workers": options.workers,
    }
    assert tuple(figures) == JSON_KEYS
    text = (orjson.dumps(figures).decode() if options.json
            else _table(options, figures, top, runs, latency))
    return {"figures": figures, "text": text}


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.4f}".rstrip("0").rstrip(".")


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} MB"


def _run_lines(run: WorkerRun, events: int) -> list[str]:
    """How one group run went: group, clock, CPU, output and state."""
    owned = "; ".join(f"{name} partitions {','.join(map(str, parts))}"
                      for name, parts in run.partitions.items())
    rebalanced = (f"REBALANCED after it was complete ({run.rebalances} new generation(s))"
                  if run.rebalances else "no rebalance after that")
    cpu = ", ".join(f"{name} {share:.0f}%" for name, share in run.cpu_percent.items()
                    if name != "machine")
    machine = run.cpu_percent.get("machine")
    cores = 100 * (os.cpu_count() or 1)
    state = ", ".join(f"{STATE_KINDS.get(k, k)} {v:,} B"
                      for k, v in sorted(run.state_bytes.items(), reverse=True))
    return [
        f"{run.label} run, {run.workers} worker(s): group complete {run.group_ready_s:.1f}s "
        f"after start ({owned}), {rebalanced}",
        f"  produced in {run.produce_s:.1f}s; clock from {run.first_commit_s:.1f}s to "
        f"{run.total_s:.1f}s after the first record ({events / run.total_s:,.0f} events/s "
        f"over the whole {run.total_s:.1f}s)",
        f"  CPU on the clock (100% = one core): {cpu}"
        + (f"; machine {machine:.0f}% of {cores}%" if machine is not None else ""),
        f"  peak RSS {', '.join(f'{name} {_mb(mb)}' for name, mb in run.rss_mb_peak.items())}; "
        f"{run.changelog_records / events:.2f} changelog records per event; "
        f"{run.achievements:,} achievement records; {run.keys:,} table keys: {state}",
    ]


def _table(options: BenchOptions, figures: dict[str, Any], top: Ceiling,
           runs: list[WorkerRun], latency: Latency | None) -> str:
    single, batched = runs
    how = {
        "ceiling_events_per_s": f"raw aiokafka+orjson+dict, {top.seconds:.2f}s from assignment",
        "events_per_s": f"{single.events_in_interval:,} events in {single.interval_s:.1f}s "
                        f"from {single.measured_from}",
        "batched_events_per_s": f"{batched.events_in_interval:,} events in "
                                f"{batched.interval_s:.1f}s from {batched.measured_from}",
        "rss_mb_peak": "VmHWM, the largest of all workers (each below)",
        "state_bytes_per_1000_users": "latest changelog values after the single-event run",
        "counts_correct": "both changelogs vs an independent count",
        "workers": "worker processes in one consumer group, per run",
    }
    if latency:
        how["latency_p50_ms"] = (f"{latency.probes} probes in {latency.sent:,} events "
                                 f"({latency.sent / latency.seconds:,.0f}/s)")
        how["latency_p99_ms"] = "produce -> calls visible in GET /api/kpis/users/{probe}"
    lines = [f"crm-pulse bench: {options.events:,} events, {options.users:,} users in "
             f"{min(options.teams, options.users)} teams, {options.partitions} partitions, "
             f"{options.workers} worker(s), broker {options.kafka or 'embedded tansu (memory)'}",
             ""]
    width = max(len(k) for k in figures)
    lines.append(f"{'figure':<{width}}  {'value':>10}  how")
    for key, value in figures.items():
        lines.append(f"{key:<{width}}  {_show(value):>10}  {how.get(key, '')}".rstrip())
    lines.append("")
    for run in runs:
        lines.extend(_run_lines(run, options.events))
    if single.achievements != batched.achievements:
        lines.append(f"note: the two runs emitted {single.achievements:,} and "
                     f"{batched.achievements:,} achievement records for the same events")
    if latency:
        lost = f", {latency.lost} never visible (counted as {PROBE_TIMEOUT_S:g}s)"
        lines.append(
            f"latency phase: {latency.sent:,} events in {latency.seconds:.1f}s; workers' CPU "
            f"{latency.worker_cpu_percent:.0f}% of a core; {latency.changelog_per_event:.2f} "
            f"changelog records per event; {latency.polls:,} HTTP polls "
            f"({latency.polls / latency.seconds:,.0f}/s){lost if latency.lost else ''}")
    return "\n".join(lines)
