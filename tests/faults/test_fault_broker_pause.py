"""The broker stops answering while CRM webhooks keep arriving.

tansu's in-memory storage does not survive a real restart (it would come back empty), so
the broker process is paused with SIGSTOP and resumed with SIGCONT. To Kafka clients that
is what a broker restart on Apache Kafka looks like: connections stall, requests time out,
then the same broker answers again with its data.

Four sender threads play CRMs: each posts signed ``/webhooks/generic`` deliveries (one to
three events) at a steady pace and, like a CRM, retries the same body after a 503 or 429
(honouring ``Retry-After``, capped at 2 s to keep the test short) until it gets a 2xx. The
test keeps its own record of every attempt and of every event that got a 2xx. While the
broker is paused the edge must answer 503 + ``Retry-After`` (never a 2xx for something the
broker does not have), the worker must wait and resume without dying, and in the end every
event is counted exactly once: a 503'd delivery that reached the broker anyway and was
retried shows up twice on ``crm.activities`` and is deduplicated by ``event_id``.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import orjson
import pytest
from kafka_tools import all_committed, read_topic

from app.edge import SIGNATURE_HEADER, sign
from app.embedded import free_port, start_broker, wait_ready
from app.kafka import ensure_topics
from app.roster import Profile, write_profiles
from app.settings import Settings

pytestmark = pytest.mark.integration
SECRET = "fault-webhook-secret"
USERS = [f"caller-{i:02d}" for i in range(12)]
SENDERS = 4
PACE_S = 0.12  # per sender: about 8 deliveries a second, 33 in all (rate limit: 50/s)
PAUSE_S = 8.0  # longer than the consumer session timeout


@dataclass
class Attempt:
    started: float
    ended: float
    status: int  # 0: no HTTP answer (connection error or timeout)
    events: list[dict[str, Any]]


@dataclass
class Crm:
    """The CRM side: deliveries retried until acknowledged, and every attempt recorded."""

    settings: Settings
    tz: Any
    faults: Any
    stop: threading.Event = field(default_factory=threading.Event)
    attempts: list[Attempt] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    errors: list[BaseException] = field(default_factory=list)

    def acked(self) -> list[Attempt]:
        with self.lock:
            return [a for a in self.attempts if 200 <= a.status < 300]

    def refused(self, since: float = 0.0) -> list[Attempt]:
        with self.lock:
            return [a for a in self.attempts if a.status == 503 and a.started >= since]

    def sender(self, number: int) -> None:
        rng = random.Random(number)
        try:
            sequence = 0
            while not self.stop.is_set():
                sequence += 1
                events = [{"event_id": f"hook-{number}-{sequence}-{k}",
                           "occurred_at": datetime.now(self.tz).isoformat(),
                           "user_id": rng.choice(USERS), "team_id": "t",
                           "type": rng.choice(["call", "email"])}
                          for k in range(rng.randint(1, 3))]
                self.deliver(events)
                self.stop.wait(PACE_S)  # the CRM's pace (not a synchronisation)
        except BaseException as exc:
            self.errors.append(exc)

    def deliver(self, events: list[dict[str, Any]]) -> None:
        """Post until a 2xx, like a CRM: the same body again after a 503, 429 or no answer."""
        body = orjson.dumps(events if len(events) > 1 else events[0])
        while True:
            headers = {SIGNATURE_HEADER: sign(SECRET, body, int(time.time()))}
            started = time.monotonic()
            retry_after = 1.0
            try:
                status, answer, reply = self.faults.post(self.settings, "/webhooks/generic",
                                                         body, headers, timeout=20)
            except OSError:
                status, answer, reply = 0, b"", {}
            with self.lock:
                self.attempts.append(Attempt(started, time.monotonic(), status, events))
            if 200 <= status < 300:
                assert orjson.loads(answer)["accepted"] == len(events), answer
                return
            assert status in (0, 429, 503), (status, answer)
            if status == 503:
                assert orjson.loads(answer)["error"] == "broker_unavailable", answer
                assert reply.get("Retry-After"), reply
                retry_after = float(reply["Retry-After"])
            time.sleep(min(retry_after, 2.0))  # the CRM's backoff


def test_paused_broker_503s_and_retried_webhooks_count_once(redis_server, faults, wait,
                                                            tmp_path: Path) -> None:
    broker = start_broker(tmp_path / "broker")
    paused = False
    try:
        tz = faults.daytime_zone()
        suffix = uuid4().hex[:8]
        settings = Settings(_env_file=None, kafka=broker.url, redis=redis_server.url,
                            web_port=free_port(), data_dir=tmp_path / "data", partitions=4,
                            topic_prefix=f"pause{suffix}.", app_id=f"pause-{suffix}",
                            session_timeout_s=6, send_timeout_s=2, config=faults.config(tz),
                            generic_webhook_secret=SECRET)
        ensure_topics(settings)
        write_profiles(settings, [Profile(user_id=u, team_id="t") for u in USERS])
        worker = faults.start_worker(settings, "worker")
        wait_ready(settings, 120, process=worker)

        crm = Crm(settings, tz, faults)
        senders = [threading.Thread(target=crm.sender, args=(n,), daemon=True)
                   for n in range(SENDERS)]
        for thread in senders:
            thread.start()
        try:
            wait("deliveries acknowledged before the pause", 60, lambda: len(crm.acked()) >= 40,
                 process=worker)
            os.kill(broker.process.pid, signal.SIGSTOP)
            paused, stopped_at = True, time.monotonic()
            wait(f"{PAUSE_S:g}s of pause with 503 answers", 90, lambda: len(
                crm.refused(stopped_at)) >= 8 and time.monotonic() - stopped_at >= PAUSE_S,
                process=worker)
            os.kill(broker.process.pid, signal.SIGCONT)
            paused, resumed_at = False, time.monotonic()
            acked_at_resume = len(crm.acked())
            wait("deliveries acknowledged after the pause", 90,
                 lambda: len(crm.acked()) >= acked_at_resume + 60, process=worker)
        finally:
            crm.stop.set()
            for thread in senders:
                thread.join(120)
        assert not crm.errors, crm.errors
        assert worker.alive(), "the worker must wait for the broker, not exit"

        # Never a 2xx for something the broker did not have: no attempt made while the
        # broker was paused was acknowledged before it resumed ...
        during = [a for a in crm.attempts if stopped_at < a.started and a.ended < resumed_at]
        assert during and all(a.status in (0, 503) for a in during), [
            a.status for a in during]
        # ... and every acknowledged event is on crm.activities.
        on_topic: list[str] = []
        for record in read_topic(settings, settings.topics.activities):
            value = orjson.loads(record.value)
            on_topic += [e["event_id"] for e in (value if isinstance(value, list) else [value])]
        acked = {e["event_id"]: e for a in crm.acked() for e in a.events}
        assert set(acked) <= set(on_topic)

        truth = faults.Truth(tz)
        for attempt in crm.acked():
            for event in attempt.events:
                truth.deliver(event, datetime.now(tz))
        wait("every record committed", 120, lambda: all_committed(settings), process=worker)
        state = faults.kpi_state(settings)
        problems = faults.kpi_mismatches(state, truth, "calls", ["call"])
        problems += faults.kpi_mismatches(state, truth, "emails", ["email"])
        assert not problems, "\n".join(problems[:20])
        assert faults.remembered_ids(state) == truth.per_user()
        refused = [a for a in crm.attempts if a.status != 202]
        twice = len(on_topic) - len(set(on_topic))
        print(f"pause {resumed_at - stopped_at:.1f}s: {len(crm.attempts)} attempts, "
              f"{len(crm.acked())} acknowledged, {len(refused)} refused or unanswered "
              f"({len(crm.refused())} x 503), {twice} events on the topic twice or more "
              f"(a 503'd delivery that landed, then its retry)")
        faults.report(f"broker paused {resumed_at - stopped_at:.0f}s (SIGSTOP/SIGCONT) under "
                      f"webhook load; {len(crm.refused())} x 503, retried",
                      1, sum(len(a.events) for a in crm.attempts),
                      faults.counted_events(state), len(acked))
    finally:
        if paused:
            os.kill(broker.process.pid, signal.SIGCONT)
        faults.stop_all()
        broker.stop()
