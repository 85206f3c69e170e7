"""The example notifier posts each award once, whatever the redeliveries."""

from __future__ import annotations

import io

import orjson
import pytest
from kafka_tools import produce

from agents.achievements import Award
from app.kafka import ensure_topics
from app.notifier import RecentIds, chat_line, run_notifier


def award(rule: str = "ten_calls_today", user: str = "rita") -> Award:
    return Award(rule=rule, kind="threshold", user_id=user, team_id="north",
                 period="d:2026-11-23", value=10, target=10,
                 occurred_at="2026-11-23T09:09:00Z", title="10 calls today",
                 message="10 calls today: Calls 10 of 10 (d:2026-11-23)")


def test_recent_ids_forget_the_oldest() -> None:
    ids = RecentIds(capacity=2)
    assert [ids.first_time(x) for x in "abab"] == [True, True, False, False]
    ids.first_time("c")
    assert ids.first_time("a") is True


def test_chat_line() -> None:
    payload = orjson.loads(award().record(1795435200.0)[1])
    assert chat_line(payload) == "🏆 rita — 10 calls today: Calls 10 of 10 (d:2026-11-23)"


@pytest.mark.integration
def test_redelivered_awards_are_posted_once(make_settings) -> None:
    settings = make_settings()
    ensure_topics(settings)
    first, other = award().record(1.0e9), award(user="nora").record(1.0e9)
    repeat = award().record(1.1e9)  # the same award emitted again after a crash
    produce(settings, [first, other, repeat, (b"x", b"not json")],
            topic=settings.topics.achievements)
    out = io.StringIO()
    assert run_notifier(settings, from_beginning=True, idle_exit_s=3, out=out) == 0
    lines = out.getvalue().splitlines()
    assert sorted(lines) == sorted([
        "🏆 rita — 10 calls today: Calls 10 of 10 (d:2026-11-23)",
        "🏆 nora — 10 calls today: Calls 10 of 10 (d:2026-11-23)",
    ])
