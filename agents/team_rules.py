"""Rules over groups of people (pure): team goals, ranks and data-quality heroes.

- team goal: a team's total reaching its goal earns every active member an award;
- rank / data_quality_hero: at period close, the top people of each team or office.

They compare or add up people of every partition, so they read the ``groups`` table that
:mod:`agents.group_view` fills: the worker owning a group's partition holds all of it. A
marker per rule, group and period makes each happen once.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from agents.achievements import Award
from agents.group_view import member_key
from agents.ingest import team_key
from agents.kpis import KpiFolder
from agents.period_close import Review
from agents.periods import Calendar, zone
from app.config import PulseConfig, RankRule, TeamGoalRule
from app.kpi_targets import team_targets

Reader = Callable[[str], dict[str, Any] | None]


def goal_key(period_key: str, rule_id: str, group_id: str) -> str:
    return f"g|{period_key}|{rule_id}|{group_id}"


class TeamRules:
    def __init__(self, config: PulseConfig, partitions: int) -> None:
        self.config = config
        self.partitions = partitions
        self.kpis = KpiFolder(config)
        self.calendar = Calendar(config.calendar_periods, config.week_start)
        self.goals = [r for r in config.achievements if isinstance(r, TeamGoalRule)]
        self.ranks = [r for r in config.achievements if isinstance(r, RankRule)]
        self.rules = [*self.goals, *self.ranks]

    def review(self, team_id: str, members: list[dict[str, Any]], partition: int,
               now: datetime, read: Reader) -> Review:
        """Team goals reached in the current period (or the one just closed), team ranks."""
        review = self.rank(team_id, "team", members, partition, now, read)
        team = self.config.teams.get(team_id)
        tz = zone((team.timezone if team else None) or self.config.team_timezone)
        active = [m for m in members if m.get("active", True)]
        for rule in self.goals:
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


    def rank(self, group_id: str, scope: str, members: list[dict[str, Any]], partition: int,
             now: datetime, read: Reader, review: Review | None = None) -> Review:
        """Awards for the top people of the group in the periods closed since the last tick.

        The group's latest closed period (end plus grace passed, in the group's timezone)
        is ranked once; members' buckets of the same key (their local period) are compared.
        """
        review = review or Review()
        team = self.config.teams.get(group_id) if scope == "team" else None
        tz = zone((team.timezone if team else None) or self.config.team_timezone)
        ranked = [m for m in members if m.get("active", True)
                  and not m.get("leaderboard_opt_out", False)]
        for rule in self.ranks:
            if rule.scope != scope:
                continue
            open_period = self.calendar.period(rule.period, now - self.config.grace, tz)
            closed = self.calendar.period(
                rule.period, open_period.start - timedelta(seconds=1), tz)
            marker = goal_key(closed.bucket_keys[0], rule.id, f"{scope}:{group_id}")
            if read(marker) is not None:
                continue
            scores = []
            for member in ranked:
                value = self.kpis.read(
                    read(member_key(k, scope, group_id, member["user_id"]))
                    for k in closed.bucket_keys)[rule.kpi]
                if value > 0:
                    scores.append((value, member["user_id"]))
            scores.sort(key=lambda score: (-score[0], score[1]))
            for place, (value, user_id) in enumerate(scores[:rule.top], start=1):
                review.awards.append(Award(
                    rule=rule.id, kind=rule.kind, user_id=user_id,
                    team_id=group_id if scope == "team" else None,
                    period=closed.bucket_keys[0], value=value, target=place,
                    occurred_at=closed.end.isoformat(), title=rule.title,
                    message=f"{rule.title}: #{place} in {scope} {group_id} ({value:g})"))
            review.writes[marker] = {"p": partition, "o": -1}
        return review
