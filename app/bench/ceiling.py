"""The ceiling: raw aiokafka consume + orjson decode + per-user count, no pipeline."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.abc import ConsumerRebalanceListener

from app.bench.broker import BIG_FETCH


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
