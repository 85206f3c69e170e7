"""Where a replay starts and ends on each partition, found by fetching records.

Not ListOffsets/``offsets_for_times``: tansu answers ListOffsets wrongly (see
:func:`app.kafka.log_end_offsets`). The end is the Fetch high watermark; the start is a
binary search over offsets on the broker timestamps of fetched records (a few dozen
fetches per partition, however long the retained history). The search assumes that
timestamps ascend within a partition, as they do with ``LogAppendTime`` and with producers
that stamp the send time (every CRM Pulse producer but history backfills).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import NoError
from kafka.structs import OffsetAndMetadata

from app.kafka import log_end_offsets

PROBE_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Span:
    """One partition of the replay: ``[start, end)`` is replayed."""

    partition: int
    first: int  # first retained offset (log start); == end when the partition is empty
    first_timestamp: float | None  # broker timestamp (s) of the first retained record
    start: int  # first offset whose timestamp is at or after --from
    end: int  # high watermark when the replay began

    @property
    def skipped(self) -> int:
        """Retained records before --from."""
        return self.start - self.first

    @property
    def total(self) -> int:
        """Records to replay."""
        return self.end - self.start


def _record_at(consumer: KafkaConsumer, tp: TopicPartition,
               offset: int | None) -> tuple[int, float]:
    """``(offset, timestamp s)`` of the first record at or after ``offset`` (None: the first)."""
    if offset is None:
        consumer.seek_to_beginning(tp)
    else:
        consumer.seek(tp, offset)
    deadline = time.monotonic() + PROBE_TIMEOUT_S
    while time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500, max_records=1).values():
            return records[0].offset, records[0].timestamp / 1000
    raise TimeoutError(f"no record of {tp.topic}:{tp.partition} at offset {offset} within "
                       f"{PROBE_TIMEOUT_S:g}s; is the broker up?")


def _span(consumer: KafkaConsumer, tp: TopicPartition, end: int, since: float) -> Span:
    if end == 0:
        return Span(tp.partition, 0, None, 0, 0)
    first, first_timestamp = _record_at(consumer, tp, None)
    low, high = first, end  # answer in [low, high]; records in [low, ...) are unknown
    if first_timestamp >= since:
        high = first
    while low < high:
        offset, timestamp = _record_at(consumer, tp, (low + high) // 2)
        if timestamp >= since:
            high = (low + high) // 2  # offsets between the probe and ``offset`` do not exist
        else:
            low = offset + 1
    return Span(tp.partition, first, first_timestamp, low, end)


def replay_spans(bootstrap: Sequence[str], topic: str, since: datetime) -> list[Span]:
    """Every partition of ``topic``: its retained records, where ``since`` starts, its end."""
    ends = log_end_offsets(bootstrap, topic)
    consumer = KafkaConsumer(bootstrap_servers=list(bootstrap), enable_auto_commit=False,
                             fetch_max_wait_ms=100, max_partition_fetch_bytes=1)
    try:
        spans = []
        for partition, end in sorted(ends.items()):
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            spans.append(_span(consumer, tp, end, since.timestamp()))
        return spans
    finally:
        consumer.close()


def commit_offsets(bootstrap: Sequence[str], group: str,
                   offsets: dict[TopicPartition, int]) -> None:
    """Set ``group``'s committed offsets (the group must have no members)."""
    admin = KafkaAdminClient(bootstrap_servers=list(bootstrap), client_id="crm-pulse-replay")
    try:
        answer = admin.alter_group_offsets(group, {
            tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()})
    finally:
        admin.close()
    failed = {f"{tp.topic}:{tp.partition}": error.__name__ for tp, error in answer.items()
              if error is not NoError}
    if failed:
        raise RuntimeError(f"could not set the offsets of consumer group {group}: {failed}")
