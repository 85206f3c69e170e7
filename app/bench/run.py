"""The whole bench run: broker, topics, workers and phases in order; every child stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import uuid4
from zoneinfo import ZoneInfo

from kafka.admin import KafkaAdminClient

from app.bench.broker import produce
from app.bench.ceiling import ceiling
from app.bench.children import Children
from app.bench.events import (
    Expected,
    RecordSet,
    array_records,
    check_state,
    expected_state,
    generate_events,
    office,
    single_records,
)
from app.bench.group import WorkerGroup, start_group
from app.bench.latency import PROBE_EVERY, Latency, measure_latency
from app.bench.options import BenchOptions, say
from app.bench.report import build_report
from app.bench.usage import cpu_mark, cpu_percent, peak_rss_mb
from app.bench.worker import WorkerRun, read_state, wait_all_committed
from app.embedded import (
    EmbeddedBroker,
    EmbeddedRedis,
    ManagedProcess,
    settings_with,
    start_broker,
    start_redis,
    wait_ready,
)
from app.kafka import bootstrap_servers, ensure_topics, log_end_offsets
from app.roster import Profile
from app.settings import Settings

GROUP_TIMEOUT_S = 120  # workers started -> every one ready and owning partitions


@dataclass
class _Topic:
    """One bench topic set: its own topic prefix and app id (the workers' consumer group)."""

    label: str
    name: str
    settings: Settings


def _topic_set(label: str, name: str, base: Settings) -> _Topic:
    """Create a fresh topic set ``name`` (empty topics, own prefix and app id)."""
    settings = settings_with(base, topic_prefix=f"{base.topic_prefix}{name}.",
                             app_id=f"{base.app_id}-{name}")
    ensure_topics(settings)
    return _Topic(label, name, settings)


def _produce(topic: _Topic, records: RecordSet,
             options: BenchOptions) -> tuple[dict[int, list[int]], dict[int, int]]:
    """Write ``records`` to the set's activities topic; ``(events below each offset, ends)``."""
    settings = topic.settings
    bootstrap = bootstrap_servers(settings.kafka)
    say(f"producing {options.events:,} events as {len(records.records):,} {topic.label} "
        f"records to {settings.topics.activities} ...")
    seconds = asyncio.run(produce(bootstrap, settings.topics.activities, records.records,
                                  options.partitions, topic.label))
    say(f"  produced in {seconds:.1f}s ({options.events / seconds:,.0f} events/s)")
    ends = log_end_offsets(bootstrap, settings.topics.activities)
    cum = records.cumulative(options.partitions)
    if any(ends[p] != len(cum[p]) - 1 for p in ends):
        raise RuntimeError(f"{settings.topics.activities}: end offsets {ends} do not match the "
                           f"records written {[len(cum[p]) - 1 for p in sorted(cum)]}")
    return cum, ends


def _run_workers(topic: _Topic, records: RecordSet, options: BenchOptions, workdir: Path,
                 children: Children, expected: Expected, people: Sequence[Profile],
                 day_key: str) -> tuple[WorkerRun, WorkerGroup]:
    """Start the group; once every worker owns partitions, produce ``records``, time the
    group to the last commit and check its state."""
    folder = workdir / topic.name
    say(f"starting {options.workers} worker(s) in one group for the {topic.label} records "
        f"(logs in {folder}) ...")
    group = start_group(topic.settings, options.workers, folder, children)
    group.wait_assigned(GROUP_TIMEOUT_S)
    say(f"  group complete after {group.ready_s:.1f}s: " + "; ".join(
        f"{name} owns partitions {owned}" for name, owned in group.partitions().items()))
    group.mark()
    pids = {process.name: process.pid for process in children.processes} | {"bench": os.getpid()}
    produced = cpu_mark(pids)
    cum, ends = _produce(topic, records, options)
    run = wait_all_committed(topic.settings, group, cum, ends, options.events, topic.label,
                             produced, pids)
    say(f"  {topic.label}: {run.events_per_s:,.0f} events/s over {run.interval_s:.1f}s (from "
        f"{run.measured_from}, {run.first_commit_s:.1f}s after the first record; all "
        f"committed after {run.total_s:.1f}s)")
    if run.rebalances:
        say(f"  WARNING: the group rebalanced after it was complete ({run.rebalances} new "
            f"generation(s)): the figure includes the rebalance")
    _check(topic, run, expected, people, day_key)
    return run, group


def _check(topic: _Topic, run: WorkerRun, expected: Expected, people: Sequence[Profile],
           day_key: str) -> None:
    """Compare the group's KPI changelog and DLQ with the independent count (into ``run``)."""
    say(f"checking the {topic.label} workers' KPI changelog against an independent count ...")
    settings = topic.settings
    state = read_state(settings, run)
    run.problems = check_state(expected, state, day_key, [p.user_id for p in people])
    bootstrap = bootstrap_servers(settings.kafka)
    dlq = sum(log_end_offsets(bootstrap, settings.topics.dlq).values())
    run.achievements = sum(log_end_offsets(bootstrap, settings.topics.achievements).values())
    if dlq:
        run.problems.append(f"{dlq} record(s) in {settings.topics.dlq}")
    for problem in run.problems[:10]:
        say(f"  MISMATCH {problem}")
    say(f"  {topic.label}: counts {'correct' if not run.problems else 'WRONG'} "
        f"({run.keys:,} table keys, {run.changelog_records:,} changelog records read)")


def _latency_phase(topic: _Topic, group: WorkerGroup, options: BenchOptions,
                   people: Sequence[Profile], tz: ZoneInfo, run: str) -> Latency:
    settings = topic.settings
    for member, process in zip(group.settings, group.processes, strict=True):
        wait_ready(member, 60, process=process)
    say(f"latency: {options.rate:,.0f} events/s for {options.latency_seconds:g}s, "
        f"every {PROBE_EVERY}th event a probe call ...")
    changelog = f"{settings.app_id}-kpi-changelog"
    bootstrap = bootstrap_servers(settings.kafka)
    written = sum(log_end_offsets(bootstrap, changelog).values())
    pids = {process.name: process.pid for process in group.processes}
    start = cpu_mark(pids)
    latency = asyncio.run(measure_latency(settings, options, people, tz, run, group.owner_url))
    shares = cpu_percent(start, cpu_mark(pids))
    latency.worker_cpu_percent = sum(shares[name] for name in pids)
    written = sum(log_end_offsets(bootstrap, changelog).values()) - written
    latency.changelog_per_event = written / max(1, latency.sent)
    say(f"  latency: p50 {latency.p50_ms:,.1f} ms, p99 {latency.p99_ms:,.1f} ms "
        f"({latency.probes} probes, {latency.lost} never visible)")
    return latency


def _measure(options: BenchOptions, settings: Settings, workdir: Path, kafka: str,
             redis: str, children: Children) -> dict[str, Any]:
    """Everything after the broker (and Redis) are up; returns the report."""
    config = settings.pulse
    tz = ZoneInfo(config.timezone)
    run = uuid4().hex[:8]
    base = settings_with(settings, kafka=kafka, redis=redis, partitions=options.partitions,
                         topic_prefix=f"bench-{run}-", app_id=f"crm-pulse-bench-{run}",
                         session_timeout_s=6)
    now = datetime.now(tz)
    say(f"generating {options.events:,} events of today ({config.timezone}) for "
        f"{options.users:,} users in {min(options.teams, options.users)} teams ...")
    people = office(options.users, options.teams, config.timezone)
    events = generate_events(random.Random(options.seed), options.events, people, now, run)
    expected = expected_state(events, config)
    day_key = f"d:{now.date().isoformat()}"
    single = _topic_set("single-event", "single", base)
    batched = _topic_set(f"{options.array_size}-event array", "batched", base)
    records = {single.name: single_records(events),
               batched.name: array_records(events, options.array_size)}
    del events

    # The ceiling reads its own copy of the single-event records: the workers' topics are
    # written only once their group is complete.
    top_set = _topic_set("single-event", "ceiling", base)
    _produce(top_set, records[single.name], options)
    say("ceiling: raw aiokafka consume + orjson decode + per-user count ...")
    top = asyncio.run(ceiling(bootstrap_servers(kafka), top_set.settings.topics.activities,
                              top_set.settings.app_id, options.events))
    if top.counts != dict(expected.events):
        raise RuntimeError("the ceiling consumer's per-user counts differ from what was produced")
    say(f"  ceiling: {top.events_per_s:,.0f} events/s over {top.seconds:.2f}s")

    runs: list[WorkerRun] = []
    latency: Latency | None = None
    for topic in (single, batched):
        result, group = _run_workers(topic, records.pop(topic.name), options, workdir,
                                     children, expected, people, day_key)
        if topic is single and options.latency_seconds > 0:
            latency = _latency_phase(topic, group, options, people, tz, run)
        result.rss_mb_peak = {process.name: peak_rss_mb(process.pid)
                              for process in group.processes}
        for process in group.processes:
            children.stop(process)
        runs.append(result)
    if options.kafka:
        _cleanup(base, (top_set.name, single.name, batched.name))
    return build_report(options, top, runs, latency)


def _cleanup(base: Settings, names: Sequence[str]) -> None:
    """Best effort: remove the bench's topics and groups from a broker that stays up."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers(base.kafka),
                             client_id="crm-pulse-bench-admin")
    try:
        prefixes = tuple(f"{base.topic_prefix}{n}." for n in names)
        apps = tuple(f"{base.app_id}-{n}-" for n in names)
        doomed = [t for t in admin.list_topics() if t.startswith(prefixes + apps)]
        with contextlib.suppress(Exception):
            admin.delete_topics(doomed, raise_errors=False)
        with contextlib.suppress(Exception):
            admin.delete_groups([f"{base.app_id}-{n}" for n in names])
    finally:
        admin.close()


def run_bench(settings: Settings, options: BenchOptions) -> int:
    """Run the benchmark and print the result; 0 when the counts are correct, else 1."""
    if not 1 <= options.workers <= options.partitions:
        say(f"--workers must be 1 to --partitions ({options.partitions}): each worker needs "
            f"a partition of its own")
        return 2
    for noisy in ("kafka", "aiokafka", "app.kafka"):  # client chatter; failures still raise
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    settings.pulse  # noqa: B018  (a bad KPI model fails here, before any process starts)
    workdir = Path(tempfile.mkdtemp(prefix="crm-pulse-bench-"))
    report: dict[str, Any] | None = None
    try:
        with Children() as children:
            kafka, redis = options.kafka, settings.redis
            if not kafka:
                # The workers' serving layer writes to Redis after every batch: a private
                # redis-server, like the broker, so that whatever listens on the default
                # port (a dev stack, or nothing) does not change the figures.
                say("starting the embedded broker (tansu, in memory) and redis-server ...")
                brokers: list[EmbeddedBroker] = []
                servers: list[EmbeddedRedis] = []

                def start() -> ManagedProcess:
                    brokers.append(start_broker(workdir))
                    return brokers[0].process

                def start_cache() -> ManagedProcess:
                    servers.append(start_redis(workdir / "redis"))
                    return servers[0].process

                children.start(start)
                children.start(start_cache)
                kafka, redis = brokers[0].url, servers[0].url
            report = _measure(options, settings, workdir, kafka, redis, children)
    except KeyboardInterrupt as stop:
        say(f"interrupted ({stop or 'SIGINT'}); everything the bench started is stopped")
        return 130
    finally:
        if report is None:
            say(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report["text"], flush=True)
    return 0 if report["figures"]["counts_correct"] else 1
