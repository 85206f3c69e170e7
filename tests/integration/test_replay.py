"""``crm-pulse replay --from`` on the real broker and redis-server: a worker has counted four
days of calls; the replay rebuilds the days from ``--from`` on into a new generation (KPI
changelog and Redis boards, equal to an independent count), leaves the current generation
alone, stops once caught up, and a worker started as it says carries on from there.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import orjson
import pytest
import redis
from factories import event
from kafka_tools import all_committed, changelog_state

from app.cli import main
from app.embedded import free_port, settings_with, wait_until
from app.kafka import ensure_topics, make_producer
from app.replay import ReplayError, check_retention
from app.replay_offsets import Span
from app.roster import Profile, write_profiles
from app.settings import Settings

pytestmark = pytest.mark.integration
CONFIG = """\
timezone: UTC
team_timezone: UTC
periods: [day]
kpis:
  calls: {title: Calls, count: [call]}
  emails: {title: E-mails, count: [email]}
"""
TEAMS = {f"rep-{i}": "north" if i % 2 else "south" for i in range(6)}
DAYS_BACK = (4, 3, 2, 1)
FROM_BACK = 2  # --from: midnight UTC two days ago


def produce_history(settings: Settings, today: date) -> Counter[tuple[str, str, str]]:
    """Calls and e-mails over DAYS_BACK, each record stamped a minute after it happened
    and sent in time order; returns the count per (user, day, type)."""
    rng = random.Random(5)
    events = []
    for back in DAYS_BACK:
        day = today - timedelta(days=back)
        for user in TEAMS:
            for _ in range(rng.randint(1, 6)):
                moment = datetime.combine(day, time(8), UTC) + timedelta(
                    minutes=rng.randint(0, 600), seconds=rng.randint(0, 59))
                events.append(event(user, type=rng.choice(["call", "call", "email"]),
                                    occurred_at=moment.isoformat()))
    events.sort(key=lambda e: e["occurred_at"])
    producer = make_producer(settings)
    try:
        for e in events:
            arrival = datetime.fromisoformat(e["occurred_at"]) + timedelta(minutes=1)
            producer.send(settings.topics.activities, key=e["user_id"].encode(),
                          value=orjson.dumps(e), timestamp_ms=int(arrival.timestamp() * 1000))
        producer.flush(30)
    finally:
        producer.close()
    return Counter((e["user_id"], e["occurred_at"][:10], e["type"]) for e in events)


def replay(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
           settings: Settings, *args: str) -> tuple[int, str, str]:
    """Run ``crm-pulse replay`` with ``settings`` as its environment: (exit code, out, err)."""
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    code = main(["replay", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def buckets(settings: Settings) -> dict[str, dict[str, float]]:
    """The KPI numbers of every user and team bucket in the changelog of ``settings``."""
    return {key: value["n"] for key, value in changelog_state(settings).items()
            if key.startswith(("u|", "t|"))}


def board(url: str, settings: Settings, day: str) -> dict[str, float]:
    client = redis.Redis.from_url(url)
    try:
        rows = client.zrange(f"{settings.topic_prefix}cp:lb:calls:d:{day}:all", 0, -1,
                             withscores=True)
    finally:
        client.close()
    return {member.decode(): score for member, score in rows}


@pytest.mark.timeout(240)
def test_replay_rebuilds_state_and_boards_from_a_date(
        make_settings, worker_factory, monkeypatch, capsys, tmp_path: Path) -> None:
    config = tmp_path / "pulse.yaml"
    config.write_text(CONFIG)
    settings = make_settings(config=config, session_timeout_s=6)
    ensure_topics(settings)
    write_profiles(settings, [Profile(user_id=u, team_id=t) for u, t in TEAMS.items()])
    today = datetime.now(UTC).date()
    counts = produce_history(settings, today)
    worker_factory(settings)  # the current generation; it keeps running during the replay
    wait_until(lambda: all_committed(settings), 60, "the current generation caught up")

    since = today - timedelta(days=FROM_BACK)
    code, out, err = replay(monkeypatch, capsys, settings, "--from", since.isoformat())
    assert code == 0, out + err
    assert re.search(r"replay: [\d,]+/[\d,]+ records \(100\.0 %\)", out), out
    new_id, new_redis = re.search(
        r"start them with CRM_PULSE_APP_ID=(\S+) CRM_PULSE_REDIS=(\S+) ", out).groups()
    assert new_id.startswith(f"{settings.app_id}-r")
    server, database = new_redis.rsplit("/", 1)
    assert settings.redis == f"{server}/0" and database != "0"  # another database
    rebuilt = settings_with(settings, app_id=new_id, redis=new_redis, web_port=free_port(),
                            data_dir=tmp_path / "rebuilt")

    after = sorted({(today - timedelta(days=b)).isoformat() for b in DAYS_BACK
                    if b <= FROM_BACK})
    before = sorted({(today - timedelta(days=b)).isoformat() for b in DAYS_BACK} - set(after))
    expected = {}
    for day in after:
        for user in TEAMS:
            numbers = {kpi: counts[user, day, kind] for kpi, kind in
                       (("calls", "call"), ("emails", "email")) if counts[user, day, kind]}
            expected[f"u|d:{day}|{user}"] = numbers
    state = buckets(rebuilt)
    users = {k: v for k, v in state.items() if k.startswith("u|")}
    assert users == expected  # nothing from before --from, every day after it exact
    teams: Counter[tuple[str, str]] = Counter()
    for key, value in state.items():
        if key.startswith("t|"):
            _, period, _, team = key.split("|")
            teams[period, team] += value.get("calls", 0)
    assert teams == Counter({(f"d:{day}", team): sum(
        counts[user, day, "call"] for user, t in TEAMS.items() if t == team)
        for day in after for team in set(TEAMS.values())})  # the roster was there in time
    old = buckets(settings)  # users only: its first batches may precede its roster read
    assert {k: v for k, v in old.items() if k in users} == users

    for day in after:
        assert board(new_redis, settings, day) == {  # everyone active that day
            user: counts[user, day, "call"] for user in TEAMS if f"u|d:{day}|{user}" in state}
    for day in before:
        assert board(new_redis, settings, day) == {}  # not rebuilt: before --from
        assert board(settings.redis, settings, day)  # the current generation's, untouched

    # The cut-over as printed: a worker on the new generation goes on from the replay.
    worker_factory(rebuilt)
    now = datetime.now(UTC).isoformat()
    producer = make_producer(settings)
    try:
        for _ in range(3):
            producer.send(settings.topics.activities, key=b"rep-0",
                          value=orjson.dumps(event("rep-0", occurred_at=now)))
        producer.flush(30)
    finally:
        producer.close()
    wait_until(lambda: all_committed(rebuilt), 60, "the new generation caught up")
    assert buckets(rebuilt)[f"u|d:{now[:10]}|rep-0"] == {"calls": 3}


def test_bad_from_is_refused(make_settings, monkeypatch, capsys) -> None:
    settings = make_settings()
    ensure_topics(settings)
    # A date without an offset is midnight in the model's timezone: two days ahead of UTC's
    # date is in the future everywhere (one day is not, from 23:00 UTC on in Berlin).
    ahead = (datetime.now(UTC) + timedelta(days=2)).date().isoformat()
    code, _, err = replay(monkeypatch, capsys, settings, "--from", ahead)
    assert code == 1 and "is in the future" in err and "give a past date" in err
    code, _, err = replay(monkeypatch, capsys, settings, "--from", "last tuesday")
    assert code == 1 and "is not an ISO date" in err


def test_from_older_than_the_retained_history_is_refused() -> None:
    since = datetime(2026, 11, 1, tzinfo=UTC)
    kept = datetime(2026, 11, 20, tzinfo=UTC).timestamp()
    whole = Span(0, 0, since.timestamp() - 60, 10, 50)  # nothing deleted: fine
    check_retention([whole], since)
    cut = Span(1, 1200, kept, 1200, 1500)  # 1,200 records deleted, the oldest left is newer
    with pytest.raises(ReplayError, match=r"partition 1: 1,200 records.*use --from "
                                          r"2026-11-20T00:00:00\+00:00 or later"):
        check_retention([whole, cut], since)
