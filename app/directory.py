"""Who belongs where: teams, offices and their active members, from the config and roster."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from app.config import PulseConfig


@dataclass
class Directory:
    """A snapshot of the groups; build one per request or scrape with :meth:`build`."""

    members: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """team id -> its active roster members."""
    office_of: dict[str, str] = field(default_factory=dict)
    """team id -> office id (the config's, else the first member's)."""

    @classmethod
    def build(cls, config: PulseConfig, profiles: Iterable[dict[str, Any]]) -> Directory:
        directory = cls(members={team_id: [] for team_id in config.teams})
        for team_id, team in config.teams.items():
            if team.office_id:
                directory.office_of[team_id] = team.office_id
        for profile in profiles:
            team_id = profile.get("team_id")
            if not team_id or not profile.get("active", True):
                continue
            directory.members.setdefault(team_id, []).append(profile)
            if profile.get("office_id"):
                directory.office_of.setdefault(team_id, profile["office_id"])
        return directory

    @property
    def teams(self) -> list[str]:
        return sorted(self.members)

    def offices(self) -> dict[str, list[str]]:
        """office id -> its team ids."""
        result: dict[str, list[str]] = {}
        for team_id in self.teams:
            if team_id in self.office_of:
                result.setdefault(self.office_of[team_id], []).append(team_id)
        return result

    def office_members(self, office_id: str) -> list[dict[str, Any]]:
        return [m for team in self.offices().get(office_id, []) for m in self.members[team]]


def pseudonym(key: bytes, user_id: str) -> str:
    """A stable, non-reversible stand-in for ``user_id`` (``p-`` + 10 hex digits)."""
    return "p-" + hmac.new(key, user_id.encode(), hashlib.sha256).hexdigest()[:10]
