"""Achievement rules (pure): which KPI changes earn an award, and the award events.

Awards are detected on transitions while events are folded (a bucket crossing a threshold
or a target, a flag used for the first time). Replays never re-cross a transition whose
bucket already holds the event (offset watermarks), and a state lost in a crash re-crosses
it with the same deterministic ``achievement_id``, so consumers see one award, perhaps
delivered twice, never two different ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from agents.periods import KIND_OF_PREFIX
from app.config import FirstUseRule, PulseConfig, TargetHitRule, ThresholdRule

ALL_FLAGS = "*"
REVOKED = "achievement_revoked"


def achievement_id(rule: str, user_id: str, period: str) -> str:
    """Deterministic id: the same rule, person and period always give the same id."""
    return hashlib.sha256(f"{rule}\x1f{user_id}\x1f{period}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Award:
    """One achievement, as published on ``crm.achievements``."""

    rule: str
    kind: str
    user_id: str
    team_id: str | None
    period: str
    value: float
    target: float | None
    occurred_at: str
    title: str
    message: str

    @property
    def achievement_id(self) -> str:
        return achievement_id(self.rule, self.user_id, self.period)

    def record(self, emitted_at: float) -> tuple[bytes, bytes]:
        """``(key, value)`` for the topic; key = user id."""
        value = {
            "achievement_id": self.achievement_id,
            "rule": self.rule,
            "kind": self.kind,
            "user_id": self.user_id,
            "team_id": self.team_id,
            "period": self.period,
            "value": self.value,
            "target": self.target,
            "occurred_at": self.occurred_at,
            "emitted_at": datetime.fromtimestamp(emitted_at, UTC).isoformat(),
            "title": self.title,
            "message": self.message,
        }
        return self.user_id.encode(), orjson.dumps(value)


@dataclass(frozen=True)
class _Watch:
    rule: ThresholdRule | TargetHitRule
    fixed: float | None  # threshold value; None: the role's target


class AchievementRules:
    """The configured rules, indexed for the fold's hot path."""

    def __init__(self, config: PulseConfig) -> None:
        self.config = config
        self.first_use = [r for r in config.achievements if isinstance(r, FirstUseRule)]
        self.flags = frozenset(flag for rule in self.first_use for flag in rule.flags)
        self._watches: dict[str, list[_Watch]] = {}
        for rule in config.achievements:
            if isinstance(rule, ThresholdRule):
                self._watches.setdefault(rule.period, []).append(_Watch(rule, rule.value))
            elif isinstance(rule, TargetHitRule):
                self._watches.setdefault(rule.period, []).append(_Watch(rule, None))

    def watches(self, period_key: str, role: str | None) -> list[tuple[_Watch, float]]:
        """Rules that watch buckets of this key's kind, with the goal for this person."""
        watches = self._watches.get(KIND_OF_PREFIX[period_key.split(":", 1)[0]])
        if not watches:
            return []
        goals = []
        for watch in watches:
            goal = watch.fixed if watch.fixed is not None else self._target(watch.rule, role)
            if goal:
                goals.append((watch, goal))
        return goals

    def _target(self, rule: ThresholdRule | TargetHitRule, role: str | None) -> float | None:
        role_def = self.config.roles.get(role or "")
        if role_def is None:
            return None
        return role_def.targets.get(rule.kpi, {}).get(rule.period)

    @staticmethod
    def value(bucket: dict[str, Any] | None, kpi: str) -> float:
        if not bucket:
            return 0
        if kpi in bucket["s"]:
            return len(bucket["s"][kpi])
        return bucket["n"].get(kpi, 0)

    def crossed(self, goals: list[tuple[_Watch, float]], before: list[float],
                bucket: dict[str, Any], period_key: str, user_id: str, team_id: str | None,
                occurred_at: str) -> list[Award]:
        """Awards for goals this bucket reached just now (``before`` < goal <= now)."""
        awards = []
        for (watch, goal), old in zip(goals, before, strict=True):
            rule = watch.rule
            new = self.value(bucket, rule.kpi)
            if old < goal <= new:
                kpi_title = self.config.kpis[rule.kpi].title or rule.kpi
                awards.append(Award(
                    rule=rule.id, kind=rule.kind, user_id=user_id, team_id=team_id,
                    period=period_key, value=new, target=goal, occurred_at=occurred_at,
                    title=rule.title,
                    message=f"{rule.title}: {kpi_title} {new:g} of {goal:g} ({period_key})",
                ))
        return awards

    def uncrossed(self, goals: list[tuple[_Watch, float]], before: list[float],
                  bucket: dict[str, Any], period_key: str, user_id: str, team_id: str | None,
                  occurred_at: str) -> list[Award]:
        """Revocations (kind ``achievement_revoked``, the award's own id) of goals that a
        correction took this bucket back below (``now`` < goal <= ``before``)."""
        revoked = []
        for (watch, goal), old in zip(goals, before, strict=True):
            rule = watch.rule
            new = self.value(bucket, rule.kpi)
            if new < goal <= old:
                revoked.append(Award(
                    rule=rule.id, kind=REVOKED, user_id=user_id, team_id=team_id,
                    period=period_key, value=new, target=goal, occurred_at=occurred_at,
                    title=rule.title, message=f"Revoked: {rule.title} ({period_key}): a CRM "
                    f"record was corrected, {new:g} of {goal:g}"))
        return revoked

    def first_uses(self, collected: dict[str, list[str]], feature: str, user_id: str,
                   team_id: str | None, occurred_at: str) -> list[Award]:
        """Awards for a flag used for the first time; ``collected`` is updated in place."""
        awards = []
        for rule in self.first_use:
            if feature not in rule.flags:
                continue
            have = collected.setdefault(rule.id, [])
            if feature in have:
                continue
            have.append(feature)
            title = rule.title.format(flag=feature)
            awards.append(Award(
                rule=rule.id, kind=rule.kind, user_id=user_id, team_id=team_id,
                period=f"flag:{feature}", value=len(have), target=len(rule.flags),
                occurred_at=occurred_at, title=title,
                message=f"{title} ({len(have)} of {len(rule.flags)} CRM flags)",
            ))
            if rule.all_title and len(have) == len(rule.flags):
                awards.append(Award(
                    rule=rule.id, kind=rule.kind, user_id=user_id, team_id=team_id,
                    period=f"flag:{ALL_FLAGS}", value=len(have), target=len(rule.flags),
                    occurred_at=occurred_at, title=rule.all_title,
                    message=f"{rule.all_title}: every CRM function used",
                ))
        return awards


    def progress(self, role: str | None, current: dict[str, str],
                 value_of: Callable[[str, str], float],
                 collected: dict[str, list[str]]) -> list[dict[str, Any]]:
        """Each goal's state for a person: value, goal, what is left, reached or not.

        ``current`` maps a period kind to its current bucket key; ``value_of(key, kpi)``
        reads a KPI from a bucket; ``collected`` is the person's first-use state.
        """
        goals: list[dict[str, Any]] = []
        for rule in self.config.achievements:
            if isinstance(rule, FirstUseRule):
                have = collected.get(rule.id, [])
                goals.append({"rule": rule.id, "kind": rule.kind, "period": "lifetime",
                              "value": len(have), "goal": len(rule.flags),
                              "collected": have,
                              "missing": [f for f in rule.flags if f not in have]})
                continue
            if not isinstance(rule, ThresholdRule | TargetHitRule):
                continue  # streaks, bests and team goals are decided by the period timer
            key = current.get(rule.period)
            goal = rule.value if isinstance(rule, ThresholdRule) else self._target(rule, role)
            if key is None or not goal:
                continue
            value = value_of(key, rule.kpi)
            goals.append({"rule": rule.id, "kind": rule.kind, "title": rule.title,
                          "period": key, "kpi": rule.kpi, "value": value, "goal": goal,
                          "remaining": max(0, goal - value), "reached": value >= goal})
        return goals
