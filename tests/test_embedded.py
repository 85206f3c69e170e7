"""The embedded broker, redis-server and process control used by dev and by every test."""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path
from uuid import uuid4

import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from app.embedded import (
    EmbeddedBroker,
    EmbeddedError,
    EmbeddedRedis,
    ManagedProcess,
    ProcessExited,
    free_port,
    port_free,
    settings_with,
    start_broker,
    wait_until,
)
from app.settings import Settings

pytestmark = pytest.mark.integration


def test_broker_answers_metadata_and_round_trips_a_record(broker: EmbeddedBroker) -> None:
    topic = f"t{uuid4().hex[:8]}.roundtrip"
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        admin.create_topics([NewTopic(topic, 2, 1)])
        assert topic in admin.list_topics()
    finally:
        admin.close()

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    try:
        producer.send(topic, key=b"u1", value=b"hello").get(timeout=10)
    finally:
        producer.close()

    # tansu answers a group's JoinGroup after about half the session timeout (23 s with
    # kafka-python's default 45 s), so group consumers on it should use a short one.
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        group_id=f"g{uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=2000,
        consumer_timeout_ms=20_000,
    )
    try:
        record = next(iter(consumer))
    finally:
        consumer.close()
    assert (record.key, record.value) == (b"u1", b"hello")


def test_redis_answers_ping_set_get(redis_server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.ping()
        key = f"test:{uuid4().hex}"
        client.set(key, "v")
        assert client.get(key) == b"v"
    finally:
        client.close()


def test_stop_terminates_a_process(tmp_path: Path) -> None:
    process = ManagedProcess("sleeper", ["sleep", "60"], tmp_path / "sleep.log")
    assert process.alive()
    assert process.stop(timeout=5) == -signal.SIGTERM
    assert not process.alive()


def test_stop_kills_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    process = ManagedProcess("stubborn", [sys.executable, "-c", code], tmp_path / "s.log")
    wait_until(lambda: "ready" in process.tail(), 10, "stubborn ready", process=process)
    assert process.stop(timeout=0.5) == -signal.SIGKILL


def test_kill_is_immediate(tmp_path: Path) -> None:
    process = ManagedProcess("sleeper", ["sleep", "60"], tmp_path / "sleep.log")
    assert process.kill() == -signal.SIGKILL
    assert process.stop() == -signal.SIGKILL  # stopping a dead process is harmless


def test_wait_until_timeout_names_what_and_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "thing.log"
    log.write_text("first line\nsomething went wrong here\n")
    with pytest.raises(TimeoutError, match="the frobnicator") as info:
        wait_until(lambda: False, 0.3, "the frobnicator", log=log)
    assert "something went wrong here" in str(info.value)


def test_wait_until_reports_last_predicate_error() -> None:
    def failing() -> bool:
        raise ConnectionRefusedError("nobody home")

    with pytest.raises(TimeoutError, match="nobody home"):
        wait_until(failing, 0.3, "a server")


def test_wait_until_fails_fast_when_the_process_exits(tmp_path: Path) -> None:
    process = ManagedProcess("crasher", ["sh", "-c", "echo boom; exit 3"], tmp_path / "c.log")
    with pytest.raises(ProcessExited, match="exit code 3") as info:
        wait_until(lambda: False, 30, "never", process=process)
    assert "boom" in str(info.value)


def test_free_port_is_bindable_and_port_free_sees_listeners() -> None:
    port = free_port()
    assert port_free(port)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert not port_free(port)


def test_start_broker_refuses_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        with pytest.raises(EmbeddedError, match="already in use"):
            start_broker(tmp_path, sock.getsockname()[1])


def test_settings_with_revalidates_and_forgets_cached_topics() -> None:
    base = Settings(topic_prefix="a.")
    assert base.topics.activities == "a.crm.activities"
    copy = settings_with(base, topic_prefix="b.", web_port="7001")
    assert copy.topics.activities == "b.crm.activities"
    assert copy.web_port == 7001
