"""The bench's events and records, and the independent count they are checked against (pure).

Nothing here touches a broker: the office of bench users, simulator events of today, the
same events encoded as single-event records and as JSON-array records, and the expected
KPI state folded from the events without the pipeline's code.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

from agents.ingest import partition_of
from app.config import PulseConfig
from app.roster import Profile
from app.simulator import generate_event, hourly_rate

ROLES = ("sales_rep", "sales_rep", "account_manager", "service_agent")


def office(users: int, teams: int, timezone: str) -> list[Profile]:
    """The benchmark's people: ``users`` in ``teams`` teams, a mix of the default roles."""
    return [
        Profile(user_id=f"bench-user-{i:05d}", team_id=f"bench-team-{i % teams:02d}",
                role=ROLES[i % len(ROLES)], timezone=timezone)
        for i in range(users)
    ]


def generate_events(rng: random.Random, count: int, people: Sequence[Profile], now: datetime,
                    run: str) -> list[dict[str, Any]]:
    """``count`` simulator events (:func:`app.simulator.generate_event`) of today, oldest first.

    Moments are spread over ``now``'s local day up to ``now``, so nothing is late; busier
    people (role and diligence) act more often. Event ids are unique: no duplicates.
    """
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    span = max(1.0, (now - day_start).total_seconds() - 1.0)
    who = rng.choices(people, weights=[hourly_rate(p) for p in people], k=count)
    moments = sorted(day_start + timedelta(seconds=rng.random() * span) for _ in range(count))
    return [generate_event(rng, person, moment, seq, run=f"bench-{run}")
            for seq, (person, moment) in enumerate(zip(who, moments, strict=True))]


@dataclass
class RecordSet:
    """Encoded records of one topic, with how many events each record carries."""

    records: list[tuple[bytes, bytes]]
    events_per_record: list[int]

    def cumulative(self, partitions: int) -> dict[int, list[int]]:
        """Per partition, ``[k]`` = events in its first ``k`` records (= below offset ``k``).

        Holds because the topic is new and each partition gets its records in list order.
        """
        cum: dict[int, list[int]] = {p: [0] for p in range(partitions)}
        for (key, _), count in zip(self.records, self.events_per_record, strict=True):
            runs = cum[partition_of(key, partitions)]
            runs.append(runs[-1] + count)
        return cum


def single_records(events: Sequence[dict[str, Any]]) -> RecordSet:
    """One event per record, keyed by user id (what external producers write)."""
    return RecordSet([(e["user_id"].encode(), orjson.dumps(e)) for e in events], [1] * len(events))


def array_records(events: Sequence[dict[str, Any]], size: int) -> RecordSet:
    """Each user's events as JSON arrays of up to ``size`` (what our own producers write).

    Arrays are cut in time order, so records of different users interleave as at a busy edge.
    """
    open_arrays: dict[str, list[dict[str, Any]]] = defaultdict(list)
    records: list[tuple[bytes, bytes]] = []
    counts: list[int] = []
    for event in events:
        mine = open_arrays[event["user_id"]]
        mine.append(event)
        if len(mine) == size:
            records.append((event["user_id"].encode(), orjson.dumps(mine)))
            counts.append(size)
            open_arrays[event["user_id"]] = []
    for user, mine in open_arrays.items():
        if mine:
            records.append((user.encode(), orjson.dumps(mine)))
            counts.append(len(mine))
    return RecordSet(records, counts)


# -- the independent count (pure) -----------------------------------------------------------


@dataclass
class Expected:
    """What the tables must hold, counted from the produced events and the KPI config."""

    numbers: dict[str, dict[str, float]]  # user -> kpi -> number (count and sum KPIs)
    distinct: dict[str, dict[str, set[Any]]]  # user -> kpi -> values (distinct KPIs)
    team_numbers: dict[str, dict[str, float]]
    events: Counter[str]  # user -> events


def expected_state(events: Sequence[dict[str, Any]], config: PulseConfig) -> Expected:
    """Fold the events by the KPI definitions, written out without the pipeline's code."""
    numbers: dict[str, dict[str, float]] = defaultdict(dict)
    distinct: dict[str, dict[str, set[Any]]] = defaultdict(dict)
    team_numbers: dict[str, dict[str, float]] = defaultdict(dict)
    per_user: Counter[str] = Counter()
    kpis = [(name, kpi) for name, kpi in config.kpis.items() if kpi.ratio is None]
    for event in events:
        user, team = event["user_id"], event.get("team_id")
        per_user[user] += 1
        action = event.get("action", "created")
        for name, kpi in kpis:
            types = kpi.source_types
            if (types is not None and event["type"] not in types) or action not in kpi.actions:
                continue
            if kpi.distinct is not None:
                if event.get(kpi.distinct) is not None:
                    distinct[user].setdefault(name, set()).add(event[kpi.distinct])
                continue
            amount = 1 if kpi.count is not None else event.get(kpi.sum or "")
            if not isinstance(amount, (int, float)) or isinstance(amount, bool):
                continue
            numbers[user][name] = numbers[user].get(name, 0) + amount
            if team:
                team_numbers[team][name] = team_numbers[team].get(name, 0) + amount
    return Expected(dict(numbers), dict(distinct), dict(team_numbers), per_user)


def _nonzero(numbers: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in numbers.items() if v}


def check_state(expected: Expected, state: dict[str, dict[str, Any]], day_key: str,
                users: Sequence[str]) -> list[str]:
    """Differences between the changelog state and ``expected`` (empty: exact).

    Compares every user's day bucket (all count/sum KPIs and distinct sets), every user's
    number of remembered event ids (the dedup memory: each event taken exactly once), and
    each team's day figures summed over its per-partition buckets.
    """
    problems: list[str] = []
    remembered: Counter[str] = Counter()
    teams: dict[str, dict[str, float]] = defaultdict(dict)
    for key, value in state.items():
        kind, period, *rest = key.split("|")
        if kind == "s":
            remembered[rest[-1]] += len(value.get("ids", {}))
        elif kind == "t" and period.startswith("d:"):
            totals = teams[rest[-1]]
            for name, number in value["n"].items():
                totals[name] = totals.get(name, 0) + number
    for user in users:
        bucket = state.get(f"u|{day_key}|{user}", {"n": {}, "s": {}})
        got, want = _nonzero(bucket["n"]), _nonzero(expected.numbers.get(user, {}))
        if got != want:
            problems.append(f"{user} {day_key}: KPIs {got} != expected {want}")
        got_sets = {k: set(v) for k, v in bucket["s"].items() if v}
        if got_sets != expected.distinct.get(user, {}):
            problems.append(f"{user} {day_key}: distinct {got_sets} != expected "
                            f"{expected.distinct.get(user, {})}")
        if remembered[user] != expected.events[user]:
            problems.append(f"{user}: {remembered[user]} event ids remembered, "
                            f"{expected.events[user]} produced")
    for team in sorted(set(teams) | set(expected.team_numbers)):
        got, want = _nonzero(teams.get(team, {})), _nonzero(expected.team_numbers.get(team, {}))
        if got != want:
            problems.append(f"{team} day: KPIs {got} != expected {want}")
    return problems
