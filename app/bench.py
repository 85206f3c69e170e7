"""``crm-pulse bench``: throughput, latency, memory and exactness of the pipeline as it is.

One run on one broker measures (``docs/performance.md`` gives the exact intervals):

- ``ceiling_events_per_s``: raw aiokafka consume + orjson decode + per-user dict count over
  the single-event topic, the physical limit of this machine and broker right now;
- ``events_per_s`` / ``batched_events_per_s``: a real ``crm-pulse worker`` process over the
  same events written as single-event records and as JSON-array records, timed by its
  consumer group's committed offsets (a commit follows the batch's acknowledged changelog);
- ``counts_correct``: each worker's KPI changelog against an independent count;
- ``latency_p50_ms`` / ``latency_p99_ms``: produce -> KPI visible in the HTTP API at a steady
  rate, sampled with probe users;
- ``rss_mb_peak`` (VmHWM of the workers) and ``state_bytes_per_1000_users``.

Every process it starts is stopped by PID, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import quote
from uuid import uuid4
from zoneinfo import ZoneInfo

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import TopicPartition as AioPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.partitioner import murmur2
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient

from app.config import PulseConfig
from app.embedded import (
    EmbeddedBroker,
    ManagedProcess,
    free_port,
    settings_with,
    start_broker,
    start_worker,
    wait_ready,
)
from app.kafka import bootstrap_servers, ensure_topics
from app.roster import Profile
from app.settings import Settings
from app.simulator import generate_event, hourly_rate

logger = logging.getLogger(__name__)

ROLES = ("sales_rep", "sales_rep", "account_manager", "service_agent")
PROBE_EVERY = 50  # every 50th event of the latency phase is a probe call
POLL_INTERVAL_S = 0.02  # pause between two HTTP polling rounds of the latency probes
PROBE_TIMEOUT_S = 30.0  # a probe not visible by then counts as this long (and is reported)
COMMIT_POLL_S = 0.1
PROGRESS_EVERY_S = 3.0
BIG_FETCH = {"fetch_max_bytes": 64 * 1024 * 1024, "max_partition_fetch_bytes": 8 * 1024 * 1024}
JSON_KEYS = ("ceiling_events_per_s", "events_per_s", "ratio", "batched_events_per_s",
             "batched_ratio", "latency_p50_ms", "latency_p99_ms", "rss_mb_peak",
             "state_bytes_per_1000_users", "counts_correct", "events", "users", "partitions")
STATE_KINDS = {"u": "user buckets", "t": "team buckets", "s": "dedup memory",
               "f": "first-use flags", "k": "rule state", "c": "close markers",
               "a": "at-risk markers"}


@dataclass(frozen=True)
class BenchOptions:
    """What to measure: the flags of ``crm-pulse bench``."""

    kafka: str | None = None
    events: int = 200_000
    users: int = 1_000
    teams: int = 50
    partitions: int = 4
    rate: float = 2_000.0
    latency_seconds: float = 20.0
    array_size: int = 50
    seed: int = 8
    json: bool = False


def say(line: str) -> None:
    """A progress line on stderr (stdout carries only the result)."""
    print(line, file=sys.stderr, flush=True)


# -- events and records (pure) --------------------------------------------------------------


def partition_of(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (murmur2), as every CRM Pulse producer uses it."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def office(users: int, teams: int, timezone: str) -> list[Profile]:
    """The benchmark's people: ``users`` in ``teams`` teams, a mix of the default roles."""
    return [
        Profile(user_id=f"bench-user-{i:05d}", team_id=f"bench-team-{i % teams:02d}",
                role=ROLES[i % len(ROLES)], timezone=timezone)
        for i in range(users)
    ]


def generate_events(rng: random.Random, count: int, people: Sequence[Profile], now: datetime,
                    run: str) -> list[dict[str, Any]]:
    """``count`` simulator events (:func:`app.simulator.generate_event`) of today, oldest first.

    Moments are spread over ``now``'s local day up to ``now``, so nothing is late; busier
    people (role and diligence) act more often. Event ids are unique: no duplicates.
    """
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    span = max(1.0, (now - day_start).total_seconds() - 1.0)
    who = rng.choices(people, weights=[hourly_rate(p) for p in people], k=count)
    moments = sorted(day_start + timedelta(seconds=rng.random() * span) for _ in range(count))
    return [generate_event(rng, person, moment, seq, run=f"bench-{run}")
            for seq, (person, moment) in enumerate(zip(who, moments, strict=True))]


