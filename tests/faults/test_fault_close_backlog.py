"""A worker that comes back after downtime must not close a day before it has read that
day's on-time events.

While no worker ran, yesterday's calls reached the broker on time (record timestamps of
yesterday) behind a backlog of today's records. The restarted worker's period-close timer
ticks every second while the ingest is still working through the backlog; reviews run as
of each partition's read time (agents/read_clock.py), so yesterday is not reviewed before
its calls are read: each rep reached the target yesterday, so no below-target alert for
yesterday may go out, and the ones that do go out (for the days before, without calls)
must carry the final values.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import datetime, timedelta
from urllib.parse import quote

import orjson
import pytest
from kafka_tools import all_committed

from app.bench.broker import produce
from app.embedded import wait_ready
from app.kafka import bootstrap_servers, ensure_topics
from app.roster import Profile, write_profiles

pytestmark = pytest.mark.integration
REPS = [f"closer-{i}" for i in range(10)]
TARGET = 4
BACKLOG = 100_000  # single-event records: several seconds of reading at ~10,000/s


def test_no_day_is_closed_while_its_events_wait_in_the_backlog(make_settings, faults,
                                                                wait) -> None:
    rng = random.Random(99)
    tz = faults.daytime_zone()
    today = faults.today(tz)
    settings = make_settings(config=faults.config(tz), session_timeout_s=6,
                             close_interval_s=1)
    ensure_topics(settings)
    write_profiles(settings, [Profile(user_id=u, team_id="t", role="rep") for u in REPS])
    now = datetime.now(tz)
    emails = []
    for i in range(BACKLOG):  # today's e-mails, read first (timestamps: now)
        user = REPS[i % len(REPS)]
        emails.append((user.encode(), orjson.dumps({
            "event_id": f"mail-{i}", "occurred_at": (now - timedelta(minutes=5)).isoformat(),
            "user_id": user, "team_id": "t", "type": "email"})))
    asyncio.run(produce(bootstrap_servers(settings.kafka), settings.topics.activities, emails,
                        settings.partitions, "backlog"))
    yesterday = today - timedelta(days=1)
    calls = []
    for user in REPS:  # then yesterday's calls, each on time: over the target
        for k in range(TARGET + 1):
            occurred = datetime(yesterday.year, yesterday.month, yesterday.day, 9,
                                tzinfo=tz) + timedelta(minutes=rng.randint(0, 600))
            event = {"event_id": f"call-{user}-{k}", "occurred_at": occurred.isoformat(),
                     "user_id": user, "team_id": "t", "type": "call"}
            calls.append(faults.Delivery(user.encode(), orjson.dumps(event),
                                         occurred + timedelta(minutes=1), [event]))
    truth = faults.Truth(tz)
    faults.send(settings, calls, truth)

    worker = faults.start_worker(settings, "worker")
    wait_ready(settings, 120, process=worker)
    ready_at = time.monotonic()
    time.sleep(2.0)  # sample the backlog at a fixed moment after the first review tick
    if faults.lag(settings) == 0:
        pytest.skip(f"{BACKLOG:,} records were read within 2 s of start, before the first "
                    "review could race them; raise BACKLOG")
    print(f"backlog left {time.monotonic() - ready_at:.1f}s after start: "
          f"{faults.lag(settings):,} records")
    wait("the backlog committed", 180, lambda: all_committed(settings), process=worker,
         interval=0.5)
    noon = datetime(yesterday.year, yesterday.month, yesterday.day, 12, tzinfo=tz)
    for user in REPS:  # yesterday's calls all counted (the tables are right)
        body = faults.get(settings, f"/api/kpis/users/{user}?period=day&at="
                          f"{quote(noon.isoformat())}")[1]
        assert body["kpis"]["calls"]["value"] == TARGET + 1, body
    days = [f"d:{(today - timedelta(days=back)).isoformat()}" for back in (1, 2, 3)]
    calls = truth.per_day(["call"])
    expected = {(u, day, calls[u, day]) for u in REPS for day in days if calls[u, day] < TARGET}
    wait("the closed days reviewed", 60, lambda: expected <= {
        (a["user_id"], a["period"]["key"], a["value"]) for a in faults.alerts(settings)},
        process=worker)
    alerts = faults.same_content(faults.alerts(settings), "alert_id")
    wrong = sorted((a["user_id"], a["period"]["key"], a["value"]) for a in alerts.values()
                   if (a["user_id"], a["period"]["key"], a["value"]) not in expected)
    assert not wrong, (f"{len(wrong)} below-target alert(s) for days whose calls met the "
                       f"target ({TARGET}) once the backlog was read: {wrong[:5]} ...")
