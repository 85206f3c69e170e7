"""Redis (the serving layer) stops and comes back empty, as a non-persistent Redis does.

Kafka and the tables are the state of record; Redis is a copy for boards and walls. While
it is away processing goes on and ``/readyz`` answers 200 with ``"status": "degraded"``;
when it is back the worker rewrites its partitions, so the boards equal the independent
count again and the awards made during the outage reach the feed.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from kafka_tools import all_committed

from app.embedded import start_redis, wait_ready
from app.kafka import ensure_topics
from app.roster import Profile, write_profiles

pytestmark = pytest.mark.integration

ACHIEVEMENTS = """\
achievements:
  - {id: sixty_calls, kind: threshold, kpi: calls, period: day, value: 60, title: 60 calls}
"""
USERS = {f"seller-{i:02d}": f"team-{'pq'[i % 2]}" for i in range(12)}


def boards_match(faults, settings, truth, day: str) -> bool:
    """The calls boards (all, and each team) from Redis equal the independent count."""
    calls = truth.per_day(["call"])
    for scope, members in [("all", list(USERS)), *(
            (f"team:{team}", [u for u, t in USERS.items() if t == team])
            for team in sorted(set(USERS.values())))]:
        status, body = faults.get(settings, f"/api/leaderboard?kpi=calls&period=day"
                                            f"&scope={scope}&limit=100")
        if status != 200:
            return False
        shown = {e["name"]: e["value"] for e in body["entries"]}
        if shown != {u.upper(): calls[u, day] for u in members if calls[u, day]}:
            return False
    return True


def user_figures_match(faults, settings, truth, day: str) -> bool:
    """Every user's calls and e-mails from the worker's tables (API) equal the count."""
    calls, emails = truth.per_day(["call"]), truth.per_day(["email"])
    for user in USERS:
        status, body = faults.get(settings, f"/api/kpis/users/{user}?period=day")
        if status != 200:
            return False
        values = {name: kpi["value"] for name, kpi in body["kpis"].items()}
        if (values["calls"], values["emails"]) != (calls[user, day], emails[user, day]):
            return False
    return True


def resynced(worker) -> bool:
    """The worker has written its partitions to Redis in full at least once (after start)."""
    return b"staged for Redis" in worker.log_path.read_bytes()


def feed(faults, settings) -> set[str]:
    """The achievement ids the feed shows (from Redis)."""
    status, body = faults.get(settings, "/api/achievements?limit=100")
    assert status == 200, body
    return {a["achievement_id"] for a in body["achievements"]}


def office(faults, make_settings, redis, rng) -> tuple:
    tz = faults.daytime_zone()
    settings = make_settings(redis=redis.url, config=faults.config(tz, ACHIEVEMENTS),
                             session_timeout_s=6)
    ensure_topics(settings)
    write_profiles(settings, [Profile(user_id=u, display_name=u.upper(), team_id=t)
                              for u, t in USERS.items()])
    day = f"d:{faults.today(tz).isoformat()}"
    return settings, faults.Truth(tz), faults.Stream(rng, USERS, tz, "redis"), day


def test_redis_outage_under_load_degrades_and_catches_up(make_settings, faults, wait,
                                                         tmp_path: Path) -> None:
    rng = random.Random(6379)
    redis = start_redis(tmp_path / "redis")
    try:
        settings, truth, stream, day = office(faults, make_settings, redis, rng)
        worker = faults.start_worker(settings, "worker")
        wait_ready(settings, 120, process=worker)
        faults.send(settings, stream.wave(600), truth)
        wait("the boards before the outage", 60,
             lambda: boards_match(faults, settings, truth, day), process=worker)
        wait("the first full write to Redis", 30, lambda: resynced(worker), process=worker)
        awarded_before = {a["achievement_id"] for a in faults.awards(settings)}

        redis.stop()  # SIGTERM; no persistence: it comes back empty
        feeder = faults.Feeder(faults, settings, stream, truth, rate=400).start()
        try:
            wait("/readyz degraded", 30, lambda: faults.readyz(settings)["status"] ==
                 "degraded", process=worker)
            wait("records fed during the outage", 60, lambda: feeder.records >= 2000)
        finally:
            fed = feeder.stop()
        assert faults.readyz(settings)["http"] == 200  # degraded is still ready
        wait("processing going on without Redis", 60,
             lambda: user_figures_match(faults, settings, truth, day), process=worker)
        status, body = faults.get(settings, "/api/leaderboard?kpi=calls&scope=all")
        assert (status, body["error"]) == (503, "serving_unavailable")
        assert faults.readyz(settings)["status"] == "degraded"
        awarded_during = {a["achievement_id"] for a in faults.awards(settings)} - awarded_before
        assert awarded_during, "the outage's input earns awards"

        redis = start_redis(tmp_path / "redis-again", port=redis.port)
        faults.send(settings, stream.wave(300), truth)
        wait("the boards rebuilt after Redis came back", 60,
             lambda: boards_match(faults, settings, truth, day), process=worker)
        wait("/readyz ready again", 30, lambda: faults.readyz(settings)["status"] == "ready",
             process=worker)
        wait("the awards before and during the outage in the feed", 30,
             lambda: awarded_before | awarded_during <= feed(faults, settings))
        wait("every record committed", 60, lambda: all_committed(settings), process=worker)
        state = faults.kpi_state(settings)
        problems = faults.kpi_mismatches(state, truth, "calls", ["call"])
        assert not problems, "\n".join(problems[:20])
        faults.report(f"Redis stopped under load ({fed} records during the outage), "
                      "restarted empty", 1, truth.deliveries, faults.counted_events(state),
                      truth.events)
    finally:
        redis.stop()


def test_redis_restarted_while_quiet_is_noticed_and_rebuilt(make_settings, faults, wait,
                                                            tmp_path: Path) -> None:
    """Redis restarts (empty) while no events arrive: the worker must notice it and
    rewrite the boards, not wait for the next event of each person."""
    rng = random.Random(16379)
    redis = start_redis(tmp_path / "redis")
    try:
        settings, truth, stream, day = office(faults, make_settings, redis, rng)
        worker = faults.start_worker(settings, "worker")
        wait_ready(settings, 120, process=worker)
        faults.send(settings, stream.wave(1500), truth)  # ~80 calls each: sixty_calls awards
        wait("the boards before the restart", 60,
             lambda: boards_match(faults, settings, truth, day), process=worker)
        wait("the first full write to Redis", 30, lambda: resynced(worker), process=worker)
        awarded = {a["achievement_id"] for a in faults.awards(settings)}
        assert awarded, "the input earns awards"
        wait("the awards in the feed", 30, lambda: awarded <= feed(faults, settings))
        redis.stop()
        noticed = rebuilt = True
        try:
            wait("/readyz degraded while Redis is away", 10, lambda: faults.readyz(settings)[
                "status"] == "degraded", process=worker)
        except TimeoutError:
            noticed = False
        redis = start_redis(tmp_path / "redis-again", port=redis.port)
        try:
            wait("the boards rebuilt after a quiet restart", 15,
                 lambda: boards_match(faults, settings, truth, day), process=worker)
        except TimeoutError:
            rebuilt = False
        shown = faults.get(settings, "/api/leaderboard?kpi=calls&period=day&scope=all"
                                     "&limit=100")[1]
        wait("the awards back in the feed", 15, lambda: awarded <= feed(faults, settings))
        assert (noticed, rebuilt) == (True, True), (
            f"Redis away without traffic: /readyz degraded within 10s: {noticed}; boards "
            f"rebuilt within 15s of its return: {rebuilt} (board now: {shown})")
        faults.report("Redis restarted empty while no events arrive", 1, truth.deliveries,
                      faults.counted_events(faults.kpi_state(settings)), truth.events)
    finally:
        redis.stop()
