"""SIGKILL a real worker mid-stream, again and again: the tables end exactly right."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import jsonschema
import orjson
import pytest
from kafka_tools import all_committed, committed, produce, read_topic, table_state

from agents.ingest import user_key
from app.embedded import free_port, settings_with, wait_until
from app.kafka import ensure_topics
from schemas.files import achievements_schema

pytestmark = pytest.mark.integration

USERS = [f"user-{i:02d}" for i in range(40)]
TYPES = ["call", "call", "email", "meeting", "feature_used", "opportunity_won"]


def office_stream(rng: random.Random, now: datetime, events: int) -> list[dict]:
    """Events of today (Berlin default timezone), with every tenth one delivered twice."""
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    elapsed = max(60, int((now - day_start).total_seconds()) - 60)
    stream = []
    for i in range(events):
        kind = rng.choice(TYPES)
        event = {
            "event_id": f"ev-{i}",
            "occurred_at": (day_start + timedelta(seconds=rng.randrange(elapsed))).isoformat(),
            "user_id": rng.choice(USERS),
            "team_id": f"team-{i % 3}",
            "type": kind,
        }
        if kind == "feature_used":
            event["feature"] = rng.choice(["leads", "quotes", "reports", "cases"])
        if kind == "opportunity_won":
            event["amount"] = rng.randrange(100, 5000)
        stream.append(event)
        if i % 10 == 0:
            stream.append(dict(event))
    return stream


def awards(settings) -> list[dict]:
    """Every delivery on the run's crm.achievements topic."""
    return [orjson.loads(r.value) for r in read_topic(settings, settings.topics.achievements)]


@pytest.mark.parametrize("state_store", ["memory", "disk"])
def test_sigkill_restart_yields_exactly_the_uninterrupted_tables(make_settings, worker_factory,
                                                                  state_store):
    rng = random.Random(20261123)
    now = datetime.now(UTC).astimezone(ZoneInfo("Europe/Berlin"))  # config default
    events = office_stream(rng, now, 24_000)
    settings = make_settings(session_timeout_s=6, state_store=state_store)
    records = [(e["user_id"].encode(), orjson.dumps(e)) for e in events]
    records.insert(500, (b"user-01", b"\x00 poison"))
    ensure_topics(settings)
    produce(settings, records)
    total = len(records)

    kills = 0
    for fraction in (0.1, 0.35, 0.65):
        worker = worker_factory(settings)
        wait_until(lambda f=fraction: sum(committed(settings).values()) >= f * total, 240,
                   f"{fraction:.0%} of the input committed", process=worker, interval=0.05)
        worker.kill()
        kills += 1
    worker_factory(settings)
    wait_until(lambda: all_committed(settings), 240, "all input committed", interval=0.2)
    killed_run = table_state(settings)

    clean = settings_with(settings, app_id=settings.app_id + "-clean", web_port=free_port(),
                          topic_prefix="clean." + settings.topic_prefix)
    ensure_topics(clean)
    produce(clean, records)
    worker_factory(clean)
    wait_until(lambda: all_committed(clean), 240, "clean run committed", interval=0.2)
    clean_run = table_state(clean)

    assert kills == 3
    assert killed_run == clean_run

    # The same awards: a crash may deliver one twice (same id, same content), never another.
    killed_awards, clean_awards = awards(settings), awards(clean)
    assert clean_awards, "the input crosses thresholds and first-use flags"
    clean_ids = [award["achievement_id"] for award in clean_awards]
    assert len(clean_ids) == len(set(clean_ids))
    first = {}
    for award in killed_awards:
        jsonschema.validate(award, achievements_schema())
        earlier = first.setdefault(award["achievement_id"], award)
        assert {**award, "emitted_at": None} == {**earlier, "emitted_at": None}
    assert set(first) == set(clean_ids)

    # ... and both equal an independent count of the unique events.
    unique = {e["event_id"]: e for e in events}.values()
    calls = Counter(e["user_id"] for e in unique if e["type"] == "call")
    day = "d:" + now.date().isoformat()
    for user in USERS:
        bucket = killed_run.get(user_key(day, user), {"n": {}})
        assert bucket["n"].get("calls", 0) == calls[user], user
