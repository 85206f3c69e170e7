from datetime import UTC, datetime

import orjson

from agents.retention import expired_keys
from app.config import load_config
from app.settings import DEFAULT_CONFIG

CONFIG = load_config(DEFAULT_CONFIG)  # retention: hour 3d, day 40d, week 120d, month 400d
NOW = datetime(2026, 11, 23, 12, tzinfo=UTC).timestamp()
TODAY = int(NOW // 86_400)


def bucket(partition: int = 0) -> dict:
    return {"p": partition, "o": 1, "n": {}, "s": {}}


def test_only_expired_keys_of_owned_partitions_are_dropped() -> None:
    items = {
        "u|h:2026-11-23T10|ana": bucket(),
        "u|h:2026-11-18T10|ana": bucket(),          # 5 days > 3 d
        "u|d:2026-10-20|ana": bucket(),             # 34 days: kept
        "u|d:2026-10-01|ana": bucket(),             # 53 days > 40 d
        "t|w:2026-07-06|0|north": bucket(),         # ~140 days > 120 d + a week
        "t|m:2026-01|0|north": bucket(),            # kept (month retention 400 d)
        "u|d:2026-10-01|ben": bucket(partition=3),  # expired, but partition 3 is not ours
        f"s|{TODAY - 3}|ana": {"p": 0, "ids": {}},  # inside the 7-day dedup horizon
        f"s|{TODAY - 9}|ana": {"p": 0, "ids": {}},  # outside it
        "f||ana": {"p": 0, "o": 5, "r": {}},        # lifetime state: never expires
        "k||call_streak|ana": {"p": 0, "o": -1},
        "c|d:2026-10-01|ana": {"p": 0, "o": -1},    # a close marker expires with its period
        "e|d:2026-10-01|492000|ana": {"p": 0, "o": 1, "lines": []},  # statement lines: a day
        "e|d:2026-10-20|492500|ana": {"p": 0, "o": 1, "lines": []},
        "l|opportunity|o-1": {"p": 1, "o": 4, "t": NOW - 30 * 86_400},  # ledger: correctable
        "l|opportunity|o-2": {"p": 1, "o": 4, "t": NOW - 45 * 86_400},  # past retention.day
    }
    doomed = dict(expired_keys(items.items(), CONFIG, NOW, partitions={0, 1}))
    assert sorted(doomed) == sorted([
        "u|h:2026-11-18T10|ana",
        "u|d:2026-10-01|ana",
        "c|d:2026-10-01|ana",
        "e|d:2026-10-01|492000|ana",
        "l|opportunity|o-2",
        "t|w:2026-07-06|0|north",
        f"s|{TODAY - 9}|ana",
    ])
    assert set(doomed.values()) == {0, 1}


def test_encoded_values_are_decoded_only_where_the_key_does_not_decide() -> None:
    items = {
        "u|d:2026-11-23|ana": orjson.dumps(bucket()),  # kept by its key: not decoded
        f"s|{TODAY - 1}|ana": orjson.dumps({"p": 0, "ids": {}}),
        "f||ana": orjson.dumps({"p": 0, "o": 5, "r": {}}),
        "u|d:2026-10-01|ana": orjson.dumps(bucket()),  # expired: its partition is read
        "l|opportunity|o-2": orjson.dumps({"p": 1, "o": 4, "t": NOW - 45 * 86_400}),
    }
    decoded: list[bytes] = []

    def decode(raw: bytes) -> dict:
        decoded.append(raw)
        return orjson.loads(raw)

    doomed = expired_keys(items.items(), CONFIG, NOW, {0, 1}, decode)
    assert doomed == [("u|d:2026-10-01|ana", 0), ("l|opportunity|o-2", 1)]
    assert decoded == [items["u|d:2026-10-01|ana"], items["l|opportunity|o-2"]]
