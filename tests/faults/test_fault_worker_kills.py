"""SIGKILL the worker at random points, five times in one run, and end exactly right.

The kills: (1) while it works through a backlog, a seeded number of changelog records after
the backlog began; (2) right after a changelog flush was seen (the batch's offsets are not
committed yet, so the restart replays a batch whose state is stored); (3) while a second
worker is joining the group (a rebalance), at a seeded moment after the join began;
(4)+(5) both workers, right after the first below-target alert of new roster members went
out (their close markers may or may not be stored). Then one worker finishes alone.

The outcome must not depend on where exactly the kills landed:

- the KPI buckets (users and teams, per day) equal an independent count of the input, and
  every counted event is remembered once in the dedup memory;
- the tables and the set of achievement ids equal those of an uninterrupted run over the
  same records (another group, started alongside), and both equal the awards the input
  must earn; a repeated award has the same id and content;
- every roster member with a role gets exactly the below-target alerts of the closed days
  (``catch_up: 3d``) in which the independent count is under target, with that value,
  including members without any activity and members added just before a kill.

The first worker runs with a period-close interval of an hour, so the closed days are first
reviewed after their history is committed: reviewing a day while its on-time events wait
in the backlog is a separate defect (``test_fault_close_backlog.py``), not what this test
is about.
"""

from __future__ import annotations

import random
import time
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import orjson
import pytest
from kafka_tools import all_committed

from agents.achievements import achievement_id
from app.embedded import free_port, settings_with, wait_ready
from app.kafka import ensure_topics
from app.roster import Profile, write_profiles

pytestmark = pytest.mark.integration

ACHIEVEMENTS = """\
achievements:
  - {id: five_calls, kind: threshold, kpi: calls, period: day, value: 5, title: 5 calls}
  - {id: first_use, kind: first_use, flags: [leads, quotes, reports],
     title: "First use: {flag}", all_title: All flags}
"""
FLAGS = ("leads", "quotes", "reports")
TARGET = 4  # calls a day for role rep (tests/faults/conftest.py CONFIG)
REPS = {f"rep-{i:02d}": f"team-{'ab'[i % 2]}" for i in range(20)}
IDLE = [f"idle-{i}" for i in range(4)]  # on the roster with a target, never active
NEWCOMERS = [f"new-{i}" for i in range(6)]  # added right before kill 4
CLOSED_DAYS = (1, 2, 3)  # days before today closed within catch_up 3d (daytime zone)


def history(rng: random.Random, tz: ZoneInfo, today: date, faults) -> list:
    """0..6 calls per rep on each closed day, arriving a minute after they happened (on
    time); one in ten delivered a second time a minute later."""
    deliveries = []
    for user, team in REPS.items():
        for back in CLOSED_DAYS:
            day = today - timedelta(days=back)
            for i in range(rng.randint(0, 6)):
                occurred = datetime(day.year, day.month, day.day, 8, tzinfo=tz) + timedelta(
                    seconds=rng.uniform(0, 10 * 3600))
                event = {"event_id": f"hist-{user}-{back}-{i}", "occurred_at":
                         occurred.isoformat(), "user_id": user, "team_id": team, "type": "call"}
                value = orjson.dumps(event)
                deliveries.append(faults.Delivery(user.encode(), value,
                                                  occurred + timedelta(minutes=1), [event]))
                if rng.random() < 0.1:
                    deliveries.append(faults.Delivery(user.encode(), value,
                                                      occurred + timedelta(minutes=2), [event]))
    return deliveries


def poison(now: datetime, faults) -> list:
    """Two records the worker must dead-letter: not JSON, and an event without a type."""
    broken = {"event_id": "broken-1", "occurred_at": now.isoformat(), "user_id": "rep-01"}
    return [faults.Delivery(b"rep-00", b"\x00 not json", now, None),
            faults.Delivery(b"rep-01", orjson.dumps(broken), now, None)]