@dataclass
class RecordSet:
    """Encoded records of one topic, with how many events each record carries."""

    records: list[tuple[bytes, bytes]]
    events_per_record: list[int]

    def cumulative(self, partitions: int) -> dict[int, list[int]]:
        """Per partition, ``[k]`` = events in its first ``k`` records (= below offset ``k``).

        Holds because the topic is new and each partition gets its records in list order.
        """
        cum: dict[int, list[int]] = {p: [0] for p in range(partitions)}
        for (key, _), count in zip(self.records, self.events_per_record, strict=True):
            runs = cum[partition_of(key, partitions)]
            runs.append(runs[-1] + count)
        return cum


def single_records(events: Sequence[dict[str, Any]]) -> RecordSet:
    """One event per record, keyed by user id (what external producers write)."""
    return RecordSet([(e["user_id"].encode(), orjson.dumps(e)) for e in events], [1] * len(events))


def array_records(events: Sequence[dict[str, Any]], size: int) -> RecordSet:
    """Each user's events as JSON arrays of up to ``size`` (what our own producers write).

    Arrays are cut in time order, so records of different users interleave as at a busy edge.
    """
    open_arrays: dict[str, list[dict[str, Any]]] = defaultdict(list)
    records: list[tuple[bytes, bytes]] = []
    counts: list[int] = []
    for event in events:
        mine = open_arrays[event["user_id"]]
        mine.append(event)
        if len(mine) == size:
            records.append((event["user_id"].encode(), orjson.dumps(mine)))
            counts.append(size)
            open_arrays[event["user_id"]] = []
    for user, mine in open_arrays.items():
        if mine:
            records.append((user.encode(), orjson.dumps(mine)))
            counts.append(len(mine))
    return RecordSet(records, counts)


# -- the independent count (pure) -----------------------------------------------------------


@dataclass
class Expected:
    """What the tables must hold, counted from the produced events and the KPI config."""

    numbers: dict[str, dict[str, float]]  # user -> kpi -> number (count and sum KPIs)
    distinct: dict[str, dict[str, set[Any]]]  # user -> kpi -> values (distinct KPIs)
    team_numbers: dict[str, dict[str, float]]
    events: Counter[str]  # user -> events


def expected_state(events: Sequence[dict[str, Any]], config: PulseConfig) -> Expected:
    """Fold the events by the KPI definitions, written out without the pipeline's code."""
    numbers: dict[str, dict[str, float]] = defaultdict(dict)
    distinct: dict[str, dict[str, set[Any]]] = defaultdict(dict)
    team_numbers: dict[str, dict[str, float]] = defaultdict(dict)
    per_user: Counter[str] = Counter()
    kpis = [(name, kpi) for name, kpi in config.kpis.items() if kpi.ratio is None]
    for event in events:
        user, team = event["user_id"], event.get("team_id")
        per_user[user] += 1
        action = event.get("action", "created")
        for name, kpi in kpis:
            types = kpi.source_types
            if (types is not None and event["type"] not in types) or action not in kpi.actions:
                continue
            if kpi.distinct is not None:
                if event.get(kpi.distinct) is not None:
                    distinct[user].setdefault(name, set()).add(event[kpi.distinct])
                continue
            amount = 1 if kpi.count is not None else event.get(kpi.sum or "")
            if not isinstance(amount, (int, float)) or isinstance(amount, bool):
                continue
            numbers[user][name] = numbers[user].get(name, 0) + amount
            if team:
                team_numbers[team][name] = team_numbers[team].get(name, 0) + amount
    return Expected(dict(numbers), dict(distinct), dict(team_numbers), per_user)


def _nonzero(numbers: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in numbers.items() if v}


