"""The bench's result: the figures, as one JSON object or as a table with how each was measured."""

from __future__ import annotations

import math
from typing import Any

import orjson

from app.bench.ceiling import Ceiling
from app.bench.latency import PROBE_TIMEOUT_S, Latency
from app.bench.options import BenchOptions
from app.bench.worker import WorkerRun

JSON_KEYS = ("ceiling_events_per_s", "events_per_s", "ratio", "batched_events_per_s",
             "batched_ratio", "latency_p50_ms", "latency_p99_ms", "rss_mb_peak",
             "state_bytes_per_1000_users", "counts_correct", "events", "users", "partitions")
STATE_KINDS = {"u": "user buckets", "t": "team buckets", "s": "dedup memory",
               "f": "first-use flags", "k": "rule state", "c": "close markers",
               "a": "at-risk markers"}


def _round(value: float | None, digits: int = 0) -> float | int | None:
    if value is None or math.isnan(value):
        return None
    return round(value) if digits == 0 else round(value, digits)


def build_report(options: BenchOptions, top: Ceiling, runs: list[WorkerRun],
            latency: Latency | None) -> dict[str, Any]:
    """``{"figures": ..., "text": ...}``: the figures, and what to print (JSON or table)."""
    single, batched = runs
    rss = [r.rss_mb_peak for r in runs if r.rss_mb_peak is not None]
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


def _table(options: BenchOptions, figures: dict[str, Any], top: Ceiling,
           runs: list[WorkerRun], latency: Latency | None) -> str:
    single, batched = runs
    how = {
        "ceiling_events_per_s": f"raw aiokafka+orjson+dict, {top.seconds:.2f}s from assignment",
        "events_per_s": f"{single.events_in_interval:,} events in {single.interval_s:.1f}s "
                        f"from {single.measured_from}",
        "batched_events_per_s": f"{batched.events_in_interval:,} events in "
                                f"{batched.interval_s:.1f}s from {batched.measured_from}",
        "rss_mb_peak": f"VmHWM; single-event worker {_show(_round(single.rss_mb_peak, 1))}, "
                       f"array worker {_show(_round(batched.rss_mb_peak, 1))}",
        "state_bytes_per_1000_users": "latest changelog values after the single-event run",
        "counts_correct": "both changelogs vs an independent count",
    }
    if latency:
        how["latency_p50_ms"] = (f"{latency.probes} probes in {latency.sent:,} events "
                                 f"({latency.sent / latency.seconds:,.0f}/s)")
        how["latency_p99_ms"] = "produce -> calls visible in GET /api/kpis/users/{probe}"
    lines = [f"crm-pulse bench: {options.events:,} events, {options.users:,} users in "
             f"{min(options.teams, options.users)} teams, {options.partitions} partitions, "
             f"broker {options.kafka or 'embedded tansu (memory)'}", ""]
    width = max(len(k) for k in figures)
    lines.append(f"{'figure':<{width}}  {'value':>10}  how")
    for key, value in figures.items():
        lines.append(f"{key:<{width}}  {_show(value):>10}  {how.get(key, '')}".rstrip())
    lines.append("")
    for run in runs:
        state = ", ".join(f"{STATE_KINDS.get(k, k)} {v:,} B"
                          for k, v in sorted(run.state_bytes.items(), reverse=True))
        lines.append(
            f"{run.label} worker: first commit after {run.first_commit_s:.1f}s, all committed "
            f"after {run.total_s:.1f}s ({options.events / run.total_s:,.0f} events/s with "
            f"startup); worker CPU {run.cpu_percent:.0f}% of a core; "
            f"{run.changelog_records / options.events:.2f} changelog records per event; "
            f"{run.achievements:,} achievement records; {run.keys:,} table keys: {state}")
    if single.achievements != batched.achievements:
        lines.append(f"note: the two runs emitted {single.achievements:,} and "
                     f"{batched.achievements:,} achievement records for the same events")
    if latency:
        lost = f", {latency.lost} never visible (counted as {PROBE_TIMEOUT_S:g}s)"
        lines.append(
            f"latency phase: {latency.sent:,} events in {latency.seconds:.1f}s; worker CPU "
            f"{latency.worker_cpu_percent:.0f}% of a core; {latency.changelog_per_event:.2f} "
            f"changelog records per event; {latency.polls:,} HTTP polls "
            f"({latency.polls / latency.seconds:,.0f}/s){lost if latency.lost else ''}")
    return "\n".join(lines)
