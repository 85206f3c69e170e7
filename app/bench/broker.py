"""The bench's broker access: producing records, committed offsets, reading a changelog.

Log-end offsets come from :func:`app.kafka.log_end_offsets` (shared with the tests).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import TopicPartition as AioPartition
from kafka.admin import KafkaAdminClient

from agents.ingest import partition_of
from app.bench.options import PROGRESS_EVERY_S, say

BIG_FETCH = {"fetch_max_bytes": 64 * 1024 * 1024, "max_partition_fetch_bytes": 8 * 1024 * 1024}


def committed_offsets(admin: KafkaAdminClient, group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets on ``topic`` (none yet: 0)."""
    offsets = admin.list_group_offsets(group).get(group, {})
    return {tp.partition: max(0, meta.offset) for tp, meta in offsets.items()
            if tp.topic == topic}


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
