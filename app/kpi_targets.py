"""Targets for a person (from their role) and for a team (configured, or members' sum)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from app.config import PulseConfig


def user_targets(config: PulseConfig, profile: dict[str, Any] | None,
                 period: str) -> dict[str, float]:
    """``kpi -> target`` of the person's role for ``period`` (empty without a role)."""
    role = config.roles.get((profile or {}).get("role") or "")
    if role is None:
        return {}
    return {kpi: per[period] for kpi, per in role.targets.items() if period in per}


def team_targets(config: PulseConfig, team_id: str, members: Iterable[dict[str, Any]],
                 period: str) -> dict[str, float]:
    """The team's configured targets, else the sum of its active members' role targets."""
    team = config.teams.get(team_id)
    summed: dict[str, float] = {}
    for member in members:
        if member.get("active", True):
            for kpi, target in user_targets(config, member, period).items():
                summed[kpi] = summed.get(kpi, 0) + target
    if team is not None:
        summed.update({kpi: per[period] for kpi, per in team.targets.items() if period in per})
    return summed
