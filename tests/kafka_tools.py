"""Test-side broker access: produce, read topics to their end, committed offsets, table state."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from factories import event
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from app.kafka import bootstrap_servers, log_end_offsets, make_producer, send_all
from app.settings import Settings


def produce(settings: Settings, records: list[tuple[bytes | None, bytes]],
            topic: str | None = None) -> None:
    producer = make_producer(settings)
    try:
        send_all(producer, topic or settings.topics.activities, records)
    finally:
        producer.close()


def produce_past_calls(settings: Settings, calls: dict[str, dict[int, int]], tz: ZoneInfo,
                       today: date) -> None:
    """``calls[user][days back]`` calls from 10:00 local on that day, each record stamped by
    the broker as of its own time (a minute later): on time, as a replay of the CRM is."""
    producer = make_producer(settings)
    try:
        for user, days in calls.items():
            for back, count in days.items():
                start = datetime.combine(today + timedelta(days=back), time(10), tz)
                for i in range(count):
                    moment = start + timedelta(minutes=i)
                    value = orjson.dumps(event(user, occurred_at=moment.isoformat()))
                    producer.send(settings.topics.activities, key=user.encode(), value=value,
                                  timestamp_ms=int((moment.timestamp() + 60) * 1000))
        producer.flush(30)
    finally:
        producer.close()


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """Log-end offsets of ``topic`` (:func:`app.kafka.log_end_offsets`: Fetch high watermark)."""
    return log_end_offsets(bootstrap_servers(settings.kafka), topic)


def read_topic(settings: Settings, topic: str) -> list[Any]:
    """Every record of ``topic`` now (key, value) in partition order, read up to its end."""
    ends = end_offsets(settings, topic)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers(settings.kafka),
                             enable_auto_commit=False, auto_offset_reset="earliest")
    records = []
    try:
        for partition, end in ends.items():
            if end == 0:
                continue
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            consumer.seek_to_beginning(tp)
            last = -1
            while consumer.position(tp) < end:
                for batch in consumer.poll(timeout_ms=1000).values():
                    records.extend(batch)
                    last = max([last, *(r.offset for r in batch)])
            if last != end - 1:  # a short read would look like lost state
                raise AssertionError(f"{topic}:{partition}: read up to offset {last}, "
                                     f"log end {end}")
    finally:
        consumer.close()
    return records


def committed(settings: Settings) -> dict[int, int]:
    """The worker group's committed offsets on crm.activities."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers(settings.kafka))
    try:
        offsets = admin.list_group_offsets(settings.app_id).get(settings.app_id, {})
    finally:
        admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items()
            if tp.topic == settings.topics.activities}


def all_committed(settings: Settings) -> bool:
    ends = end_offsets(settings, settings.topics.activities)
    done = committed(settings)
    return all(done.get(p, 0) >= end for p, end in ends.items() if end)


def changelog_state(settings: Settings) -> dict[str, dict[str, Any]]:
    """The KPI table as its changelog says: the last value of every key (tombstones drop)."""
    state: dict[str, dict[str, Any]] = {}
    for record in read_topic(settings, f"{settings.app_id}-kpi-changelog"):
        key = orjson.loads(record.key)
        if record.value is None:
            state.pop(key, None)
        else:
            state[key] = orjson.loads(record.value)
    return state


def table_state(settings: Settings) -> dict[str, dict[str, Any]]:
    """The KPI table as its changelog says (last value per key), without bookkeeping."""
    return {key: _content(key, value) for key, value in changelog_state(settings).items()
            if not key.startswith("s|")}


def _content(key: str, value: dict[str, Any]) -> dict[str, Any]:
    """A state value without bookkeeping (offset watermark, partition, list order)."""
    if key.startswith("f|"):
        return {rule: sorted(flags) for rule, flags in value["r"].items()}
    if key.startswith("e|"):  # statement lines: each applied event once
        return {"lines": sorted(value["lines"], key=lambda line: line["id"])}
    return {"n": value["n"], "s": {k: sorted(v) for k, v in value["s"].items()}}
