"""Team goals (pure): a team's total reaching its goal earns every active member an award.

Team totals are the sum of the team's partial buckets over all source partitions, so only a
worker that owns every partition can decide (one worker per group, the embedded default);
with several workers team goals wait for a cross-worker view of team totals. A marker per
rule, team and period makes an award happen once.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from agents.achievements import Award
from agents.ingest import team_key
from agents.kpis import KpiFolder
from agents.period_close import Review
from agents.periods import Calendar, zone
from app.config import PulseConfig, TeamGoalRule
from app.kpi_targets import team_targets

Reader = Callable[[str], dict[str, Any] | None]


def goal_key(period_key: str, rule_id: str, team_id: str) -> str:
    return f"g|{period_key}|{rule_id}|{team_id}"


class TeamGoals:
    def __init__(self, config: PulseConfig, partitions: int) -> None:
        self.config = config
        self.partitions = partitions
        self.kpis = KpiFolder(config)
        self.calendar = Calendar(config.calendar_periods, config.week_start)
        self.rules = [r for r in config.achievements if isinstance(r, TeamGoalRule)]

    def review(self, team_id: str, members: list[dict[str, Any]], partition: int,
               now: datetime, read: Reader) -> Review:
        """Awards for goals reached in the current period (or the one just closed)."""
        review = Review()
        team = self.config.teams.get(team_id)
        tz = zone((team.timezone if team else None) or self.config.team_timezone)
        active = [m for m in members if m.get("active", True)]
        for rule in self.rules:
            current = self.calendar.period(rule.period, now, tz)
            just_closed = self.calendar.period(rule.period, now - self.config.grace, tz)
            same = just_closed.bucket_keys == current.bucket_keys
            for period in [current] if same else [just_closed, current]:
                marker = goal_key(period.bucket_keys[0], rule.id, team_id)
                if read(marker) is not None:
                    continue
                goal = rule.value or team_targets(self.config, team_id, active,
                                                  rule.period).get(rule.kpi)
                if not goal:
                    continue
                total = self.kpis.read(
                    read(team_key(key, p, team_id))
                    for key in period.bucket_keys for p in range(self.partitions))[rule.kpi]
                if total < goal:
                    continue
                kpi_title = self.config.kpis[rule.kpi].title or rule.kpi
                for member in active:
                    review.awards.append(Award(
                        rule=rule.id, kind=rule.kind, user_id=member["user_id"],
                        team_id=team_id, period=period.bucket_keys[0], value=total,
                        target=goal, occurred_at=now.isoformat(), title=rule.title,
                        message=f"{rule.title}: team {kpi_title} {total:g} of {goal:g}"))
                review.writes[marker] = {"p": partition, "o": -1}
        return review
