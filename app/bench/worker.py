"""N ``crm-pulse worker`` processes over one topic: their rate from committed offsets, and state."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from kafka.admin import KafkaAdminClient

from app.bench.broker import committed_offsets, read_latest
from app.bench.group import WorkerGroup
from app.bench.options import PROGRESS_EVERY_S, say
from app.bench.usage import CpuMark, cpu_mark, cpu_percent
from app.kafka import bootstrap_servers, log_end_offsets
from app.settings import Settings

COMMIT_POLL_S = 0.1


@dataclass
class WorkerRun:
    """How the workers of one group did over one topic (times from the first record produced)."""

    label: str
    workers: int
    events_per_s: float
    interval_s: float  # the clock: first commit observed after producing -> all committed
    events_in_interval: int
    measured_from: str
    group_ready_s: float  # workers started -> every worker ready and owning partitions
    produce_s: float  # first record produced -> last record acknowledged
    first_commit_s: float  # first record produced -> the clock starts
    total_s: float  # first record produced -> all committed
    cpu_percent: dict[str, float]  # over the clock, per process and "machine" (100 = one core)
    partitions: dict[str, list[int]]  # worker -> the partitions it owned
    rebalances: int = 0  # group generations joined after the group was complete
    problems: list[str] = field(default_factory=list)
    changelog_records: int = 0
    achievements: int = 0  # records the workers wrote to crm.achievements
    keys: int = 0
    state_bytes: dict[str, int] = field(default_factory=dict)  # latest values by key kind
    rss_mb_peak: dict[str, float | None] = field(default_factory=dict)  # per worker


def wait_all_committed(settings: Settings, group: WorkerGroup, cum: dict[int, list[int]],
                       ends: dict[int, int], events: int, label: str, produced: CpuMark,
                       pids: Mapping[str, int]) -> WorkerRun:
    """Poll the group's committed offsets until every record is committed; time it.

    Called once everything is produced (``produced``: the mark taken before the first
    record). The clock starts at the first poll that shows a new commit and stops at the
    poll that shows every partition committed to its log end; the rate counts the events
    committed in between. So neither the producer nor the group's start is on the clock.
    """
    topic, group_id = settings.topics.activities, settings.app_id
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers(settings.kafka),
                             client_id="crm-pulse-bench-admin")
    produce_s = time.perf_counter() - produced.at
    last_report = time.perf_counter()
    deadline = time.monotonic() + 120 + events / 300
    baseline: int | None = None
    first: tuple[CpuMark, int] | None = None
    try:
        while True:
            offsets = committed_offsets(admin, group_id, topic)
            now = time.perf_counter()
            done = sum(cum[p][min(offsets.get(p, 0), ends[p])] for p in ends)
            if baseline is None:
                baseline = done
            elif first is None and done > baseline:
                first = (cpu_mark(pids), done)
            if all(offsets.get(p, 0) >= last for p, last in ends.items()):
                finish = cpu_mark(pids)
                break
            group.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{label}: only {done:,}/{events:,} events committed; logs: "
                                   f"{', '.join(str(p.log_path) for p in group.processes)}")
            if now - last_report >= PROGRESS_EVERY_S:
                last_report = now
                rate = (done - first[1]) / (now - first[0].at) if first else 0
                say(f"  {label}: {done:,}/{events:,} events committed ... {rate:,.0f}/s")
            time.sleep(COMMIT_POLL_S)
    finally:
        admin.close()
    if first is not None and events > first[1]:
        start, counted = first[0], events - first[1]
        measured_from = "the first commit after producing"
    else:  # everything was committed by then (small runs): only the whole run can be timed
        start, counted = produced, events
        measured_from = "the first record produced (all committed within a commit interval)"
    return WorkerRun(
        label, len(group.processes), events_per_s=counted / (finish.at - start.at),
        interval_s=finish.at - start.at, events_in_interval=counted, measured_from=measured_from,
        group_ready_s=group.ready_s, produce_s=produce_s, first_commit_s=start.at - produced.at,
        total_s=finish.at - produced.at, cpu_percent=cpu_percent(start, finish),
        partitions=group.partitions(), rebalances=group.rebalances())


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
