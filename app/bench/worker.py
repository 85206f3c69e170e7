"""One ``crm-pulse worker`` process over one pre-produced topic: its rate, CPU, RSS and state."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from kafka.admin import KafkaAdminClient

from app.bench.broker import committed_offsets, read_latest
from app.bench.options import PROGRESS_EVERY_S, say
from app.embedded import ManagedProcess
from app.kafka import bootstrap_servers, log_end_offsets
from app.settings import Settings

COMMIT_POLL_S = 0.1


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident set size (VmHWM) of a live process in MiB; None where unknown."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used (0 where unknown)."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


@dataclass
class WorkerRun:
    """How one worker process did over one pre-produced topic."""

    label: str
    events_per_s: float
    interval_s: float  # first observed commit progress -> all committed
    events_in_interval: int
    first_commit_s: float  # worker start -> first observed commit progress
    total_s: float  # worker start -> all committed
    measured_from: str
    cpu_percent: float  # worker CPU over worker start -> all committed (100 = one core)
    problems: list[str] = field(default_factory=list)
    changelog_records: int = 0
    achievements: int = 0  # records the worker wrote to crm.achievements
    keys: int = 0
    state_bytes: dict[str, int] = field(default_factory=dict)  # latest values by key kind
    rss_mb_peak: float | None = None


def wait_all_committed(settings: Settings, process: ManagedProcess, cum: dict[int, list[int]],
                       ends: dict[int, int], events: int, label: str) -> WorkerRun:
    """Poll the group's committed offsets until every record is committed; time it.

    The rate counts the events committed between the first observed progress and the
    observation that everything is committed, over the time between the two. Startup
    (recovery, group join, the first commit interval) is reported apart, not hidden.
    """
    topic, group = settings.topics.activities, settings.app_id
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers(settings.kafka),
                             client_id="crm-pulse-bench-admin")
    started = last_report = time.perf_counter()
    deadline = time.monotonic() + 120 + events / 300
    first: tuple[float, int] | None = None
    try:
        while True:
            offsets = committed_offsets(admin, group, topic)
            now = time.perf_counter()
            done = sum(cum[p][min(offsets.get(p, 0), ends[p])] for p in ends)
            if first is None and done:
                first = (now, done)
            if all(offsets.get(p, 0) >= end for p, end in ends.items()):
                break
            if not process.alive():
                raise RuntimeError(f"{process.name} exited ({process.returncode}); last lines "
                                   f"of {process.log_path}:\n{process.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{label}: only {done:,}/{events:,} events committed; last "
                                   f"lines of {process.log_path}:\n{process.tail()}")
            if now - last_report >= PROGRESS_EVERY_S:
                last_report = now
                rate = (done - first[1]) / (now - first[0]) if first and now > first[0] else 0
                say(f"  {label}: {done:,}/{events:,} events committed ... {rate:,.0f}/s")
            time.sleep(COMMIT_POLL_S)
    finally:
        admin.close()
    cpu = 100 * cpu_seconds(process.pid) / (now - started)
    assert first is not None
    if events > first[1] and now > first[0]:
        return WorkerRun(label, (events - first[1]) / (now - first[0]), now - first[0],
                         events - first[1], first[0] - started, now - started,
                         "first observed commit", cpu)
    # Everything fitted into the first commit interval: only the whole run can be timed.
    return WorkerRun(label, events / (now - started), now - started, events, first[0] - started,
                     now - started, "worker start (all in one commit interval)", cpu)


def read_state(settings: Settings, run: WorkerRun) -> dict[str, dict[str, Any]]:
    """The KPI table as its changelog says (last value per key); sizes go into ``run``."""
    bootstrap = bootstrap_servers(settings.kafka)
    topic = f"{settings.app_id}-kpi-changelog"
    latest, run.changelog_records = asyncio.run(
        read_latest(bootstrap, topic, log_end_offsets(bootstrap, topic)))
    state: dict[str, dict[str, Any]] = {}
    sizes: Counter[str] = Counter()
    for raw_key, raw_value in latest.items():
        key = orjson.loads(raw_key)
        state[key] = orjson.loads(raw_value)
        sizes[key.split("|", 1)[0]] += len(raw_value)
    run.keys, run.state_bytes = len(state), dict(sizes)
    return state
