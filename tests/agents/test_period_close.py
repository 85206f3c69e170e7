"""Which periods close when, and who is below target (zero activity included)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jsonschema
import orjson

from agents.period_close import PeriodCloser
from app.config import load_config
from app.settings import DEFAULT_CONFIG
from schemas.files import alerts_schema

CONFIG = load_config(DEFAULT_CONFIG)  # sales_rep: calls day 10 / week 50; Mon-Fri
REP = {"user_id": "rita", "team_id": "north", "manager_id": "boss", "role": "sales_rep",
       "timezone": "Europe/Berlin"}


def keys(periods: list) -> list[str]:
    return [p.bucket_keys[0] for p in periods]


def test_a_day_closes_after_its_grace() -> None:
    closer = PeriodCloser(CONFIG)
    # Tuesday 2026-11-24 00:30 Berlin: Monday ended 30 min ago, grace is 1 h.
    assert "d:2026-11-23" not in keys(closer.periods_to_close(REP, datetime(2026, 11, 23, 23, 30,
                                                                             tzinfo=UTC)))
    later = closer.periods_to_close(REP, datetime(2026, 11, 24, 0, 5, tzinfo=UTC))
    assert "d:2026-11-23" in keys(later)


def test_weekends_and_holidays_have_no_daily_close_but_weeks_do() -> None:
    closer = PeriodCloser(CONFIG)
    monday = datetime(2026, 11, 23, 9, tzinfo=UTC)
    closing = keys(closer.periods_to_close(REP, monday))
    assert "d:2026-11-22" not in closing and "d:2026-11-21" not in closing  # weekend
    assert "w:2026-11-16" in closing  # the week that ended Sunday
    after_christmas = datetime(2026, 12, 26, 9, tzinfo=UTC)
    assert "d:2026-12-25" not in keys(closer.periods_to_close(REP, after_christmas))


def test_people_without_targets_get_no_alerts() -> None:
    closer = PeriodCloser(CONFIG)
    review = closer.review({**REP, "role": None}, 0, datetime(2026, 11, 24, 15, tzinfo=UTC),
                           {}.get)
    assert review.alerts == []
    assert "c|d:2026-11-23|rita" in review.writes  # reviewed once all the same (personal best)


def test_zero_activity_is_below_target_and_alerts_carry_routing() -> None:
    closer = PeriodCloser(CONFIG)
    day = next(p for p in closer.periods_to_close(REP, datetime(2026, 11, 24, 9, tzinfo=UTC))
               if p.kind == "day")
    alerts = closer.below_target(REP, day, {})
    assert [(a.kpi, a.value, a.target) for a in alerts] == [("calls", 0, 10)]
    key, value = alerts[0].record(1795435200.0)
    payload = orjson.loads(value)
    jsonschema.validate(payload, alerts_schema())
    assert (key, payload["manager_id"], payload["period"]["key"]) == (
        b"rita", "boss", "d:2026-11-23")
    assert closer.below_target(REP, day, {"calls": 10}) == []


def test_at_risk_when_behind_the_linear_pace_and_only_once() -> None:
    closer = PeriodCloser(CONFIG)  # pace window 08-18, after half of it, margin 25 %
    tuesday_14h = datetime(2026, 11, 24, 13, tzinfo=UTC)  # 14:00 in Berlin: 60 % of the day
    day, share = next((p, s) for p, s in closer.open_periods(REP, tuesday_14h) if p.kind == "day")
    assert share == 0.6
    alerts = closer.at_risk(REP, day, share, {"calls": 4}, warned=[])
    assert [(a.kind, a.kpi, a.value, a.expected_by_now) for a in alerts] == [
        ("at_risk", "calls", 4, 6.0)]
    assert closer.at_risk(REP, day, share, {"calls": 5}, warned=[]) == []  # within the margin
    assert closer.at_risk(REP, day, share, {"calls": 0}, warned=["calls"]) == []
    jsonschema.validate(orjson.loads(alerts[0].record(1.8e9)[1]), alerts_schema())


def test_no_pace_warning_early_in_the_day_or_at_weekends() -> None:
    closer = PeriodCloser(CONFIG)
    morning = datetime(2026, 11, 24, 9, tzinfo=UTC)  # 10:00 Berlin: 20 % of the window
    assert "day" not in [p.kind for p, _ in closer.open_periods(REP, morning)]
    saturday = datetime(2026, 11, 28, 15, tzinfo=UTC)
    assert "day" not in [p.kind for p, _ in closer.open_periods(REP, saturday)]


def run_days(closer: PeriodCloser, calls_by_day: dict[str, int], profile: dict) -> list:
    """Close each day in turn (the morning after it), as the timer would; return awards."""
    store: dict = {}
    awards = []
    for day, calls in calls_by_day.items():
        store[f"u|d:{day}|rita"] = {"p": 0, "o": 1, "n": {"calls": calls}, "s": {}}
        morning_after = datetime.fromisoformat(f"{day}T09:00:00+00:00") + timedelta(days=1)
        review = closer.review(profile, 0, morning_after, store.get)
        store.update(review.writes)
        awards.extend(review.awards)
    return awards


def test_streak_survives_weekends_and_holidays() -> None:
    closer = PeriodCloser(CONFIG)  # call_streak: 5 working days at the daily target (10)
    days = {"2026-12-17": 10, "2026-12-18": 12, "2026-12-21": 10, "2026-12-22": 11,
            "2026-12-23": 10, "2026-12-28": 10}  # Thu Fri | Mon Tue Wed | 24-25 off, Mon
    awards = [a for a in run_days(closer, days, {**REP, "timezone": "UTC"})
              if a.rule == "call_streak"]
    assert [(a.period, a.value) for a in awards] == [("d:2026-12-23", 5)]


def test_a_missed_working_day_breaks_the_streak() -> None:
    closer = PeriodCloser(CONFIG)
    days = {"2026-11-16": 10, "2026-11-17": 10, "2026-11-18": 3, "2026-11-19": 10,
            "2026-11-20": 10, "2026-11-23": 10, "2026-11-24": 10}
    awards = run_days(closer, days, {**REP, "timezone": "UTC"})
    assert [a for a in awards if a.rule == "call_streak"] == []


def test_personal_best_beats_every_earlier_day() -> None:
    closer = PeriodCloser(CONFIG)
    days = {"2026-11-16": 4, "2026-11-17": 6, "2026-11-18": 6, "2026-11-19": 2,
            "2026-11-20": 9}
    awards = [a for a in run_days(closer, days, {**REP, "timezone": "UTC"})
              if a.rule == "best_call_day"]
    assert [(a.period, a.value, a.target) for a in awards] == [
        ("d:2026-11-17", 6, 4), ("d:2026-11-20", 9, 6)]


def test_streak_at_risk_late_in_the_day_once() -> None:
    closer = PeriodCloser(CONFIG)
    profile = {**REP, "timezone": "UTC"}
    store = {"k||call_streak|rita": {"p": 0, "o": -1, "count": 2, "last": "d:2026-11-23"},
             "u|d:2026-11-24|rita": {"p": 0, "o": 1, "n": {"calls": 9}, "s": {}},
             "c|d:2026-11-23|rita": {"p": 0, "o": -1}}

    def streak_alerts(at: datetime) -> list:
        review = closer.review(profile, 0, at, store.get)
        store.update(review.writes)
        return [a for a in review.alerts if a.kind == "streak_at_risk"]

    assert streak_alerts(datetime(2026, 11, 24, 14, tzinfo=UTC)) == []  # 60 %: not late yet
    late = streak_alerts(datetime(2026, 11, 24, 17, tzinfo=UTC))  # 90 % of 08-18
    assert [(a.kpi, a.value, a.target) for a in late] == [("calls", 9, 10)]
    jsonschema.validate(orjson.loads(late[0].record(1.8e9)[1]), alerts_schema())
    assert streak_alerts(datetime(2026, 11, 24, 17, 30, tzinfo=UTC)) == []  # once
