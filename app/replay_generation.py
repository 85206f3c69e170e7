"""A new, empty state generation for a replay: its app id, its Redis database, its roster.

A generation is an app id (consumer group, table changelogs ``<app_id>-*-changelog``) plus
the Redis database its serving layer writes. A replay never writes into the current one:
its watermarks and remembered event ids would skip every replayed record, and its
leaderboards would mix old and rebuilt figures.
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from urllib.parse import urlsplit, urlunsplit

import orjson
import redis
from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from agents.ingest import partition_of
from app.bench.broker import read_latest
from app.kafka import COMPACTED, bootstrap_servers, log_end_offsets, make_producer
from app.roster import parse_profile
from app.serving import ServingLayer
from app.settings import Settings

_GENERATION = re.compile(r"-r\d{8}T\d{6}$")
REDIS_DATABASES = 16  # Redis's default number of databases (``databases`` in redis.conf)


class GenerationError(Exception):
    """The new generation cannot be set up; the message says what to do next."""


def next_app_id(app_id: str, now: datetime) -> str:
    """``crm-pulse`` -> ``crm-pulse-r20261207T131500``; a generation suffix is replaced."""
    return f"{_GENERATION.sub('', app_id)}-r{now:%Y%m%dT%H%M%S}"


def check_unused(settings: Settings) -> None:
    """Refuse an app id that already has committed offsets or table changelogs."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers(settings.kafka),
                             client_id="crm-pulse-replay")
    try:
        offsets = admin.list_group_offsets(settings.app_id).get(settings.app_id, {})
        changelogs = [t for t in admin.list_topics() if t.startswith(f"{settings.app_id}-")]
    finally:
        admin.close()
    if offsets or changelogs:
        raise GenerationError(
            f"app id {settings.app_id} is in use (committed offsets or topics "
            f"{', '.join(changelogs) or 'none'}); choose another --app-id")


def redacted(url: str) -> str:
    """``url`` without its user and password (for output)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def _with_database(url: str, database: int) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def _database(url: str) -> int:
    path = urlsplit(url).path.strip("/")
    return int(path) if path.isdigit() else 0


def _holds_keys(url: str, prefix: str = "") -> bool:
    """Whether the database at ``url`` holds keys (starting with ``prefix``)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10)
    try:
        if not prefix:
            return bool(client.dbsize())
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"
        return next(client.scan_iter(match=pattern, count=1000), None) is not None
    finally:
        client.close()


def serving_redis(settings: Settings, wanted: str | None) -> str:
    """The new generation's Redis: ``wanted`` if it holds no serving keys of these topics,
    else the first empty database on the current server other than the current one (its
    workers may write to it any time)."""
    prefix = ServingLayer(settings, lambda _user: None).prefix
    try:
        if wanted:
            if _holds_keys(wanted, prefix):
                raise GenerationError(
                    f"{redacted(wanted)} already holds serving keys ({prefix}*); pass an "
                    "empty Redis database with --redis")
            return wanted
        current = _database(settings.redis)
        for database in range(REDIS_DATABASES):
            url = _with_database(settings.redis, database)
            if database != current and not _holds_keys(url):
                return url
    except redis.ResponseError as exc:  # e.g. a database index the server does not have
        raise GenerationError(f"Redis refused the database: {exc}; pass --redis URL") from exc
    except (redis.RedisError, OSError) as exc:
        raise GenerationError(
            f"cannot reach Redis at {redacted(settings.redis)} ({exc}); start it, or set "
            "CRM_PULSE_REDIS / --redis") from exc
    raise GenerationError("no Redis database is empty; pass --redis URL of a database "
                          "without serving keys (or of another Redis)")


def seed_roster(current: Settings, new: Settings) -> dict[TopicPartition, int]:
    """Copy today's roster into the new generation's roster table changelog.

    The worker then recovers the whole roster before its agents start, instead of reading
    ``crm.roster`` side by side with the replayed activities (which would count events of
    people whose profile had not been read yet without their team and role). Returns the
    ``crm.roster`` offsets the copy covers, to commit for the new group.
    """
    bootstrap = bootstrap_servers(current.kafka)
    topic = current.topics.roster
    ends = log_end_offsets(bootstrap, topic)
    latest, _ = asyncio.run(read_latest(bootstrap, topic, ends))
    changelog = f"{new.app_id}-roster-changelog"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="crm-pulse-replay")
    try:
        admin.create_topics([NewTopic(changelog, new.partitions, new.replication,
                                      topic_configs=COMPACTED)])
    except TopicAlreadyExistsError as exc:
        raise GenerationError(f"{changelog} exists already; choose another --app-id") from exc
    finally:
        admin.close()
    producer = make_producer(new)
    try:
        futures = []
        for key, value in latest.items():
            profile = parse_profile(value)
            if profile is None:  # the worker skips invalid profiles too
                continue
            futures.append(producer.send(
                changelog, key=orjson.dumps(key.decode("utf-8", "replace")),
                value=orjson.dumps(profile.model_dump(exclude_none=True)),
                partition=partition_of(key, new.partitions)))
        producer.flush()
        for future in futures:
            future.get(timeout=30)
    finally:
        producer.close()
    return {TopicPartition(topic, p): end for p, end in ends.items()}