@pytest.mark.parametrize("state_store", ["memory", "disk"])
def test_sigkill_at_random_points_is_exact(make_settings, faults, wait, tmp_path,
                                           state_store) -> None:
    rng = random.Random(20261123)
    tz = faults.daytime_zone()
    today = faults.today(tz)
    config = faults.config(tz, ACHIEVEMENTS)
    settings = make_settings(config=config, session_timeout_s=6, close_interval_s=1,
                             batch_max=1000, state_store=state_store)
    quiet = settings_with(settings, close_interval_s=3600)  # first worker: no period review
    second = settings_with(settings, web_port=free_port(), data_dir=tmp_path / "second")
    clean = settings_with(quiet, app_id=settings.app_id + "-clean", web_port=free_port(),
                          topic_prefix="clean." + settings.topic_prefix,
                          data_dir=tmp_path / "clean")
    truth = faults.Truth(tz, flags=FLAGS)
    stream = faults.Stream(rng, REPS, tz, "today")
    roster = [Profile(user_id=u, team_id=t, role="rep") for u, t in REPS.items()]
    roster += [Profile(user_id=u, team_id="team-a", role="rep") for u in IDLE]
    newcomers = [Profile(user_id=u, team_id="team-b", role="rep") for u in NEWCOMERS]
    ensure_topics(settings)
    ensure_topics(clean)
    write_profiles(settings, roster)
    write_profiles(clean, roster + newcomers)

    waves = [history(rng, tz, today, faults), stream.wave(2500), stream.wave(2500),
             stream.wave(2500), stream.wave(1500), stream.wave(300)]
    waves[1][100:100] = poison(datetime.now(tz), faults)
    everything = [delivery for wave in waves for delivery in wave]
    faults.send(clean, everything)  # the uninterrupted run reads the same records
    clean_worker = faults.start_worker(clean, "clean")

    kills: list[str] = []

    def killed(process, what: str) -> None:
        process.kill()
        lag = faults.lag(settings)
        kills.append(f"{what} (records not committed at the kill: {lag})")
        print(f"kill {len(kills)}: {kills[-1]}")

    started = time.monotonic()
    faults.send(settings, waves[0], truth)
    worker = faults.start_worker(quiet, "a")
    wait_ready(quiet, 120, process=worker)
    wait("history committed", 120, lambda: all_committed(settings), process=worker)

    # 1: during batch processing: some changelog records into a backlog of 2,500 records
    before = faults.changelog_end(settings)
    faults.send(settings, waves[1], truth)
    grown = rng.randint(1, 80)
    wait(f"{grown} changelog records of the backlog", 120,
         lambda: faults.changelog_end(settings) >= before + grown, process=worker,
         interval=0.02)
    time.sleep(rng.uniform(0, 0.25))  # a random kill point, not a synchronisation
    killed(worker, f"during a batch, >= {grown} changelog records into the backlog")

    # 2: right after a changelog flush (its batch not committed yet)
    worker = faults.start_worker(settings, "a")
    wait_ready(settings, 120, process=worker)
    before = faults.changelog_end(settings)
    faults.send(settings, waves[2], truth)
    wait("a changelog flush", 120, lambda: faults.changelog_end(settings) > before,
         process=worker, interval=0.01)
    killed(worker, "right after a changelog flush")

    # 3: while a second worker joins the group
    worker = faults.start_worker(settings, "a")
    wait_ready(settings, 120, process=worker)
    joiner = faults.start_worker(second, "b")
    wait("the second worker joining the group", 60,
         lambda: b"(Re-)joining group" in joiner.log_path.read_bytes(), process=joiner,
         interval=0.02)
    faults.send(settings, waves[3], truth)  # in flight while the group rebalances
    time.sleep(rng.uniform(0, 1.5))  # a random point of the rebalance
    view = faults.readyz(settings)
    killed(worker, f"while a second worker joins (first worker's /readyz: {view})")
    wait_ready(second, 120, process=joiner)  # the joiner takes over after the session timeout

    # 4 + 5: both workers, right after the first alert of members added to the roster
    worker = faults.start_worker(settings, "a")
    wait_ready(settings, 120, process=worker)
    wait_ready(second, 120, process=joiner)
    faults.send(settings, waves[4], truth)
    write_profiles(settings, newcomers)
    wait("a newcomer's below-target alert", 60,
         lambda: any(a["user_id"] in NEWCOMERS for a in faults.alerts(settings)),
         process=worker, interval=0.02)
    killed(worker, "right after a new member's below-target alert (worker a)")
    killed(joiner, "right after a new member's below-target alert (worker b)")

    # the last worker finishes alone
    worker = faults.start_worker(settings, "a")
    wait_ready(settings, 120, process=worker)
    faults.send(settings, waves[5], truth)
    wait("all input committed", 180, lambda: all_committed(settings), process=worker,
         interval=0.2)
    calls = truth.per_day(["call"])
    days = [f"d:{(today - timedelta(days=back)).isoformat()}" for back in CLOSED_DAYS]
    expected_alerts = {(user, day, calls[user, day]) for user in [*REPS, *IDLE, *NEWCOMERS]
                       for day in days if calls[user, day] < TARGET}
    wait("every expected below-target alert", 90, lambda: expected_alerts <= {
        (a["user_id"], a["period"]["key"], a["value"]) for a in faults.alerts(settings)},
        process=worker)
    print(f"killed run finished after {time.monotonic() - started:.0f}s")
    wait("the uninterrupted run committed", 120, lambda: all_committed(clean),
         process=clean_worker, interval=0.2)

    assert len(kills) == 5
    state, clean_state = faults.kpi_state(settings), faults.kpi_state(clean)
    for run, values in (("uninterrupted", clean_state), ("killed", state)):
        problems = [f"{run} run: {problem}" for kpi, kind in (
            ("calls", "call"), ("emails", "email"), ("uses", "feature_used"))
            for problem in faults.kpi_mismatches(values, truth, kpi, [kind])]
        assert not problems, "\n".join(problems[:20])
        assert faults.remembered_ids(values) == truth.per_user()  # each event taken once
    assert faults.contents(state) == faults.contents(clean_state)

    # Awards: each id once in content (a crash may repeat one), the same ids as the
    # uninterrupted run, and exactly the ones the input earns.
    awarded = faults.same_content(faults.awards(settings), "achievement_id")
    uninterrupted = faults.same_content(faults.awards(clean), "achievement_id")
    earned = {("five_calls", user, day, 5) for (user, day), n in calls.items() if n >= 5}
    for user, flags in truth.first_uses.items():
        earned |= {("first_use", user, f"flag:{flag}", i + 1) for i, flag in enumerate(flags)}
        if len(flags) == len(FLAGS):
            earned.add(("first_use", user, "flag:*", len(FLAGS)))
    assert {(a["rule"], a["user_id"], a["period"], a["value"]) for a in awarded.values()
            } == earned
    assert set(awarded) == set(uninterrupted) == {
        achievement_id(rule, user, period) for rule, user, period, _ in earned}

    # Below-target alerts: every one due, with the right value, each id one content.
    alerts = faults.same_content(faults.alerts(settings), "alert_id")
    assert {(a["user_id"], a["period"]["key"], a["value"]) for a in alerts.values()
            } == expected_alerts
    assert all(a["target"] == TARGET for a in alerts.values())

    letters = faults.dead_letters(settings)
    assert {letter["reason"] for letter in letters} == {"invalid_json", "schema:type"}
    faults.report("worker SIGKILL: mid-batch, after a changelog flush, during a rebalance, "
                  "after alerts (2 workers)", len(kills), truth.deliveries,
                  faults.counted_events(state), truth.events)
