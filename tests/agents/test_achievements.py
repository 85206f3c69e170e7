"""Achievement rules as folded: each fires once, with a deterministic id, on replay too."""

from __future__ import annotations

from factories import event, record

from agents.achievements import achievement_id
from agents.ingest import Ingestor, UserInfo
from app.config import load_config
from app.settings import DEFAULT_CONFIG

CONFIG = load_config(DEFAULT_CONFIG)
FLAGS = next(r for r in CONFIG.achievements if r.kind == "first_use").flags
ROSTER = {"rita": UserInfo("north", "UTC", "sales_rep"), "nora": UserInfo("north", "UTC", None)}


class Store(dict):
    def run(self, records: list) -> list:
        result = Ingestor(CONFIG, 65_536, 1, ROSTER.get).fold(records, self.get)
        self.update(result.writes)
        return result.awards


def calls(user: str, n: int, start: int = 0) -> list:
    return [record(event(user, occurred_at=f"2026-11-23T09:{start + i:02d}:00Z"), start + i)
            for i in range(n)]


def rules(awards: list) -> list[str]:
    return [a.rule for a in awards]


def test_threshold_and_target_fire_once_when_crossed() -> None:
    store = Store()
    assert rules(store.run(calls("rita", 9))) == []
    awards = store.run(calls("rita", 3, start=9))
    assert sorted(rules(awards)) == ["daily_call_target", "ten_calls_today"]
    ten = next(a for a in awards if a.rule == "ten_calls_today")
    assert (ten.period, ten.value, ten.target) == ("d:2026-11-23", 10, 10)
    assert ten.occurred_at == "2026-11-23T09:09:00Z"  # the tenth call earned it
    assert ten.achievement_id == achievement_id("ten_calls_today", "rita", "d:2026-11-23")
    assert store.run(calls("rita", 5, start=12)) == []


def test_target_hit_needs_a_role_with_a_target() -> None:
    assert rules(Store().run(calls("nora", 12))) == ["ten_calls_today"]


def test_replay_does_not_award_again_and_lost_state_gives_the_same_ids() -> None:
    records = calls("rita", 12)
    store = Store()
    first = store.run(records)
    assert store.run(records) == []
    again = Store().run(records)  # state lost in a crash: the same awards, same ids
    assert [a.achievement_id for a in again] == [a.achievement_id for a in first]


def test_first_use_of_each_flag_and_all_flags() -> None:
    store = Store()
    uses = [record(event("rita", "feature_used", feature=flag), 10 * i)
            for i, flag in enumerate(FLAGS)]
    used_again = record(event("rita", "feature_used", feature=FLAGS[0]), 25)
    awards = store.run([*uses[:3], used_again])
    assert [a.period for a in awards] == [f"flag:{flag}" for flag in FLAGS[:3]]
    assert awards[0].title == f"First use: {FLAGS[0]}"
    awards = store.run(uses[3:])
    assert [a.period for a in awards][-1] == "flag:*"
    assert len(awards) == len(FLAGS) - 3 + 1
    assert store.run(uses) == []


def test_unlisted_features_award_nothing() -> None:
    assert Store().run([record(event("rita", "feature_used", feature="telepathy"), 0)]) == []


def test_award_record_shape() -> None:
    award = Store().run(calls("rita", 10))[0]
    key, value = award.record(emitted_at=1795435200.0)
    assert key == b"rita"
    assert b'"achievement_id"' in value and b'"emitted_at":"2026-11-23T12:00:00+00:00"' in value


def test_progress_lists_every_goal_with_what_is_left() -> None:
    store = Store()
    store.run([*calls("rita", 4), record(event("rita", "feature_used", feature="leads"), 10)])
    rules = Ingestor(CONFIG, 65_536, 1, ROSTER.get).rules
    current = {"day": "d:2026-11-23", "week": "w:2026-11-23", "month": "m:2026-11"}
    goals = rules.progress("sales_rep", current,
                           lambda key, kpi: rules.value(store.get(f"u|{key}|rita"), kpi),
                           store["f||rita"]["r"])
    by_rule = {goal["rule"]: goal for goal in goals}
    assert by_rule["ten_calls_today"] | {"title": None} == {
        "rule": "ten_calls_today", "kind": "threshold", "title": None, "period": "d:2026-11-23",
        "kpi": "calls", "value": 4, "goal": 10, "remaining": 6, "reached": False}
    assert by_rule["daily_call_target"]["goal"] == 10
    assert by_rule["first_use"]["collected"] == ["leads"]
    assert len(by_rule["first_use"]["missing"]) == len(FLAGS) - 1
    without_role = {g["rule"] for g in rules.progress(None, current, lambda k, m: 0, {})}
    assert "daily_call_target" not in without_role
