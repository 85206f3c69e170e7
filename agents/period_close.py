"""Period close (pure): closed periods, below-target and pace alerts, streaks, personal bests.

A period is closed once its end plus the lateness grace has passed (no event can change
it any more). A timer calls :meth:`PeriodCloser.review` for every active roster member a
worker owns; each closed period is reviewed once (a marker key in the table), oldest first,
so restarts catch up on periods closed while no worker ran, and outputs keep their ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from agents.achievements import Award
from agents.ingest import user_key
from agents.kpis import KpiFolder
from agents.periods import Calendar, Period, zone
from app.config import WEEKDAYS, PersonalBestRule, PulseConfig, StreakRule

CLOSABLE = ("day", "week", "month", "quarter", "year")
Reader = Callable[[str], dict[str, Any] | None]
STREAK_WARNING_SHARE = 0.8  # "late in the day": 80 % of the pace window has passed


def alert_id(kind: str, user_id: str, kpi: str, period: str) -> str:
    return hashlib.sha256(f"{kind}\x1f{user_id}\x1f{kpi}\x1f{period}".encode()).hexdigest()[:32]


def close_key(period_key: str, user_id: str) -> str:
    return f"c|{period_key}|{user_id}"


def risk_key(period_key: str, user_id: str) -> str:
    """Marker of the KPIs already warned about (``at_risk``) in an open period."""
    return f"a|{period_key}|{user_id}"


def _warning_tag(alert: Alert) -> str:
    """How a pace warning is remembered in its period's risk marker."""
    return alert.kpi if alert.kind == "at_risk" else f"streak:{alert.kpi}"


def rule_state_key(rule_id: str, user_id: str) -> str:
    """Per person state of a streak or personal-best rule."""
    return f"k||{rule_id}|{user_id}"


@dataclass(frozen=True)
class Alert:
    """A private ``crm.kpi.alerts`` message (never shown on walls)."""

    kind: str
    user_id: str
    team_id: str | None
    manager_id: str | None
    kpi: str
    period: Period
    period_key: str
    value: float
    target: float
    expected_by_now: float

    def record(self, emitted_at: float) -> tuple[bytes, bytes]:
        value = {
            "alert_id": alert_id(self.kind, self.user_id, self.kpi, self.period_key),
            "kind": self.kind,
            "user_id": self.user_id,
            "team_id": self.team_id,
            "manager_id": self.manager_id,
            "kpi": self.kpi,
            "period": {**self.period.as_dict(), "key": self.period_key},
            "value": self.value,
            "target": self.target,
            "expected_by_now": self.expected_by_now,
            "emitted_at": datetime.fromtimestamp(emitted_at, UTC).isoformat(),
        }
        return self.user_id.encode(), orjson.dumps(value)


@dataclass
class Review:
    """What one person's review produced: outputs first, then ``writes`` (state)."""

    alerts: list[Alert] = field(default_factory=list)
    awards: list[Award] = field(default_factory=list)
    writes: dict[str, dict[str, Any]] = field(default_factory=dict)


