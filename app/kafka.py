"""Broker plumbing shared by the CLI tools: addresses, topic creation, a batching producer."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable

from kafka import KafkaConsumer, KafkaProducer
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
