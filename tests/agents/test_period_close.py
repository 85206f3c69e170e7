"""Which periods close when, and who is below target (zero activity included)."""

from __future__ import annotations

from datetime import UTC, datetime

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


def test_people_without_targets_are_not_checked() -> None:
    closer = PeriodCloser(CONFIG)
    assert closer.periods_to_close({**REP, "role": None}, datetime(2026, 11, 24, 9,
                                                                   tzinfo=UTC)) == []


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
