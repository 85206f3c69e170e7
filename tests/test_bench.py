"""``crm-pulse bench`` at small scale: it runs end to end and the counts are exact.

No timing assertions: the figures depend on the machine. The full-size run and its
numbers are in docs/performance.md.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime

import orjson
import pytest

from app.bench import (
    JSON_KEYS,
    array_records,
    check_state,
    expected_state,
    generate_events,
    office,
    percentile,
    single_records,
)
from app.cli import main
from app.settings import Settings


@pytest.mark.integration
@pytest.mark.parametrize("workers", [1, 2])
def test_bench_smoke_counts_correct(broker, capsys, workers):
    code = main(["bench", "--kafka", broker.url, "--events", "3000", "--users", "50",
                 "--latency-seconds", "3", "--rate", "200", "--workers", str(workers), "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out  # exactly one JSON object on stdout
    figures = orjson.loads(out[0])
    assert tuple(figures) == JSON_KEYS
    assert figures["counts_correct"] is True
    assert code == 0
    assert (figures["events"], figures["users"], figures["partitions"]) == (3000, 50, 4)
    assert figures["workers"] == workers
    assert figures["latency_p50_ms"] is not None


def test_bench_refuses_more_workers_than_partitions(capsys):
    assert main(["bench", "--partitions", "2", "--workers", "3"]) == 2
    assert "--workers" in capsys.readouterr().err


def test_records_carry_every_event_once():
    people = office(20, 5, "Europe/Berlin")
    now = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
    events = generate_events(random.Random(1), 500, people, now, "t")
    assert len({e["event_id"] for e in events}) == 500
    assert all(e["occurred_at"].startswith("2026-11-24") for e in events)
    arrays = array_records(events, 50)
    decoded = [e for _, value in arrays.records for e in orjson.loads(value)]
    assert sorted(e["event_id"] for e in decoded) == sorted(e["event_id"] for e in events)
    assert all(len({e["user_id"] for e in orjson.loads(v)} | {k.decode()}) == 1
               for k, v in arrays.records)
    assert sum(arrays.events_per_record) == sum(single_records(events).events_per_record) == 500
    cum = arrays.cumulative(4)
    assert sum(runs[-1] for runs in cum.values()) == 500


def test_check_state_finds_a_missing_call():
    config = Settings().pulse
    events = [
        {"event_id": "a", "user_id": "u1", "team_id": "t1", "type": "call"},
        {"event_id": "b", "user_id": "u1", "team_id": "t1", "type": "call"},
        {"event_id": "c", "user_id": "u1", "team_id": "t1", "type": "feature_used",
         "feature": "leads"},
    ]
    expected = expected_state(events, config)
    assert expected.numbers["u1"] == {"calls": 2, "activities": 2}
    assert expected.events == Counter({"u1": 3})
    exact = {
        "u|d:2026-11-24|u1": {"n": {"calls": 2, "activities": 2},
                              "s": {"features_used": ["leads"]}},
        "t|d:2026-11-24|0|t1": {"n": {"calls": 2, "activities": 2}, "s": {}},
        "s|20416|a|u1": {"ids": {"x": 1, "y": 2, "z": 3}},
    }
    assert check_state(expected, exact, "d:2026-11-24", ["u1"]) == []
    short = dict(exact, **{"u|d:2026-11-24|u1": {"n": {"calls": 1, "activities": 2},
                                                  "s": {"features_used": ["leads"]}}})
    assert len(check_state(expected, short, "d:2026-11-24", ["u1"])) == 1


def test_percentile_nearest_rank():
    assert percentile([5, 1, 3, 2, 4], 0.5) == 3
    assert percentile(list(range(1, 101)), 0.99) == 99
    assert percentile([7.0], 0.99) == 7.0
