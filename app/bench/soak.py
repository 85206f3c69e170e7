"""``python -m app.bench.soak --minutes 30 --rate 2000``: steady load for a long time.

Starts an embedded broker (tansu, in memory) and redis-server unless ``--kafka`` names a
broker, writes a roster (the bench office), starts one ``crm-pulse worker`` and produces
simulator events (:func:`app.simulator.generate_event`, single-event records keyed by
user, as webhooks write them) at ``--rate`` per second for ``--minutes``. Every
``--sample-s`` seconds it records the worker's resident memory (``VmRSS`` of
``/proc/<pid>/status``), its CPU share, the records produced and committed, and the
consumer lag (log end from a Fetch high watermark minus the group's committed offsets),
and prints one progress line. Then it stops producing, waits for the worker to drain,
prints a table of the samples, and checks exactness: the worker's KPI changelog against
an independent count of every produced event (each user's day buckets, distinct sets and
remembered event ids, and each team's day figures).

Progress goes to stderr, the table to stdout. Exit code 0 when the counts are exact, 1
when not, 130 on Ctrl-C. Every process it starts is stopped by PID. Not run in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import orjson
from aiokafka import AIOKafkaProducer
from kafka.admin import KafkaAdminClient

from app.bench.broker import committed_offsets, read_latest
from app.bench.children import Children
from app.bench.events import Expected, expected_state, office
from app.bench.options import say
from app.bench.usage import cpu_seconds
from app.config import PulseConfig
from app.embedded import (
    EmbeddedBroker,
    EmbeddedRedis,
    ManagedProcess,
    free_port,
    settings_with,
    start_broker,
    start_redis,
    start_worker,
    wait_ready,
)
from app.kafka import bootstrap_servers, ensure_topics, log_end_offsets
from app.roster import Profile, write_profiles
from app.settings import Settings
from app.simulator import generate_event, hourly_rate

TICK_S = 0.05  # the producer's pacing step


@dataclass(frozen=True)
class SoakOptions:
    minutes: float = 30.0
    rate: float = 2_000.0
    users: int = 1_000
    teams: int = 50
    partitions: int = 4
    sample_s: float = 10.0
    seed: int = 8
    kafka: str | None = None


@dataclass
class Sample:
    at_s: float
    produced: int
    committed: int
    lag: int
    rss_mb: float | None
    cpu_percent: float


@dataclass
class Count:
    """The independent count: per local day (``d:YYYY-MM-DD``), folded chunk by chunk."""

    config: PulseConfig
    days: dict[str, Expected] = field(default_factory=dict)
    events: Counter[str] = field(default_factory=Counter)  # per user, every day

    def add(self, events: Sequence[dict[str, Any]]) -> None:
        by_day: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for event in events:  # occurred_at is local (the person's timezone): its date is the day
            by_day["d:" + event["occurred_at"][:10]].append(event)
            self.events[event["user_id"]] += 1
        for day, chunk in by_day.items():
            more = expected_state(chunk, self.config)
            into = self.days.setdefault(day, Expected({}, {}, {}, Counter()))
            for user, numbers in more.numbers.items():
                mine = into.numbers.setdefault(user, {})
                for kpi, value in numbers.items():
                    mine[kpi] = mine.get(kpi, 0) + value
            for user, sets in more.distinct.items():
                mine_sets = into.distinct.setdefault(user, {})
                for kpi, values in sets.items():
                    mine_sets.setdefault(kpi, set()).update(values)
            for team, numbers in more.team_numbers.items():
                mine = into.team_numbers.setdefault(team, {})
                for kpi, value in numbers.items():
                    mine[kpi] = mine.get(kpi, 0) + value
            into.events.update(more.events)


@dataclass
class Verdict:
    problems: list[str]
    remembered: int  # distinct events the worker took (dedup memory)
    kpi_excess: float  # sum over user, day and count/sum KPI of (counted - expected) > 0
    kpi_shortfall: float  # ... of (expected - counted) > 0


def check(count: Count, state: dict[str, dict[str, Any]]) -> Verdict:
    """The changelog state against the independent count."""
    problems: list[str] = []
    remembered: Counter[str] = Counter()
    teams: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for key, value in state.items():
        kind, period, *rest = key.split("|")
        if kind == "s":
            remembered[rest[-1]] += len(value.get("ids", {}))
        elif kind == "t" and period.startswith("d:"):
            totals = teams[period, rest[-1]]
            for kpi, number in value["n"].items():
                totals[kpi] = totals.get(kpi, 0) + number
    excess = shortfall = 0.0
    for day, expected in sorted(count.days.items()):
        users = set(expected.numbers) | set(expected.distinct) | set(expected.events)
        users |= {key.rsplit("|", 1)[1] for key in state if key.startswith(f"u|{day}|")}
        for user in sorted(users):
            bucket = state.get(f"u|{day}|{user}", {"n": {}, "s": {}})
            got, want = bucket["n"], expected.numbers.get(user, {})
            for kpi in set(got) | set(want):
                diff = got.get(kpi, 0) - want.get(kpi, 0)
                if diff:
                    excess += max(0.0, diff)
                    shortfall += max(0.0, -diff)
                    problems.append(f"{user} {day} {kpi}: {got.get(kpi, 0)} counted, "
                                    f"{want.get(kpi, 0)} expected")
            got_sets = {k: set(v) for k, v in bucket["s"].items() if v}
            if got_sets != expected.distinct.get(user, {}):
                problems.append(f"{user} {day}: distinct {got_sets} != "
                                f"{expected.distinct.get(user, {})}")
        for team in set(expected.team_numbers) | {t for d, t in teams if d == day}:
            got = {k: v for k, v in teams.get((day, team), {}).items() if v}
            want = {k: v for k, v in expected.team_numbers.get(team, {}).items() if v}
            if got != want:
                problems.append(f"{team} {day}: team KPIs {got} != {want}")
    for user in sorted(set(remembered) | set(count.events)):
        if remembered[user] != count.events[user]:
            problems.append(f"{user}: {remembered[user]} event ids remembered, "
                            f"{count.events[user]} produced")
    return Verdict(problems, sum(remembered.values()), excess, shortfall)


def vm_rss_mb(pid: int) -> float | None:
    """Resident memory (``VmRSS``) of a live process in MiB; None where unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Probe:
    """Committed offsets and log ends of the worker group (blocking calls)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bootstrap = bootstrap_servers(settings.kafka)
        self.admin = KafkaAdminClient(bootstrap_servers=self.bootstrap,
                                      client_id="crm-pulse-soak-admin")

    def progress(self) -> tuple[int, int]:
        """(records committed by the group, records in crm.activities)."""
        topic = self.settings.topics.activities
        ends = log_end_offsets(self.bootstrap, topic)
        done = committed_offsets(self.admin, self.settings.app_id, topic)
        return sum(min(done.get(p, 0), end) for p, end in ends.items()), sum(ends.values())

    def close(self) -> None:
        self.admin.close()


async def produce_steadily(settings: Settings, options: SoakOptions, people: list[Profile],
                           count: Count, worker: ManagedProcess, probe: Probe,
                           samples: list[Sample]) -> int:
    """Produce at ``options.rate`` for ``options.minutes``; sample every ``sample_s``."""
    rng = random.Random(options.seed)
    cumulative, total_weight = [], 0.0
    for person in people:
        total_weight += hourly_rate(person)
        cumulative.append(total_weight)
    run = uuid4().hex[:8]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers(settings.kafka),
                                acks="all", linger_ms=5, client_id="crm-pulse-soak")
    await producer.start()
    topic = settings.topics.activities
    total = int(options.rate * options.minutes * 60)
    sent, pending = 0, []
    started = time.perf_counter()
    next_sample = options.sample_s
    cpu_mark = (started, cpu_seconds(worker.pid))
    try:
        while sent < total:
            if not worker.alive():
                raise RuntimeError(f"the worker exited ({worker.returncode}); last lines of "
                                   f"{worker.log_path}:\n{worker.tail()}")
            elapsed = time.perf_counter() - started
            due = min(total, int(elapsed * options.rate) + 1)
            chunk = []
            now = datetime.now(UTC)
            for person in rng.choices(people, cum_weights=cumulative, k=max(0, due - sent)):
                event = generate_event(rng, person, now, sent, run=f"soak-{run}")
                chunk.append(event)
                pending.append(await producer.send(topic, orjson.dumps(event),
                                                   key=person.user_id.encode()))
                sent += 1
            count.add(chunk)
            if len(pending) > 20_000:
                await asyncio.gather(*pending)
                pending.clear()
            if elapsed >= next_sample:
                await asyncio.gather(*pending)
                pending.clear()
                committed, _ = await asyncio.to_thread(probe.progress)
                now_s = time.perf_counter()
                cpu = cpu_seconds(worker.pid)
                share = 100 * (cpu - cpu_mark[1]) / max(1e-9, now_s - cpu_mark[0])
                cpu_mark = (now_s, cpu)
                sample = Sample(elapsed, sent, committed, sent - committed,
                                vm_rss_mb(worker.pid), share)
                samples.append(sample)
                say(f"[{elapsed:6.0f}s] produced {sent:,} ({sent / elapsed:,.0f}/s), committed "
                    f"{committed:,}, lag {sample.lag:,}, worker RSS "
                    f"{_mb(sample.rss_mb)}, CPU {share:.0f}%")
                next_sample += options.sample_s
            await asyncio.sleep(max(0.0, started + sent / options.rate - time.perf_counter(),
                                    TICK_S if sent >= due else 0.0))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} MB"


def drain(probe: Probe, worker: ManagedProcess, produced: int, samples: list[Sample],
          started: float) -> float:
    """Wait until the group committed everything; returns the seconds it took."""
    began = time.perf_counter()
    backlog = produced - probe.progress()[0]
    deadline = began + 120 + backlog / 500
    last = began
    while True:
        committed, end = probe.progress()
        if committed >= end:
            elapsed = time.perf_counter() - started
            samples.append(Sample(elapsed, produced, committed, 0, vm_rss_mb(worker.pid), 0.0))
            return time.perf_counter() - began
        if not worker.alive():
            raise RuntimeError(f"the worker exited ({worker.returncode}) while draining")
        if time.perf_counter() > deadline:
            raise TimeoutError(f"the worker did not drain: {end - committed:,} records left")
        if time.perf_counter() - last >= 10:
            last = time.perf_counter()
            say(f"  draining: {end - committed:,} records left, worker RSS "
                f"{_mb(vm_rss_mb(worker.pid))}")
        time.sleep(0.5)


def table(options: SoakOptions, samples: list[Sample], produced: int, drain_s: float,
          verdict: Verdict, changelog_records: int) -> str:
    """The final report: the samples (at most ~40 rows) and the summary."""
    lines = [f"soak: {options.rate:,.0f} events/s for {options.minutes:g} min, "
             f"{options.users:,} users, {options.partitions} partitions",
             "", f"{'t (s)':>8} {'produced':>12} {'committed':>12} {'lag':>10} "
             f"{'RSS MB':>8} {'CPU %':>6}"]
    step = max(1, len(samples) // 40)
    shown = samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else [])
    for s in shown:
        lines.append(f"{s.at_s:8.0f} {s.produced:12,} {s.committed:12,} {s.lag:10,} "
                     f"{_mb(s.rss_mb).removesuffix(' MB'):>8} {s.cpu_percent:6.0f}")
    rss = [s.rss_mb for s in samples if s.rss_mb is not None]
    lags = [s.lag for s in samples]
    exact = not verdict.problems
    warm = next((s for s in samples if s.at_s >= 60 and s.rss_mb is not None), None)
    growth = None  # from the first sample after a minute's warm-up to the last
    if warm is not None and rss and samples[-1].at_s > warm.at_s:
        growth = (rss[-1] - (warm.rss_mb or 0)) / ((samples[-1].at_s - warm.at_s) / 60)
    lines += [
        "",
        f"events produced           {produced:,}",
        f"events counted (distinct) {verdict.remembered:,}",
        f"lost                      {max(0, produced - verdict.remembered):,}",
        f"doubled                   {max(0, verdict.remembered - produced):,} "
        f"(KPI excess {verdict.kpi_excess:g}, KPI shortfall {verdict.kpi_shortfall:g})",
        f"counts exact              {'yes' if exact else 'NO'}",
        f"lag max / at end          {max(lags, default=0):,} / {lags[-1] if lags else 0:,}",
        f"drain after load          {drain_s:.1f}s",
        f"worker RSS first/last/max {_mb(rss[0] if rss else None)} / "
        f"{_mb(rss[-1] if rss else None)} / {_mb(max(rss) if rss else None)}",
        f"RSS growth after warm-up  "
        f"{'-' if growth is None else f'{growth:+,.1f} MB/min'}",
        f"changelog records read    {changelog_records:,}",
    ]
    for problem in verdict.problems[:10]:
        lines.append(f"MISMATCH {problem}")
    return "\n".join(lines)


def read_state(settings: Settings) -> tuple[dict[str, dict[str, Any]], int]:
    bootstrap = bootstrap_servers(settings.kafka)
    topic = f"{settings.app_id}-kpi-changelog"
    latest, read = asyncio.run(read_latest(bootstrap, topic, log_end_offsets(bootstrap, topic)))
    return {orjson.loads(k): orjson.loads(v) for k, v in latest.items()}, read


def soak(options: SoakOptions, base: Settings) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="crm-pulse-soak-"))
    report: str | None = None
    exact = False
    try:
        with Children() as children:
            kafka = options.kafka
            if not kafka:
                say("starting the embedded broker (tansu, in memory) and redis-server ...")
                brokers: list[EmbeddedBroker] = []
                redises: list[EmbeddedRedis] = []
                children.start(lambda: (brokers.append(start_broker(workdir / "broker")),
                                        brokers[-1].process)[1])
                children.start(lambda: (redises.append(start_redis(workdir / "redis")),
                                        redises[-1].process)[1])
                kafka = brokers[0].url
                base = settings_with(base, redis=redises[0].url)
            run = uuid4().hex[:8]
            settings = settings_with(base, kafka=kafka, partitions=options.partitions,
                                     topic_prefix=f"soak-{run}-", app_id=f"crm-pulse-soak-{run}",
                                     web_port=free_port(), data_dir=workdir / "worker",
                                     session_timeout_s=10)
            config = settings.pulse
            people = office(options.users, options.teams, config.timezone)
            ensure_topics(settings)
            write_profiles(settings, people)
            log = workdir / "worker.log"
            say(f"starting the worker (log: {log}) ...")
            worker = children.start(lambda: start_worker(settings, log))
            wait_ready(settings, 120, process=worker)
            say(f"producing {options.rate:,.0f} events/s for {options.minutes:g} min, a line "
                f"every {options.sample_s:g}s ...")
            count, samples = Count(config), []
            probe = Probe(settings)
            try:
                started = time.perf_counter()
                produced = asyncio.run(produce_steadily(settings, options, people, count,
                                                        worker, probe, samples))
                say(f"load done: {produced:,} events; waiting for the worker to drain ...")
                drain_s = drain(probe, worker, produced, samples, started)
            finally:
                probe.close()
            say("reading the KPI changelog and checking it against the independent count ...")
            state, records = read_state(settings)
            verdict = check(count, state)
            exact = not verdict.problems and verdict.remembered == produced
            report = table(options, samples, produced, drain_s, verdict, records)
    except KeyboardInterrupt as stop:
        say(f"interrupted ({stop or 'SIGINT'}); everything the soak started is stopped")
        return 130
    finally:
        if report is None or not exact:
            say(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report, flush=True)
    return 0 if exact else 1


def parse(argv: Sequence[str] | None) -> SoakOptions:
    parser = argparse.ArgumentParser(prog="python -m app.bench.soak", description=__doc__.split(
        "\n\n", 1)[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="how long to load")
    parser.add_argument("--rate", type=float, default=2_000.0, help="events per second")
    parser.add_argument("--users", type=int, default=1_000, help="distinct users")
    parser.add_argument("--teams", type=int, default=50, help="teams the users are spread over")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the topics")
    parser.add_argument("--sample-s", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--seed", type=int, default=8, help="random seed of the events")
    parser.add_argument("--kafka", help="use this broker (kafka://host:port) instead of the "
                        "embedded one; CRM_PULSE_REDIS is used for Redis then")
    args = parser.parse_args(argv)
    return SoakOptions(args.minutes, args.rate, args.users, args.teams, args.partitions,
                       args.sample_s, args.seed, args.kafka)


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    options = parse(argv)
    for noisy in ("kafka", "aiokafka", "app.kafka", "app.roster"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    settings = Settings()
    settings.pulse  # noqa: B018  (a bad KPI model fails here, before any process starts)
    return soak(options, settings)


if __name__ == "__main__":
    sys.exit(main())
