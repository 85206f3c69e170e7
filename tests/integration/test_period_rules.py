"""Period rules on a real worker: streaks over a weekend and a holiday, personal bests, ranks
without opted-out people, at_risk and streak_at_risk once, the same outputs after a SIGKILL.

History is produced with broker timestamps of its own days (as a replay of the CRM would
be), so it is on time; the worker reviews the closed days within ``catch_up`` on its first
ticks. The calendar is built around today: a two-day "weekend" and a holiday fall inside the
streak, and today is a working day, so the test means the same on any date.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jsonschema
import orjson
import pytest
from kafka_tools import produce_past_calls, read_topic

from app.config import WEEKDAYS
from app.embedded import wait_until
from app.kafka import ensure_topics
from app.roster import Profile, write_profiles
from schemas.files import achievements_schema, alerts_schema

pytestmark = pytest.mark.integration
ZONES = ("UTC", "Asia/Tokyo", "America/New_York", "Pacific/Auckland", "America/Los_Angeles")
TARGET = 2  # calls a day


def local_zone() -> ZoneInfo:
    """A timezone where it is now between 03:00 and 20:00, so "today" holds for the test."""
    for name in ZONES:
        if 3 <= datetime.now(ZoneInfo(name)).hour < 20:
            return ZoneInfo(name)
    raise AssertionError("no candidate zone has daytime now")  # impossible: they span 21 h


def config_text(tz: ZoneInfo, today: date) -> str:
    weekend = {WEEKDAYS[(today - timedelta(days=d)).weekday()] for d in (3, 4)}
    working = [day for day in WEEKDAYS if day not in weekend]
    holiday = (today - timedelta(days=6)).isoformat()
    return f"""\
timezone: {tz.key}
team_timezone: {tz.key}
periods: [day]
catch_up: 10d
kpis:
  calls: {{count: [call]}}
roles:
  rep: {{targets: {{calls: {{day: {TARGET}}}}}}}
calendar:
  working_days: [{", ".join(working)}]
  holidays: [{holiday}]
alerts: {{at_risk_after: 0.5, at_risk_margin: 0.25, work_hours: [0, 1]}}
achievements:
  - {{id: call_streak, kind: streak, kpi: calls, period: day, length: 5, title: Streak}}
  - {{id: best_day, kind: personal_best, kpi: calls, period: day, title: Best day}}
  - {{id: top_day, kind: rank, kpi: calls, period: day, scope: team, top: 2, title: Top 2}}
"""


# Calls per day (days before today). -3/-4 are the weekend, -6 the holiday: the streak of
# "steady" (-8, -7, -5, -2, -1) survives both; "gappy" misses the target on -5.
CALLS = {
    "steady": {-8: 2, -7: 2, -5: 2, -4: 1, -2: 2, -1: 3},
    "gappy": {-8: 2, -7: 2, -5: 1, -2: 2, -1: 2},
    "optout": {-1: 9},
    "idle": {},
}
REVIEWED = (-9, -8, -7, -5, -2, -1)  # working days closed within catch_up (10 days)


def expected_awards(today: date) -> set[tuple[str, str, str, float]]:
    """(rule, user, period, value), from the rules' definitions over CALLS."""
    def key(back: int) -> str:
        return f"d:{(today + timedelta(days=back)).isoformat()}"

    awards = {("call_streak", "steady", key(-1), 5), ("top_day", "steady", key(-1), 3),
              ("top_day", "gappy", key(-1), 2)}  # optout has more calls but is not ranked
    for user, days in CALLS.items():
        best = None
        for back in REVIEWED:
            value = days.get(back, 0)
            if best is not None and value > best:
                awards.add(("best_day", user, key(back), value))
            best = value if best is None else max(best, value)
    return awards


def test_streaks_bests_ranks_and_pace_alerts_once_across_a_sigkill(
        make_settings, worker_factory, tmp_path: Path) -> None:
    tz = local_zone()
    today = datetime.now(tz).date()
    config_path = tmp_path / "pulse.yaml"
    config_path.write_text(config_text(tz, today))
    settings = make_settings(config=config_path, close_interval_s=1, session_timeout_s=6)
    ensure_topics(settings)
    write_profiles(settings, [
        Profile(user_id=user, team_id="t", role="rep", leaderboard_opt_out=user == "optout")
        for user in CALLS])
    produce_past_calls(settings, CALLS, tz, today)

    def values(topic: str) -> list[dict[str, Any]]:
        return [orjson.loads(r.value) for r in read_topic(settings, topic)]

    wanted = expected_awards(today)
    pace = {("at_risk", user) for user in CALLS} | {  # on target yesterday: streak running
        ("streak_at_risk", user) for user in ("steady", "gappy", "optout")}

    def all_out() -> bool:
        awards = {(a["rule"], a["user_id"]) for a in values(settings.topics.achievements)}
        alerts = {(a["kind"], a["user_id"]) for a in values(settings.topics.alerts)}
        return {(rule, user) for rule, user, _, _ in wanted} <= awards and pace <= alerts

    worker = worker_factory(settings)
    wait_until(all_out, 90, "streak, best and rank awards and pace alerts")
    changelog = f"{settings.app_id}-kpi-changelog"
    wait_until(lambda: sum(orjson.loads(r.key).startswith(("c|d", "a|d"))
                           for r in read_topic(settings, changelog)) >= 6 * len(CALLS) + 4,
               30, "close and pace markers stored")
    worker.kill()

    worker_factory(settings)  # restarted mid-day: nothing may be awarded or warned twice
    write_profiles(settings, [Profile(user_id="newcomer", team_id="t", role="rep")])
    wait_until(lambda: {"at_risk", "below_target"} <= {
        a["kind"] for a in values(settings.topics.alerts) if a["user_id"] == "newcomer"},
        90, "the restarted worker's review of a new member")

    awards = values(settings.topics.achievements)
    for award in awards:
        jsonschema.validate(award, achievements_schema())
    assert {(a["rule"], a["user_id"], a["period"], a["value"]) for a in awards} == wanted
    assert len({a["achievement_id"] for a in awards}) == len(awards) == len(wanted)
    streak = next(a for a in awards if a["rule"] == "call_streak")
    assert (streak["target"], streak["team_id"]) == (5, "t")

    alerts = [a for a in values(settings.topics.alerts) if a["user_id"] != "newcomer"]
    for alert in alerts:
        jsonschema.validate(alert, alerts_schema())
    assert len({a["alert_id"] for a in alerts}) == len(alerts)  # each sent once
    assert {(a["kind"], a["user_id"]) for a in alerts if a["kind"] != "below_target"} == pace
    below = {(a["user_id"], a["period"]["key"]) for a in alerts if a["kind"] == "below_target"}
    short = {(user, f"d:{(today + timedelta(days=back)).isoformat()}")
             for user, days in CALLS.items()
             for back in REVIEWED if days.get(back, 0) < TARGET}
    assert below == short  # zero-activity days included; weekend and holiday never
