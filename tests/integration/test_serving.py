"""The Redis serving layer on a real worker and a real redis-server: leaderboards with the
privacy rules, the achievements feed, a Redis outage, and team figures across workers."""

from __future__ import annotations

import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from factories import event
from kafka_tools import produce

from app.embedded import free_port, settings_with, start_redis, wait_until
from app.roster import Profile, write_profiles
from app.settings import Settings

pytestmark = pytest.mark.integration
CONFIG = """\
timezone: UTC
team_timezone: UTC
periods: [day, week]
kpis:
  calls: {{title: Calls, count: [call]}}
achievements:
  - {{id: three_calls, kind: threshold, kpi: calls, period: day, value: 3, title: 3 calls}}
privacy: {{names: {names}, min_group_size: 3}}
"""


def get(settings: Settings, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(settings.web_url + path, timeout=15) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())


def calls(settings: Settings, counts: dict[str, int]) -> None:
    now = datetime.now(UTC).isoformat()
    produce(settings, [(user.encode(), orjson.dumps(event(user, occurred_at=now)))
                       for user, count in counts.items() for _ in range(count)])


def board(settings: Settings, scope: str = "team:north") -> list[tuple[str, float]]:
    status, body = get(settings, f"/api/leaderboard?kpi=calls&period=day&scope={scope}")
    return [(e["name"], e["value"]) for e in body["entries"]] if status == 200 else []


def office(settings: Settings, names: str, tmp_path: Path) -> Settings:
    config = tmp_path / f"pulse-{names}.yaml"
    config.write_text(CONFIG.format(names=names))
    return settings_with(settings, config=config)


ROSTER = [
    Profile(user_id="ana", display_name="Ana", team_id="north"),
    Profile(user_id="ben", display_name="Ben", team_id="north"),
    Profile(user_id="cem", display_name="Cem", team_id="north", leaderboard_opt_out=True),
    Profile(user_id="dan", display_name="Dan", team_id="north", active=False),
    Profile(user_id="eve", display_name="Eve", team_id="south"),
]


def test_boards_feed_privacy_and_a_redis_outage(make_settings, worker_factory,
                                                tmp_path: Path) -> None:
    redis = start_redis(tmp_path / "redis")
    settings = office(make_settings(redis=redis.url, session_timeout_s=6), "names", tmp_path)
    try:
        write_profiles(settings, ROSTER)
        worker_factory(settings)
        calls(settings, {"ana": 2, "ben": 4, "cem": 9, "dan": 7, "eve": 1})
        wait_until(lambda: board(settings) == [("Ben", 4), ("Ana", 2)], 30,
                   "north's board without the opted-out and the inactive")
        status, body = get(settings, "/api/leaderboard?kpi=calls&period=day&scope=team:south")
        assert (status, body["error"]) == (403, "group_too_small")
        assert get(settings, "/api/leaderboard?kpi=calls&scope=team:nowhere")[0] == 404
        assert get(settings, "/api/leaderboard?kpi=nope")[1]["error"] == "bad_kpi"

        def feed() -> list[dict[str, Any]]:
            return get(settings, "/api/achievements?limit=50")[1]["achievements"]

        wait_until(lambda: len(feed()) == 3, 30, "three '3 calls' awards in the feed")
        shown = {(a["name"], a["rule"]) for a in feed()}
        assert shown == {("Ben", "three_calls"), (None, "three_calls")} and len(feed()) == 3
        assert all("user_id" not in a for a in feed() if a["name"] is None)  # cem, dan hidden

        redis.stop()  # processing goes on; the serving layer waits
        calls(settings, {"ana": 5})
        wait_until(lambda: get(settings, "/api/kpis/users/ana?period=day")[1]["kpis"]["calls"][
            "value"] == 7, 30, "ana's calls counted while Redis is down")
        wait_until(lambda: get(settings, "/readyz")[1]["status"] == "degraded", 30,
                   "/readyz degraded")
        assert get(settings, "/readyz")[0] == 200
        assert get(settings, "/api/leaderboard?kpi=calls&scope=team:north")[0] == 503

        redis = start_redis(tmp_path / "redis-again", port=redis.port)  # empty again
        wait_until(lambda: board(settings) == [("Ana", 7), ("Ben", 4)], 60,
                   "the board rebuilt after Redis came back")
        assert get(settings, "/readyz")[1]["status"] == "ready"
    finally:
        redis.stop()


def test_pseudonyms_and_team_figures_across_two_workers(make_settings, worker_factory,
                                                        tmp_path: Path) -> None:
    first = office(make_settings(session_timeout_s=6), "pseudonyms", tmp_path)
    second = settings_with(first, web_port=free_port(), data_dir=tmp_path / "second")
    members = [f"rep-{i}" for i in range(8)]
    write_profiles(first, [Profile(user_id=u, display_name=u.upper(), team_id="north")
                           for u in members])
    worker_factory(first)
    worker_factory(second)
    calls(first, {user: i + 1 for i, user in enumerate(members)})  # 36 calls

    def team_calls(settings: Settings) -> tuple[Any, Any]:
        body = get(settings, "/api/kpis/teams/north?period=day")[1]
        return body["kpis"]["calls"]["value"], body["complete"]

    for settings in (first, second):  # each owns half the partitions; Redis has them all
        wait_until(lambda s=settings: team_calls(s) == (36, True), 60, "the whole team")
    names = [name for name, _ in board(first)]
    assert len(names) == 8 and all(name.startswith("p-") for name in names)
    assert not any(name.upper() in members or name in members for name in names)