def check_state(expected: Expected, state: dict[str, dict[str, Any]], day_key: str,
                users: Sequence[str]) -> list[str]:
    """Differences between the changelog state and ``expected`` (empty: exact).

    Compares every user's day bucket (all count/sum KPIs and distinct sets), every user's
    number of remembered event ids (the dedup memory: each event taken exactly once), and
    each team's day figures summed over its per-partition buckets.
    """
    problems: list[str] = []
    remembered: Counter[str] = Counter()
    teams: dict[str, dict[str, float]] = defaultdict(dict)
    for key, value in state.items():
        kind, period, *rest = key.split("|")
        if kind == "s":
            remembered[rest[-1]] += len(value.get("ids", {}))
        elif kind == "t" and period.startswith("d:"):
            totals = teams[rest[-1]]
            for name, number in value["n"].items():
                totals[name] = totals.get(name, 0) + number
    for user in users:
        bucket = state.get(f"u|{day_key}|{user}", {"n": {}, "s": {}})
        got, want = _nonzero(bucket["n"]), _nonzero(expected.numbers.get(user, {}))
        if got != want:
            problems.append(f"{user} {day_key}: KPIs {got} != expected {want}")
        got_sets = {k: set(v) for k, v in bucket["s"].items() if v}
        if got_sets != expected.distinct.get(user, {}):
            problems.append(f"{user} {day_key}: distinct {got_sets} != expected "
                            f"{expected.distinct.get(user, {})}")
        if remembered[user] != expected.events[user]:
            problems.append(f"{user}: {remembered[user]} event ids remembered, "
                            f"{expected.events[user]} produced")
    for team in sorted(set(teams) | set(expected.team_numbers)):
        got, want = _nonzero(teams.get(team, {})), _nonzero(expected.team_numbers.get(team, {}))
        if got != want:
            problems.append(f"{team} day: KPIs {got} != expected {want}")
    return problems


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1) of a non-empty sequence."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# -- broker and process access --------------------------------------------------------------


def log_end_offsets(bootstrap: list[str], topic: str) -> dict[int, int]:
    """Log-end offsets from a Fetch's high watermark.

    Not ListOffsets: tansu answers that with the last batch's base offset + 1.
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p)
                      for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = {tp.partition: 0 for tp in partitions}
        listed = consumer.end_offsets(partitions)
        wanted = [tp for tp in partitions if listed[tp]]
        consumer.assign(wanted)
        for tp in wanted:
            consumer.seek(tp, listed[tp] - 1)
        deadline = time.monotonic() + 15
        while wanted and time.monotonic() < deadline:
            consumer.poll(timeout_ms=200, max_records=1)
            for tp in list(wanted):
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    ends[tp.partition] = highwater
                    wanted.remove(tp)
        if wanted:
            raise TimeoutError(f"no Fetch answer for {wanted}; is the broker up?")
        return ends
    finally:
        consumer.close()


def committed_offsets(admin: KafkaAdminClient, group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets on ``topic`` (none yet: 0)."""
    offsets = admin.list_group_offsets(group).get(group, {})
    return {tp.partition: max(0, meta.offset) for tp, meta in offsets.items()
            if tp.topic == topic}


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


