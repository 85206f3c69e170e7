"""The cross-worker group feed: which buckets travel, and replays that change nothing."""

from __future__ import annotations

import orjson

from agents.group_view import GroupFeed, apply_updates
from app.config import load_config
from app.settings import DEFAULT_CONFIG

CONFIG = load_config(DEFAULT_CONFIG)  # team goal: meetings/week; ranks: calls/week (team),
PROFILES = {"ana": {"user_id": "ana", "team_id": "north", "office_id": "berlin"}}  # office


def bucket(offset: int, calls: int) -> dict:
    return {"p": 3, "o": offset, "n": {"calls": calls}, "s": {}}


def test_only_buckets_that_group_rules_read_travel_keyed_by_group() -> None:
    writes = {
        "t|w:2026-11-23|3|north": bucket(10, 4),  # team goal period: travels
        "t|d:2026-11-23|3|north": bucket(10, 1),  # no team rule reads days
        "u|w:2026-11-23|ana": bucket(10, 4),      # ranked per team and per office
        "u|d:2026-11-23|ana": bucket(10, 1),
        "u|w:2026-11-23|ghost": bucket(10, 1),    # not in the roster: never ranked
        "f||ana": {"p": 3, "o": 10},
    }
    records = {key.decode(): orjson.loads(value)
               for key, value in GroupFeed(CONFIG).records(writes, PROFILES.get)}
    assert {group: [key for key, _ in entries] for group, entries in records.items()} == {
        "team:north": ["t|w:2026-11-23|3|north", "r|w:2026-11-23|team:north|ana"],
        "office:berlin": ["r|w:2026-11-23|office:berlin|ana"],
    }


def test_newest_watermark_wins_and_replays_change_nothing() -> None:
    key = "t|w:2026-11-23|3|north"
    store: dict = {}
    newer = orjson.dumps([[key, bucket(20, 5)]])
    older = orjson.dumps([[key, bucket(10, 4)]])
    store.update(apply_updates([older, newer], 6, store.get))
    assert store[key] == {**bucket(20, 5), "p": 6}  # placed on the groups partition
    assert apply_updates([newer, older], 6, store.get) == {}
