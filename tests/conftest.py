"""Shared fixtures: one real broker and one real redis-server per session, settings per test.

Every :func:`make_settings` call gets its own topic prefix, app id (consumer group) and web
port, so tests never see each other's records on the shared broker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from app.embedded import (
    EmbeddedBroker,
    EmbeddedRedis,
    ManagedProcess,
    free_port,
    start_broker,
    start_redis,
    start_worker,
    wait_ready,
)
from app.kafka import ensure_topics
from app.settings import Settings

SettingsFactory = Callable[..., Settings]
WorkerFactory = Callable[..., ManagedProcess]


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A tansu broker (in memory) on a free loopback port, for the whole session."""
    server = start_broker(tmp_path_factory.mktemp("broker"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A redis-server without persistence on a free loopback port, for the whole session."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_settings(
    tmp_path: Path, broker: EmbeddedBroker, redis_server: EmbeddedRedis
) -> SettingsFactory:
    """``make_settings(**overrides)``: settings on the session broker/Redis, unique per call."""

    def factory(**overrides: Any) -> Settings:
        suffix = uuid4().hex[:8]
        values: dict[str, Any] = {
            "topic_prefix": f"t{suffix}.",
            "app_id": f"crm-pulse-test-{suffix}",
            "kafka": broker.url,
            "redis": redis_server.url,
            "web_port": free_port(),
            "data_dir": tmp_path / f"data-{suffix}",
            "partitions": 4,
        }
        values.update(overrides)
        return Settings(**values)

    return factory


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[WorkerFactory]:
    """``worker_factory(settings, timeout=90)``: create topics, start a worker, wait for /readyz.

    Returns the :class:`ManagedProcess`, so a test can ``.kill()`` it and start another. Two
    workers in one group need the same ``app_id``/``topic_prefix`` but their own ``web_port``
    and ``data_dir`` (``app.embedded.settings_with``). All are stopped at teardown, by PID.
    """
    started: list[ManagedProcess] = []

    def start(settings: Settings, timeout: float = 90) -> ManagedProcess:
        ensure_topics(settings)
        log = tmp_path / f"worker-{len(started)}-{settings.web_port}.log"
        process = start_worker(settings, log)
        started.append(process)
        wait_ready(settings, timeout, process=process)
        return process

    yield start
    for process in started:
        try:
            process.stop()
        except Exception as exc:  # keep stopping the others
            print(f"could not stop {process!r}: {exc}")
