"""Broker plumbing shared by the CLI tools: addresses, topic creation, a batching producer."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Sequence

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from app.settings import Settings

logger = logging.getLogger(__name__)

COMPACTED = {"cleanup.policy": "compact"}


def bootstrap_servers(url: str) -> list[str]:
    """``kafka://h1:9092;h2:9092`` (faust style) -> ``['h1:9092', 'h2:9092']``."""
    servers = []
    for part in url.replace(",", ";").split(";"):
        part = part.strip()
        if part:
            servers.append(part.split("://", 1)[-1])
    return servers


def log_end_offsets(bootstrap: Sequence[str], topic: str) -> dict[int, int]:
    """Per partition of ``topic``, its log-end offset, from a Fetch's high watermark.

    Not ListOffsets: tansu answers that with the last batch's base offset + 1, which is
    short of the end whenever the last batch holds more than one record, and has answered 0
    for non-empty partitions. So every partition is fetched from its beginning and the
    Fetch answer's high watermark is taken. ``bootstrap`` as :func:`bootstrap_servers` gives it.
    """
    consumer = KafkaConsumer(bootstrap_servers=list(bootstrap), enable_auto_commit=False,
                             fetch_max_wait_ms=100, max_partition_fetch_bytes=1)
    try:
        partitions = [TopicPartition(topic, p)
                      for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = {tp.partition: 0 for tp in partitions}
        wanted = list(partitions)  # every one: tansu has called non-empty partitions empty
        consumer.assign(wanted)
        consumer.seek_to_beginning(*wanted)
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


def ensure_topics(settings: Settings) -> None:
    """Create the CRM Pulse topics that do not exist yet (the roster is compacted)."""
    topics = settings.topics
    wanted = [
        NewTopic(
            name,
            settings.partitions,
            settings.replication,
            topic_configs=COMPACTED if name == topics.roster else {},
        )
        for name in topics.all()
    ]
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap_servers(settings.kafka), client_id="crm-pulse-admin"
    )
    try:
        existing = set(admin.list_topics())
        missing = [t for t in wanted if t.name not in existing]
        for topic in missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process won the race
                admin.create_topics([topic])
        if missing:
            logger.info("created topics: %s", ", ".join(t.name for t in missing))
    finally:
        admin.close()
    _check_partitions(settings)


def _check_partitions(settings: Settings) -> None:
    """Refuse to run when crm.activities has another partition count than configured.

    Ingest recomputes each user's home partition from ``settings.partitions``; a mismatch
    would forward records forever between partitions.
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers(settings.kafka))
    try:
        found = consumer.partitions_for_topic(settings.topics.activities) or set()
    finally:
        consumer.close()
    if found and len(found) != settings.partitions:
        raise SystemExit(
            f"{settings.topics.activities} has {len(found)} partitions but "
            f"CRM_PULSE_PARTITIONS={settings.partitions}; set it to {len(found)}"
        )


def make_producer(settings: Settings, **overrides: object) -> KafkaProducer:
    """A producer for CLI tools: acks from all replicas, batched, keyed by user id."""
    options: dict[str, object] = {
        "bootstrap_servers": bootstrap_servers(settings.kafka),
        "acks": "all",
        "linger_ms": 5,
        "batch_size": 256 * 1024,
        "client_id": "crm-pulse-cli",
    }
    options.update(overrides)
    return KafkaProducer(**options)


def send_all(producer: KafkaProducer, topic: str, records: Iterable[tuple[bytes, bytes]]) -> int:
    """Send ``(key, value)`` records and wait until the broker acknowledged every one."""
    futures = [producer.send(topic, key=key, value=value) for key, value in records]
    producer.flush()
    for future in futures:
        future.get(timeout=30)
    return len(futures)
