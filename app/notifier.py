"""``crm-pulse notify``: an example downstream consumer of the recognition topic.

It shows what a chat bot (Teams, Slack, e-mail) does: subscribe to ``crm.achievements``,
deduplicate by ``achievement_id`` (a crash upstream may deliver an award twice, always with
the same id), and post a message. Here the "post" is a line on stdout. A real bot keeps the
ids it has posted in durable storage; this example keeps the most recent ones in memory.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections import OrderedDict
from typing import Any, TextIO

import orjson
from kafka import KafkaConsumer

from agents.achievements import REVOKED
from app.kafka import bootstrap_servers
from app.settings import Settings

logger = logging.getLogger(__name__)
REMEMBERED_IDS = 100_000


class RecentIds:
    """The last ``capacity`` ids seen, for duplicate suppression."""

    def __init__(self, capacity: int = REMEMBERED_IDS) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def first_time(self, item: str) -> bool:
        if item in self._ids:
            return False
        self._ids[item] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return True


def chat_line(award: dict[str, Any]) -> str:
    """What a bot would post for one award (a revocation: what it would take back)."""
    mark = "↩" if award["kind"] == REVOKED else "🏆"
    return f"{mark} {award['user_id']} — {award['message']}"


def run_notifier(settings: Settings, from_beginning: bool = False,
                 idle_exit_s: float | None = None, out: TextIO = sys.stdout) -> int:
    """Print each award once until Ctrl-C (or ``idle_exit_s`` without news)."""
    consumer = KafkaConsumer(
        settings.topics.achievements,
        bootstrap_servers=bootstrap_servers(settings.kafka),
        group_id=f"{settings.app_id}-notifier",
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
        session_timeout_ms=int(settings.session_timeout_s * 1000),
        heartbeat_interval_ms=int(settings.session_timeout_s * 1000 / 6),
    )
    seen = RecentIds()
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    previous = signal.signal(signal.SIGTERM, _stop)
    last_news = time.monotonic()
    posted = 0
    try:
        while not stop:
            batches = consumer.poll(timeout_ms=500)
            if not consumer.assignment():  # still joining the group: not idle yet
                last_news = time.monotonic()
            for records in batches.values():
                for record in records:
                    last_news = time.monotonic()
                    try:
                        award = orjson.loads(record.value)
                        fresh = seen.first_time(award["achievement_id"] + (
                            ":revoked" if award["kind"] == REVOKED else ""))
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        logger.warning("skipping a malformed award at offset %d", record.offset)
                        continue
                    if fresh:
                        print(chat_line(award), file=out, flush=True)
                        posted += 1
            if batches:
                consumer.commit()
            if idle_exit_s is not None and time.monotonic() - last_news > idle_exit_s:
                break
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        consumer.close()
    logger.info("notifier: %d award(s) posted", posted)
    return 0
