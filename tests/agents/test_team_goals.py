"""Team goals: the team's total over all partitions reaching the goal awards every member."""

from __future__ import annotations

from datetime import UTC, datetime

from agents.team_goals import TeamGoals
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
    goals = TeamGoals(CONFIG, partitions=2)
    store = {"t|w:2026-11-23|0|north": partial(4, 0), "t|w:2026-11-23|1|north": partial(2, 1)}
    assert goals.review("north", MEMBERS, 0, NOW, store.get).awards == []  # 6 of 7
    store["t|w:2026-11-23|1|north"] = partial(3, 1)
    review = goals.review("north", MEMBERS, 0, NOW, store.get)
    assert sorted(a.user_id for a in review.awards) == ["ana", "ben"]
    assert {(a.period, a.value, a.target) for a in review.awards} == {("w:2026-11-23", 7, 7)}
    store.update(review.writes)
    assert goals.review("north", MEMBERS, 0, NOW, store.get).awards == []
