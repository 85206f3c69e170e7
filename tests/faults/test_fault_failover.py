"""Two workers in one group; one is SIGKILLed mid-stream and never comes back.

The survivor must take over the dead worker's partitions once its session times out
(``session_timeout_s=6``), replay what the dead one had not committed, and end exactly
right: KPI buckets and the dedup memory equal an independent count, the Redis leaderboard
and the team figures of the API say the same, and the threshold awards are exactly the
earned ones (a replay may repeat one with the same id and content).
"""

from __future__ import annotations

import random
import time

import pytest
from kafka_tools import all_committed, committed

from app.embedded import free_port, settings_with, wait_ready
from app.kafka import ensure_topics
from app.roster import Profile, write_profiles

pytestmark = pytest.mark.integration

ACHIEVEMENTS = """\
achievements:
  - {id: five_calls, kind: threshold, kpi: calls, period: day, value: 5, title: 5 calls}
"""
USERS = {f"agent-{i:02d}": f"team-{'xy'[i % 2]}" for i in range(16)}


def test_survivor_takes_over_a_killed_workers_partitions(make_settings, faults, wait,
                                                         tmp_path) -> None:
    rng = random.Random(4242)
    tz = faults.daytime_zone()
    today = f"d:{faults.today(tz).isoformat()}"
    first = make_settings(config=faults.config(tz, ACHIEVEMENTS), session_timeout_s=6)
    second = settings_with(first, web_port=free_port(), data_dir=tmp_path / "second")
    ensure_topics(first)
    write_profiles(first, [Profile(user_id=u, display_name=u.upper(), team_id=t)
                           for u, t in USERS.items()])
    truth = faults.Truth(tz)
    stream = faults.Stream(rng, USERS, tz, "failover")
    survivor = faults.start_worker(first, "survivor")
    victim = faults.start_worker(second, "victim")
    wait_ready(first, 120, process=survivor)
    wait_ready(second, 120, process=victim)
    faults.send(first, stream.wave(400), truth)
    wait("the first wave committed", 60, lambda: all_committed(first), process=survivor)
    wait("both workers ready after the rebalance", 60, lambda: all(
        faults.readyz(s)["http"] == 200 for s in (first, second)), process=victim)
    mine, theirs = faults.owned_partitions(first), faults.owned_partitions(second)
    assert mine and theirs and not mine & theirs and mine | theirs == set(range(4)), (
        mine, theirs)

    feeder = faults.Feeder(faults, first, stream, truth, rate=500).start()
    try:
        start = committed(first)
        wait("the victim committing fed records", 60, lambda: any(
            committed(first).get(p, 0) > start.get(p, 0) for p in theirs), process=victim)
        time.sleep(rng.uniform(0, 1.0))  # a random kill point, not a synchronisation
        victim.kill()
        killed_at = time.monotonic()
        takeover = wait("the survivor owning every partition", 90,
                        lambda: faults.owned_partitions(first) == set(range(4)),
                        process=survivor, interval=0.2)
        # keep feeding a little after the takeover: the survivor must go on counting
        fed_at_takeover = feeder.records
        wait("more records after the takeover", 60, lambda: feeder.records > fed_at_takeover
             + 1000)
    finally:
        fed = feeder.stop()
    wait("everything committed by the survivor", 120, lambda: all_committed(first),
         process=survivor, interval=0.2)
    print(f"takeover {takeover:.1f}s after the kill; all committed "
          f"{time.monotonic() - killed_at:.1f}s after it; {fed} records fed")

    state = faults.kpi_state(first)
    problems = faults.kpi_mismatches(state, truth, "calls", ["call"])
    problems += faults.kpi_mismatches(state, truth, "emails", ["email"])
    assert not problems, "\n".join(problems[:20])
    assert faults.remembered_ids(state) == truth.per_user()

    calls = truth.per_day(["call"])
    wanted = {u.upper(): calls[u, today] for u in USERS if calls[u, today]}

    def board() -> dict[str, float]:
        status, body = faults.get(first, "/api/leaderboard?kpi=calls&period=day&scope=all"
                                  "&limit=100")
        assert status == 200, body
        return {e["name"]: e["value"] for e in body["entries"] if e["value"]}

    wait("the Redis leaderboard equal to the count", 60, lambda: board() == wanted,
         process=survivor)
    for team in ("team-x", "team-y"):
        status, body = faults.get(first, f"/api/kpis/teams/{team}?period=day")
        assert status == 200 and body["kpis"]["calls"]["value"] == sum(
            n for u, n in wanted.items() if USERS[u.lower()] == team), body

    awarded = faults.same_content(faults.awards(first), "achievement_id")
    earned = {(user, day) for (user, day), n in calls.items() if n >= 5}
    assert {(a["user_id"], a["period"]) for a in awarded.values()} == earned
    assert all(a["value"] == 5 for a in awarded.values())
    faults.report("one of two workers SIGKILLed, survivor takes over "
                  f"(takeover {takeover:.0f}s)", 1, truth.deliveries,
                  faults.counted_events(state), truth.events)
