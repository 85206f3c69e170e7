"""Produce -> KPI visible in the HTTP API, at a steady rate, sampled with probe users."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import accumulate
from urllib.parse import quote
from zoneinfo import ZoneInfo

import orjson
from aiokafka import AIOKafkaProducer

from app.bench.events import partition_of
from app.bench.options import BenchOptions
from app.kafka import bootstrap_servers
from app.roster import Profile
from app.settings import Settings
from app.simulator import generate_event, hourly_rate

PROBE_EVERY = 50  # every 50th event of the latency phase is a probe call
POLL_INTERVAL_S = 0.02  # pause between two HTTP polling rounds of the latency probes
PROBE_TIMEOUT_S = 30.0  # a probe not visible by then counts as this long (and is reported)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1) of a non-empty sequence."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


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
                          tz: ZoneInfo, run: str, owner_url: Callable[[int], str]) -> Latency:
    """Produce at ``options.rate`` for ``options.latency_seconds``; time probe visibility.

    Every :data:`PROBE_EVERY`-th event is a call of a probe user, the others simulator
    events of the bench users. A poller asks the worker that owns the probe's partition
    (``owner_url(partition)``, ``GET /api/kpis/users/{probe}``) about the probe users with
    calls outstanding, one round every :data:`POLL_INTERVAL_S`;
    a probe's latency runs from handing it to the producer to receiving the first response
    that counts it (so it may be late by up to one polling round).
    """
    import aiohttp

    rng = random.Random(options.seed + 1)
    cumulative = list(accumulate(hourly_rate(p) for p in people))  # one sum, not one per event
    probes = probe_users(run, options.partitions)
    workers = {user: owner_url(partition) for partition, user in enumerate(probes)}
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
        url = (f"{workers[user]}/api/kpis/users/{user}?period=day"
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
                    person = rng.choices(people, cum_weights=cumulative)[0]
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