async def produce(bootstrap: list[str], topic: str, records: Sequence[tuple[bytes, bytes]],
                  partitions: int, label: str) -> float:
    """Write ``records`` keyed by user, in full batches per partition; returns seconds.

    Batches are built directly (``create_batch``/``send_batch``, no future per record);
    one batch per partition is in flight, so each partition keeps the order of ``records``.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                max_batch_size=512 * 1024, client_id="crm-pulse-bench")
    await producer.start()
    started = last = time.perf_counter()
    try:
        builders: dict[int, Any] = {}
        pending = []
        for done, (key, value) in enumerate(records, 1):
            partition = partition_of(key, partitions)
            builder = builders.get(partition) or producer.create_batch()
            if builder.append(key=key, value=value, timestamp=None) is None:
                pending.append(await producer.send_batch(builder, topic, partition=partition))
                builder = producer.create_batch()
                if builder.append(key=key, value=value, timestamp=None) is None:
                    raise ValueError(f"a record of {len(value)} bytes exceeds the batch size")
            builders[partition] = builder
            if done % 2000 == 0 and time.perf_counter() - last >= PROGRESS_EVERY_S:
                last = time.perf_counter()
                say(f"  {done:,}/{len(records):,} {label} records ... "
                    f"{done / (last - started):,.0f}/s")
        for partition, builder in builders.items():
            if builder.record_count():
                pending.append(await producer.send_batch(builder, topic, partition=partition))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


@dataclass
class Ceiling:
    events_per_s: float
    seconds: float
    counts: dict[str, int]


async def ceiling(bootstrap: list[str], topic: str, group: str, events: int) -> Ceiling:
    """Raw aiokafka consume + orjson decode + per-user dict count of ``events`` events.

    Own consumer group, from the earliest offset; timed from partition assignment (so
    before the first fetch) to the last event counted.
    """
    marks: dict[str, float] = {}

    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked: Any) -> None:
            pass

        def on_partitions_assigned(self, assigned: Any) -> None:
            marks.setdefault("assigned", time.perf_counter())

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                client_id="crm-pulse-bench-ceiling", enable_auto_commit=False,
                                auto_offset_reset="earliest", **BIG_FETCH)
    consumer.subscribe([topic], listener=Listener())
    await consumer.start()
    loads = orjson.loads
    counts: dict[str, int] = {}
    seen = 0
    deadline = time.monotonic() + 60 + events / 2_000
    try:
        while seen < events:
            if time.monotonic() > deadline:
                raise TimeoutError(f"ceiling consumer read {seen:,}/{events:,} events")
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                for message in messages:
                    payload = loads(message.value)
                    for event in payload if isinstance(payload, list) else (payload,):
                        user = event["user_id"]
                        counts[user] = counts.get(user, 0) + 1
                        seen += 1
        end = time.perf_counter()
    finally:
        await consumer.stop()
    seconds = end - marks["assigned"]
    return Ceiling(events / seconds, seconds, counts)


async def read_latest(bootstrap: list[str], topic: str,
                      ends: dict[int, int]) -> tuple[dict[bytes, bytes], int]:
    """``(last value per key, records read)`` of ``topic`` up to ``ends``; tombstones delete."""
    latest: dict[bytes, bytes] = {}
    partitions = {AioPartition(topic, p): end for p, end in ends.items() if end}
    if not partitions:
        return latest, 0
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                **BIG_FETCH)
    await consumer.start()
    read = 0
    try:
        consumer.assign(list(partitions))
        await consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + 120
        while partitions:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end")
            for tp, messages in (await consumer.getmany(*partitions, timeout_ms=500)).items():
                for message in messages:
                    if message.offset >= partitions[tp]:
                        break
                    read += 1
                    if message.value is None:
                        latest.pop(message.key, None)
                    else:
                        latest[message.key] = message.value
            for tp, end in list(partitions.items()):
                if await consumer.position(tp) >= end:
                    del partitions[tp]
    finally:
        await consumer.stop()
    return latest, read


# -- one worker over one topic ----------------------------------------------------------------


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


# -- latency ----------------------------------------------------------------------------------


@dataclass
class Latency:
    p50_ms: float
    p99_ms: float
    probes: int
    lost: int
    sent: int
    seconds: float
    polls: int
    worker_cpu_percent: float = 0.0
    changelog_per_event: float = 0.0


def probe_users(run: str, partitions: int) -> list[str]:
    """One probe user per partition, so that every partition is sampled."""
    found: dict[int, str] = {}
    index = 0
    while len(found) < partitions:
        name = f"bench-probe-{run}-{index}"
        found.setdefault(partition_of(name.encode(), partitions), name)
        index += 1
    return [found[p] for p in range(partitions)]


async def measure_latency(settings: Settings, options: BenchOptions, people: Sequence[Profile],
                          tz: ZoneInfo, run: str) -> Latency:
    """Produce at ``options.rate`` for ``options.latency_seconds``; time probe visibility.

    Every :data:`PROBE_EVERY`-th event is a call of a probe user, the others simulator
    events of the bench users. A poller asks the worker (``GET /api/kpis/users/{probe}``)
    about the probe users with calls outstanding, one round every :data:`POLL_INTERVAL_S`;
    a probe's latency runs from handing it to the producer to receiving the first response
    that counts it (so it may be late by up to one polling round).
    """
    import aiohttp

    rng = random.Random(options.seed + 1)
    weights = [hourly_rate(p) for p in people]
    probes = probe_users(run, options.partitions)
    outstanding: dict[str, deque[tuple[int, float, str]]] = {u: deque() for u in probes}
    latencies: list[float] = []
    polls = 0
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers(settings.kafka), acks="all",
                                linger_ms=0, client_id="crm-pulse-bench-latency")
    await producer.start()
    session = aiohttp.ClientSession()
    finished = asyncio.Event()

    async def poll(user: str) -> None:
        nonlocal polls
        queue = outstanding[user]
        url = (f"{settings.web_url}/api/kpis/users/{user}?period=day"
               f"&at={quote(queue[0][2])}")  # the probe's own day, also across midnight
        try:
            async with session.get(url) as response:
                body = await response.read()
                seen = time.perf_counter()
        except (aiohttp.ClientError, OSError):
            return
        polls += 1
        calls = orjson.loads(body)["kpis"]["calls"]["value"] if response.status == 200 else 0
        while queue and queue[0][0] <= calls:
            latencies.append(seen - queue.popleft()[1])

    async def poller() -> None:
        while not finished.is_set() or any(outstanding.values()):
            busy = [u for u, queue in outstanding.items() if queue]
            if busy:
                await asyncio.gather(*(poll(u) for u in busy))
            await asyncio.sleep(POLL_INTERVAL_S)

    sent, calls_sent, pending = 0, Counter[str](), []
    polling = asyncio.create_task(poller())
    started = time.perf_counter()
    try:
        total = int(options.rate * options.latency_seconds)
        while sent < total:
            due = min(total, int((time.perf_counter() - started) * options.rate) + 1)
            while sent < due:
                now = datetime.now(tz)
                if sent % PROBE_EVERY == 0:
                    user = probes[(sent // PROBE_EVERY) % len(probes)]
                    stamp = now.isoformat(timespec="milliseconds")
                    event = {"event_id": f"lat-{run}-{sent}", "occurred_at": stamp,
                             "user_id": user, "team_id": "bench-probes", "type": "call"}
                    calls_sent[user] += 1
                    outstanding[user].append((calls_sent[user], time.perf_counter(), stamp))
                else:
                    person = rng.choices(people, weights=weights)[0]
                    event = generate_event(rng, person, now, sent, run=f"lat-{run}")
                pending.append(await producer.send(
                    settings.topics.activities, orjson.dumps(event), key=event["user_id"].encode()))
                sent += 1
            await asyncio.sleep(max(0.0, started + sent / options.rate - time.perf_counter()))
        seconds = time.perf_counter() - started
        await asyncio.gather(*pending)
        finished.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(polling), PROBE_TIMEOUT_S)
    finally:
        finished.set()
        polling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await polling
        await session.close()
        await producer.stop()
    lost = sum(len(queue) for queue in outstanding.values())
    samples = latencies + [PROBE_TIMEOUT_S] * lost
    if not samples:
        return Latency(math.nan, math.nan, 0, 0, sent, seconds, polls)
    return Latency(percentile(samples, 0.5) * 1000, percentile(samples, 0.99) * 1000,
                   len(samples), lost, sent, seconds, polls)


# -- the whole run ----------------------------------------------------------------------------


class _Children:
    """Processes this run started (stopped newest first, by PID) and the signals that stop it.

    SIGTERM acts like Ctrl-C; both are held back while a child is being started, so that
    every child is recorded, and ignored while the children are being stopped.
    """

    def __init__(self) -> None:
        self.processes: list[ManagedProcess] = []
        self._previous: dict[int, Any] = {}
        self._holding = False
        self._held: int | None = None

    def __enter__(self) -> _Children:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig in self._previous:
            signal.signal(sig, signal.SIG_IGN)
        try:
            self.stop_all()
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._holding:
            self._held = signum
            return
        raise KeyboardInterrupt(signal.Signals(signum).name)

    @contextlib.contextmanager
    def _held_signals(self) -> Iterator[None]:
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
        if self._held is not None:
            raise KeyboardInterrupt(signal.Signals(self._held).name)

    def start(self, make: Callable[[], ManagedProcess]) -> ManagedProcess:
        with self._held_signals():
            process = make()
            self.processes.append(process)
        return process

    def stop(self, process: ManagedProcess) -> None:
        process.stop(timeout=15)
        self.processes.remove(process)

    def stop_all(self) -> None:
        if self.processes:
            say("stopping " + ", ".join(f"{p.name} (pid {p.pid})"
                                        for p in reversed(self.processes)))
        for process in reversed(self.processes):
            try:
                process.stop(timeout=15)
            except Exception:
                logger.exception("could not stop %s (pid %s)", process.name, process.pid)
        self.processes.clear()


@dataclass
class _Topic:
    """One bench topic set, produced and ready for a worker."""

    label: str
    name: str
    settings: Settings
    cum: dict[int, list[int]]
    ends: dict[int, int]


def _prepare(label: str, name: str, base: Settings, records: RecordSet, options: BenchOptions,
             workdir: Path) -> _Topic:
    """Create a fresh topic set (own prefix, app id, port, data dir); produce ``records``."""
    settings = settings_with(base, topic_prefix=f"{base.topic_prefix}{name}.",
                             app_id=f"{base.app_id}-{name}", web_port=free_port(),
                             data_dir=workdir / name)
    bootstrap = bootstrap_servers(settings.kafka)
    ensure_topics(settings)
    say(f"producing {options.events:,} events as {len(records.records):,} {label} records ...")
    seconds = asyncio.run(produce(bootstrap, settings.topics.activities, records.records,
                                  options.partitions, label))
    say(f"  produced in {seconds:.1f}s ({options.events / seconds:,.0f} events/s)")
    ends = log_end_offsets(bootstrap, settings.topics.activities)
    cum = records.cumulative(options.partitions)
    if any(ends[p] != len(cum[p]) - 1 for p in ends):
        raise RuntimeError(f"{settings.topics.activities}: end offsets {ends} do not match the "
                           f"records written {[len(cum[p]) - 1 for p in sorted(cum)]}")
    return _Topic(label, name, settings, cum, ends)


def _run_worker(topic: _Topic, options: BenchOptions, workdir: Path, children: _Children,
                expected: Expected, people: Sequence[Profile],
                day_key: str) -> tuple[WorkerRun, ManagedProcess]:
    """Start a worker over a produced topic, time it to the last commit, check its state."""
    log = workdir / f"{topic.name}-worker.log"
    say(f"starting a worker over the {topic.label} records (log: {log}) ...")
    worker = children.start(lambda: start_worker(topic.settings, log))
    run = wait_all_committed(topic.settings, worker, topic.cum, topic.ends, options.events,
                             topic.label)
    say(f"  {topic.label}: {run.events_per_s:,.0f} events/s over {run.interval_s:.1f}s "
        f"(first commit after {run.first_commit_s:.1f}s, all after {run.total_s:.1f}s)")
    say(f"checking the {topic.label} worker's KPI changelog against an independent count ...")
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
    return run, worker


def _latency_phase(topic: _Topic, worker: ManagedProcess, options: BenchOptions,
                   people: Sequence[Profile], tz: ZoneInfo, run: str) -> Latency:
    settings = topic.settings
    wait_ready(settings, 60, process=worker)
    say(f"latency: {options.rate:,.0f} events/s for {options.latency_seconds:g}s, "
        f"every {PROBE_EVERY}th event a probe call ...")
    changelog = f"{settings.app_id}-kpi-changelog"
    bootstrap = bootstrap_servers(settings.kafka)
    written = sum(log_end_offsets(bootstrap, changelog).values())
    cpu, started = cpu_seconds(worker.pid), time.perf_counter()
    latency = asyncio.run(measure_latency(settings, options, people, tz, run))
    latency.worker_cpu_percent = (
        100 * (cpu_seconds(worker.pid) - cpu) / (time.perf_counter() - started))
    written = sum(log_end_offsets(bootstrap, changelog).values()) - written
    latency.changelog_per_event = written / max(1, latency.sent)
    say(f"  latency: p50 {latency.p50_ms:,.1f} ms, p99 {latency.p99_ms:,.1f} ms "
        f"({latency.probes} probes, {latency.lost} never visible)")
    return latency


def _measure(options: BenchOptions, settings: Settings, workdir: Path, kafka: str,
             children: _Children) -> dict[str, Any]:
    """Everything after the broker is up; returns the report."""
    config = settings.pulse
    tz = ZoneInfo(config.timezone)
    run = uuid4().hex[:8]
    base = settings_with(settings, kafka=kafka, partitions=options.partitions,
                         topic_prefix=f"bench-{run}-", app_id=f"crm-pulse-bench-{run}",
                         session_timeout_s=6)
    now = datetime.now(tz)
    say(f"generating {options.events:,} events of today ({config.timezone}) for "
        f"{options.users:,} users in {min(options.teams, options.users)} teams ...")
    people = office(options.users, options.teams, config.timezone)
    events = generate_events(random.Random(options.seed), options.events, people, now, run)
    expected = expected_state(events, config)
    day_key = f"d:{now.date().isoformat()}"
    single = _prepare("single-event", "single", base, single_records(events), options, workdir)
    batched = _prepare(f"{options.array_size}-event array", "batched", base,
                       array_records(events, options.array_size), options, workdir)
    del events

    say("ceiling: raw aiokafka consume + orjson decode + per-user count ...")
    top = asyncio.run(ceiling(bootstrap_servers(kafka), single.settings.topics.activities,
                              f"{base.app_id}-ceiling", options.events))
    if top.counts != dict(expected.events):
        raise RuntimeError("the ceiling consumer's per-user counts differ from what was produced")
    say(f"  ceiling: {top.events_per_s:,.0f} events/s over {top.seconds:.2f}s")

    runs: list[WorkerRun] = []
    latency: Latency | None = None
    for topic in (single, batched):
        result, worker = _run_worker(topic, options, workdir, children, expected, people,
                                     day_key)
        if topic is single and options.latency_seconds > 0:
            latency = _latency_phase(topic, worker, options, people, tz, run)
        result.rss_mb_peak = peak_rss_mb(worker.pid)
        children.stop(worker)
        runs.append(result)
    if options.kafka:
        _cleanup(base, ("single", "batched"))
    return _report(options, top, runs, latency)


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
            admin.delete_groups([f"{base.app_id}-{n}" for n in (*names, "ceiling")])
    finally:
        admin.close()


def run_bench(settings: Settings, options: BenchOptions) -> int:
    """Run the benchmark and print the result; 0 when the counts are correct, else 1."""
    for noisy in ("kafka", "aiokafka", "app.kafka"):  # client chatter; failures still raise
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    settings.pulse  # noqa: B018  (a bad KPI model fails here, before any process starts)
    workdir = Path(tempfile.mkdtemp(prefix="crm-pulse-bench-"))
    report: dict[str, Any] | None = None
    try:
        with _Children() as children:
            kafka = options.kafka
            if not kafka:
                say("starting the embedded broker (tansu, in memory) ...")
                brokers: list[EmbeddedBroker] = []

                def start() -> ManagedProcess:
                    brokers.append(start_broker(workdir))
                    return brokers[0].process

                children.start(start)
                kafka = brokers[0].url
            report = _measure(options, settings, workdir, kafka, children)
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


# -- the report -------------------------------------------------------------------------------


def _round(value: float | None, digits: int = 0) -> float | int | None:
    if value is None or math.isnan(value):
        return None
    return round(value) if digits == 0 else round(value, digits)


def _report(options: BenchOptions, top: Ceiling, runs: list[WorkerRun],
            latency: Latency | None) -> dict[str, Any]:
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
