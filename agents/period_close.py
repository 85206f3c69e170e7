"""Period close (pure): which closed periods to check for a person, and the alerts to send.

A period is closed once its end plus the lateness grace has passed (no event can change
it any more). A timer asks :func:`periods_to_close` for every active roster member; each
closed period is checked once (a marker key in the table), so restarts catch up on periods
closed while no worker ran, and never alert twice with different ids.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from agents.periods import Calendar, Period, zone
from app.config import WEEKDAYS, PulseConfig

CLOSABLE = ("day", "week", "month", "quarter", "year")


def alert_id(kind: str, user_id: str, kpi: str, period: str) -> str:
    return hashlib.sha256(f"{kind}\x1f{user_id}\x1f{kpi}\x1f{period}".encode()).hexdigest()[:32]


def close_key(period_key: str, user_id: str) -> str:
    return f"c|{period_key}|{user_id}"


def risk_key(period_key: str, user_id: str) -> str:
    """Marker of the KPIs already warned about (``at_risk``) in an open period."""
    return f"a|{period_key}|{user_id}"


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


class PeriodCloser:
    """Decides closed periods and below-target alerts from the KPI config."""

    def __init__(self, config: PulseConfig, catch_up: timedelta = timedelta(days=2)) -> None:
        self.config = config
        self.calendar = Calendar(config.calendar_periods, config.week_start)
        self.kinds = tuple(k for k in CLOSABLE if k in config.periods)
        self.catch_up = catch_up
        self.working_days = {WEEKDAYS.index(day) for day in config.calendar.working_days}
        self.holidays = set(config.calendar.holidays)

    def targets(self, profile: dict[str, Any], kind: str) -> dict[str, float]:
        role = self.config.roles.get(profile.get("role") or "")
        if role is None:
            return {}
        return {kpi: per[kind] for kpi, per in role.targets.items() if kind in per}

    def periods_to_close(self, profile: dict[str, Any], now: datetime) -> list[Period]:
        """Closed periods with targets whose close is at most ``catch_up`` old, oldest first."""
        tz = zone(profile.get("timezone") or self.config.timezone)
        grace = self.config.grace
        closed = []
        for kind in self.kinds:
            if not self.targets(profile, kind):
                continue
            period = self.calendar.period(kind, now - grace, tz)
            for _ in range(40):  # walk back over the periods closed within catch_up
                period = self.calendar.period(kind, period.start - timedelta(seconds=1), tz)
                if now - (period.end + grace) > self.catch_up:
                    break
                if kind != "day" or self._working(period):
                    closed.append(period)
        return sorted(closed, key=lambda p: p.end)

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

    def at_risk(self, profile: dict[str, Any], period: Period, share: float,
                values: dict[str, float], warned: list[str]) -> list[Alert]:
        """Pace warnings for KPIs behind the linear pace by more than the margin."""
        margin = self.config.alerts.at_risk_margin
        alerts = []
        for kpi, target in self.targets(profile, period.kind).items():
            expected = round(target * share, 3)
            if kpi not in warned and values.get(kpi, 0) < expected * (1 - margin):
                alerts.append(Alert(
                    kind="at_risk", user_id=profile["user_id"], team_id=profile.get("team_id"),
                    manager_id=profile.get("manager_id"), kpi=kpi, period=period,
                    period_key=period.bucket_keys[0], value=values.get(kpi, 0), target=target,
                    expected_by_now=expected,
                ))
        return alerts

    def below_target(self, profile: dict[str, Any], period: Period,
                     values: dict[str, float]) -> list[Alert]:
        alerts = []
        for kpi, target in self.targets(profile, period.kind).items():
            if values.get(kpi, 0) < target:
                alerts.append(Alert(
                    kind="below_target", user_id=profile["user_id"],
                    team_id=profile.get("team_id"), manager_id=profile.get("manager_id"),
                    kpi=kpi, period=period, period_key=period.bucket_keys[0],
                    value=values.get(kpi, 0), target=target, expected_by_now=target,
                ))
        return alerts
