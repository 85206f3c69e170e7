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
