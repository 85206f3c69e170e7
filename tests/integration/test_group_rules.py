"""Team goals across two workers in one group: a team's members live on partitions of both,
and the goal is reached only by adding both workers' figures (``crm.kpi.groups``)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from factories import event
from kafka_tools import produce, read_topic

from agents.ingest import partition_of
from app.embedded import free_port, settings_with, wait_until
from app.roster import Profile, write_profiles

pytestmark = pytest.mark.integration
PARTITIONS = 4
CONFIG = """\
timezone: UTC
team_timezone: UTC
periods: [day, week]
kpis:
  meetings: {count: [meeting]}
achievements:
  - {id: team_week, kind: team_goal, kpi: meetings, period: week, value: 8,
     title: Team meeting goal}
"""


def one_user_per_partition() -> list[str]:
    """Four users, one on each partition, so both workers hold some of the team."""
    users: dict[int, str] = {}
    for i in range(100):
        users.setdefault(partition_of(f"rep-{i}".encode(), PARTITIONS), f"rep-{i}")
    return [users[p] for p in range(PARTITIONS)]


def test_team_goal_adds_up_both_workers_and_awards_each_member_once(
        make_settings, worker_factory, tmp_path: Path) -> None:
    config = tmp_path / "pulse.yaml"
    config.write_text(CONFIG)
    first = make_settings(config=config, partitions=PARTITIONS, close_interval_s=1,
                          session_timeout_s=6)
    second = settings_with(first, web_port=free_port(), data_dir=tmp_path / "second")
    members = one_user_per_partition()
    write_profiles(first, [Profile(user_id=u, team_id="north") for u in members])
    worker_factory(first)
    worker_factory(second)

    def awards() -> list[dict]:
        found = [orjson.loads(r.value) for r in read_topic(first, first.topics.achievements)]
        return [award for award in found if award["rule"] == "team_week"]

    now = datetime.now(UTC).isoformat()
    meetings = [(u.encode(), orjson.dumps(event(u, "meeting", occurred_at=now)))
                for u in members * 2]  # 8, two on each partition: 4 on each worker
    produce(first, meetings)
    wait_until(lambda: {a["user_id"] for a in awards()} == set(members), 60,
               "the team award for every member")
    found = awards()
    assert len({a["achievement_id"] for a in found}) == len(found) == len(members)
    assert {(a["value"], a["target"]) for a in found} == {(8, 8)}
