"""Team goals, ranks and data-quality heroes over groups of people."""

from __future__ import annotations

from datetime import UTC, datetime

from agents.team_rules import TeamRules
from app.config import load_config
from app.settings import DEFAULT_CONFIG

CONFIG = load_config(DEFAULT_CONFIG)  # team_meetings_week: sum of members' weekly targets
MEMBERS = [
    {"user_id": "ana", "team_id": "north", "role": "sales_rep"},        # meetings week 3
    {"user_id": "ben", "team_id": "north", "role": "account_manager"},  # meetings week 4
    {"user_id": "old", "team_id": "north", "role": "sales_rep", "active": False},
]
NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)


def partial(meetings: int, partition: int) -> dict:
    return {"p": partition, "o": 1, "n": {"meetings": meetings}, "s": {}}


def test_goal_reached_over_partitions_awards_every_active_member_once() -> None:
    goals = TeamRules(CONFIG, partitions=2)
    store = {"t|w:2026-11-23|0|north": partial(4, 0), "t|w:2026-11-23|1|north": partial(2, 1)}
    assert [a for a in goals.review("north", MEMBERS, 0, NOW, store.get).awards
            if a.kind == "team_goal"] == []  # 6 of 7
    store["t|w:2026-11-23|1|north"] = partial(3, 1)
    review = goals.review("north", MEMBERS, 0, NOW, store.get)
    team_awards = [a for a in review.awards if a.kind == "team_goal"]
    assert sorted(a.user_id for a in team_awards) == ["ana", "ben"]
    assert {(a.period, a.value, a.target) for a in team_awards} == {("w:2026-11-23", 7, 7)}
    store.update(review.writes)
    assert goals.review("north", MEMBERS, 0, NOW, store.get).awards == []


def week_calls(group: str, user: str, calls: int) -> tuple[str, dict]:
    """A member's week bucket as the groups table holds it."""
    bucket = {"p": 0, "o": 1, "n": {"calls": calls, "records_fixed": calls % 3}, "s": {}}
    return f"r|w:2026-11-16|{group}|{user}", bucket


def test_top_three_of_the_closed_week_without_opted_out_or_idle_people() -> None:
    rules = TeamRules(CONFIG, partitions=1)  # top_callers_week: top 3 of the team
    people = [{"user_id": u, "team_id": "north", "office_id": "berlin"}
              for u in ("a", "b", "c", "d", "e", "f")]
    people[1]["leaderboard_opt_out"] = True
    store = dict(week_calls("team:north", u, n)
                 for u, n in zip("abcdef", [30, 99, 12, 40, 0, 12], strict=True))
    review = rules.review("north", people, 0, NOW, store.get)
    ranked = [(a.user_id, a.target, a.value) for a in review.awards if a.kind == "rank"]
    assert ranked == [("d", 1, 40), ("a", 2, 30), ("c", 3, 12)]  # ties: by user id
    store.update(review.writes)
    assert [a for a in rules.review("north", people, 0, NOW, store.get).awards
            if a.kind == "rank"] == []


def test_data_quality_hero_of_the_office() -> None:
    rules = TeamRules(CONFIG, partitions=1)  # data_quality_hero: top 1 per office
    people = [{"user_id": u, "team_id": t, "office_id": "berlin"}
              for u, t in (("a", "north"), ("b", "south"), ("c", "south"))]
    store = dict(week_calls("office:berlin", u, n)  # records fixed: 1, 2, 0
                 for u, n in zip("abc", [4, 5, 3], strict=True))
    awards = rules.rank("berlin", "office", people, 0, NOW, store.get).awards
    assert [(a.kind, a.user_id, a.target) for a in awards] == [("data_quality_hero", "b", 1)]
