"""The cross-worker view of teams and offices (pure), for team goals and ranks.

A team's figures are spread over every ``crm.activities`` partition: each partition's worker
holds the team's partial sums and its own users' buckets. After each batch, the ingest
forwards the buckets that group rules read (:meth:`GroupFeed.records`) to
``crm.kpi.groups``, keyed ``<scope>:<group_id>``, so one worker, the owner of that group's
partition, sees the whole group in its ``groups`` table and decides its goals and ranks.

Forwarded values are absolute and carry their source watermark (``o``), so
:func:`apply_updates` keeps the newest per key and a replay changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import orjson

from agents.periods import PREFIX_OF_KIND
from app.config import PulseConfig, RankRule, TeamGoalRule

Reader = Callable[[str], dict[str, Any] | None]


def group_id(scope: str, group: str) -> str:
    return f"{scope}:{group}"


def member_key(period_key: str, scope: str, group: str, user_id: str) -> str:
    """A member's bucket in the groups table (team partials keep ``team_key``)."""
    return f"r|{period_key}|{group_id(scope, group)}|{user_id}"


def _bucket_prefixes(kinds: Iterable[str]) -> set[str]:
    """Key prefixes of the buckets that make up periods of ``kinds`` (rolling: days)."""
    return {PREFIX_OF_KIND["day" if kind.startswith("rolling_") else kind] for kind in kinds}


class GroupFeed:
    """Which of a batch's KPI writes the group rules need, as ``crm.kpi.groups`` records."""

    def __init__(self, config: PulseConfig) -> None:
        goals = [r for r in config.achievements if isinstance(r, TeamGoalRule)]
        ranks = [r for r in config.achievements if isinstance(r, RankRule)]
        self.team_prefixes = _bucket_prefixes(r.period for r in goals)
        self.rank_prefixes = {
            scope: _bucket_prefixes(r.period for r in ranks if r.scope == scope)
            for scope in ("team", "office")
        }
        self.enabled = bool(goals or ranks)

    def records(self, writes: dict[str, dict[str, Any]],
                profile: Callable[[str], dict[str, Any] | None]) -> list[tuple[bytes, bytes]]:
        """One record per group touched: ``[[key, value], ...]`` of its changed buckets."""
        by_group: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for key, value in writes.items():
            kind, period_key, rest = key.split("|", 2)
            prefix = period_key.split(":", 1)[0]
            if kind == "t" and prefix in self.team_prefixes:
                team = rest.split("|", 1)[1]
                by_group.setdefault(group_id("team", team), []).append((key, value))
            elif kind == "u":
                member = profile(rest) or {}
                for scope, prefixes in self.rank_prefixes.items():
                    group = member.get(f"{scope}_id")
                    if group and prefix in prefixes:
                        by_group.setdefault(group_id(scope, group), []).append(
                            (member_key(period_key, scope, group, rest), value))
        return [(group.encode(), orjson.dumps(entries)) for group, entries in by_group.items()]


def apply_updates(values: Iterable[bytes], partition: int,
                  read: Reader) -> dict[str, dict[str, Any]]:
    """Groups-table writes for ``crm.kpi.groups`` values of one partition: newest wins.

    A key's watermark ``o`` is the source partition's offset, so an older or equal one is
    a replay (or a reordering) and is skipped.
    """
    writes: dict[str, dict[str, Any]] = {}
    for raw in values:
        for key, value in orjson.loads(raw):
            current = writes.get(key) or read(key)
            if current is None or value["o"] > current["o"]:
                writes[key] = {**value, "p": partition}
    return writes