class PeriodCloser:
    """Decides closed periods, alerts and period-based awards from the KPI config."""

    def __init__(self, config: PulseConfig) -> None:
        self.config = config
        self.kpis = KpiFolder(config)
        self.calendar = Calendar(config.calendar_periods, config.week_start)
        self.kinds = tuple(k for k in CLOSABLE if k in config.periods)
        self.catch_up = config.catch_up
        self.working_days = {WEEKDAYS.index(day) for day in config.calendar.working_days}
        self.holidays = set(config.calendar.holidays)
        self.period_rules = [r for r in config.achievements
                             if isinstance(r, StreakRule | PersonalBestRule)]

    def targets(self, profile: dict[str, Any], kind: str) -> dict[str, float]:
        role = self.config.roles.get(profile.get("role") or "")
        if role is None:
            return {}
        return {kpi: per[kind] for kpi, per in role.targets.items() if kind in per}

    def _reviewed_kinds(self, profile: dict[str, Any]) -> list[str]:
        with_rules = {r.period for r in self.period_rules}
        return [k for k in self.kinds if k in with_rules or self.targets(profile, k)]

    # -- which periods -------------------------------------------------------------------

    def periods_to_close(self, profile: dict[str, Any], now: datetime) -> list[Period]:
        """Closed periods to review whose close is at most ``catch_up`` old, oldest first."""
        tz = zone(profile.get("timezone") or self.config.timezone)
        grace = self.config.grace
        closed = []
        for kind in self._reviewed_kinds(profile):
            period = self.calendar.period(kind, now - grace, tz)
            for _ in range(40):  # walk back over the periods closed within catch_up
                period = self.previous(period)
                if now - (period.end + grace) > self.catch_up:
                    break
                if kind != "day" or self._working(period):
                    closed.append(period)
        return sorted(closed, key=lambda p: p.end)

    def previous(self, period: Period) -> Period:
        tz = period.start.tzinfo
        return self.calendar.period(period.kind, period.start - timedelta(seconds=1), tz)

    def previous_working(self, period: Period) -> Period:
        """The period before, skipping non-working days (a weekend keeps a daily streak)."""
        earlier = self.previous(period)
        while earlier.kind == "day" and not self._working(earlier):
            earlier = self.previous(earlier)
        return earlier

    def _working(self, period: Period) -> bool:
        day = period.start.date()
        return day.weekday() in self.working_days and day not in self.holidays

    def open_periods(self, profile: dict[str, Any], now: datetime) -> list[tuple[Period, float]]:
        """Current periods with targets and the share of their pace window that has passed."""
        tz = zone(profile.get("timezone") or self.config.timezone)
        result = []
        for kind in self.kinds:
            if not self.targets(profile, kind):
                continue
            period = self.calendar.period(kind, now, tz)
            if kind == "day":
                if not self._working(period):
                    continue
                start, end = self.config.alerts.work_hours
                local = now.astimezone(tz)
                hours = local.hour + local.minute / 60
                share = min(1.0, max(0.0, (hours - start) / (end - start)))
            else:
                span = period.end.timestamp() - period.start.timestamp()
                share = (now.timestamp() - period.start.timestamp()) / span
            if share >= self.config.alerts.at_risk_after:
                result.append((period, share))
        return result

    # -- the review ----------------------------------------------------------------------

    def review(self, profile: dict[str, Any], partition: int, now: datetime,
               read: Reader) -> Review:
        """Everything due for one person at ``now``; ``read`` reads the KPI table."""
        review = Review()

        def get(key: str) -> dict[str, Any] | None:
            return review.writes.get(key) or read(key)

        user_id = profile["user_id"]
        for period in self.periods_to_close(profile, now):
            marker = close_key(period.bucket_keys[0], user_id)
            if get(marker) is not None:
                continue
            values = self._values(user_id, period, get)
            review.alerts.extend(self.below_target(profile, period, values))
            for rule in self.period_rules:
                if rule.period == period.kind:
                    self._period_rule(rule, profile, period, values, partition, get, review)
            review.writes[marker] = {"p": partition, "o": -1}
        for period, share in self.open_periods(profile, now):
            marker = risk_key(period.bucket_keys[0], user_id)
            warned = list((get(marker) or {}).get("kpis", []))
            values = self._values(user_id, period, get)
            risks = self.at_risk(profile, period, share, values, warned)
            risks += self.streaks_at_risk(profile, period, share, values, warned, get)
            if risks:
                review.alerts.extend(risks)
                kpis = [*warned, *(_warning_tag(alert) for alert in risks)]
                review.writes[marker] = {"p": partition, "o": -1, "kpis": kpis}
        return review

    def _values(self, user_id: str, period: Period, get: Reader) -> dict[str, float]:
        return self.kpis.read(get(user_key(key, user_id)) for key in period.bucket_keys)

    def _period_rule(self, rule: StreakRule | PersonalBestRule, profile: dict[str, Any],
                     period: Period, values: dict[str, float], partition: int, get: Reader,
                     review: Review) -> None:
        key = rule_state_key(rule.id, profile["user_id"])
        state = dict(get(key) or {"p": partition, "o": -1})
        value = values.get(rule.kpi, 0)
        period_key = period.bucket_keys[0]
        award = None
        if isinstance(rule, StreakRule):
            target = self.targets(profile, rule.period).get(rule.kpi)
            if not target:
                return
            if value >= target:
                chained = state.get("last") == self.previous_working(period).bucket_keys[0]
                state["count"] = state.get("count", 0) + 1 if chained else 1
                if state["count"] % rule.length == 0:
                    award = (state["count"], rule.length,
                             f"{rule.title}: target hit {state['count']} periods in a row")
            else:
                state["count"] = 0
            state["last"] = period_key
        else:
            best = state.get("best")
            if best is not None and value > best:
                award = (value, best, f"{rule.title}: {value:g}, the best so far ({best:g})")
            state["best"] = value if best is None else max(best, value)
        review.writes[key] = state
        if award is not None:
            got, goal, message = award
            review.awards.append(Award(
                rule=rule.id, kind=rule.kind, user_id=profile["user_id"],
                team_id=profile.get("team_id"), period=period_key, value=got, target=goal,
                occurred_at=period.end.isoformat(), title=rule.title, message=message))

    def at_risk(self, profile: dict[str, Any], period: Period, share: float,
                values: dict[str, float], warned: list[str]) -> list[Alert]:
        """Pace warnings for KPIs behind the linear pace by more than the margin."""
        margin = self.config.alerts.at_risk_margin
        alerts = []
        for kpi, target in self.targets(profile, period.kind).items():
            expected = round(target * share, 3)
            if kpi not in warned and values.get(kpi, 0) < expected * (1 - margin):
                alerts.append(self._alert("at_risk", profile, kpi, period, values, target,
                                          expected))
        return alerts

    def streaks_at_risk(self, profile: dict[str, Any], period: Period, share: float,
                        values: dict[str, float], warned: list[str],
                        get: Reader) -> list[Alert]:
        """Late in the period, a running streak whose target is not yet hit today."""
        if share < STREAK_WARNING_SHARE:
            return []
        alerts = []
        for rule in self.period_rules:
            if not isinstance(rule, StreakRule) or rule.period != period.kind:
                continue
            target = self.targets(profile, period.kind).get(rule.kpi)
            state = get(rule_state_key(rule.id, profile["user_id"])) or {}
            running = state.get("count", 0) > 0 and state.get("last") == (
                self.previous_working(period).bucket_keys[0])
            if (target and running and f"streak:{rule.kpi}" not in warned
                    and values.get(rule.kpi, 0) < target):
                alerts.append(self._alert("streak_at_risk", profile, rule.kpi, period, values,
                                          target, target))
        return alerts

    def below_target(self, profile: dict[str, Any], period: Period,
                     values: dict[str, float]) -> list[Alert]:
        return [self._alert("below_target", profile, kpi, period, values, target, target)
                for kpi, target in self.targets(profile, period.kind).items()
                if values.get(kpi, 0) < target]

    @staticmethod
    def _alert(kind: str, profile: dict[str, Any], kpi: str, period: Period,
               values: dict[str, float], target: float, expected: float) -> Alert:
        return Alert(kind=kind, user_id=profile["user_id"], team_id=profile.get("team_id"),
                     manager_id=profile.get("manager_id"), kpi=kpi, period=period,
                     period_key=period.bucket_keys[0], value=values.get(kpi, 0),
                     target=target, expected_by_now=expected)
