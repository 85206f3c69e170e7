"""Simulator: the office, event realism and validity, backfill window, a real run."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import orjson
import pytest
from kafka_tools import read_topic

from app.config import Calendar
from app.roster import parse_profile
from app.settings import Settings
from app.simulator import (
    ARRAY_MAX,
    FEATURES,
    FLOOR,
    SOURCES,
    activity_weight,
    backfill_events,
    backfill_times,
    build_office,
    generate_event,
    group_records,
    history_records,
    pick_person,
    run_simulator,
)
from schemas.activity import validate_event

CALENDAR = Calendar()
# Tuesday 24 Nov 2026: 14:30 in Berlin (+01:00), 01:30 on Wednesday in Sydney (+11:00).
BERLIN_AFTERNOON = datetime(2026, 11, 24, 13, 30, tzinfo=UTC)
# Wednesday 25 Nov 2026: 16:00 in Sydney, 06:00 in Berlin.
SYDNEY_AFTERNOON = datetime(2026, 11, 25, 5, 0, tzinfo=UTC)
MOMENTS = [
    BERLIN_AFTERNOON,
    SYDNEY_AFTERNOON,
    datetime(2026, 11, 28, 12, 0, tzinfo=UTC),  # Saturday
    datetime(2026, 3, 29, 7, 30, tzinfo=UTC),  # Berlin DST switch day
    datetime(2026, 12, 24, 10, 0, tzinfo=UTC),  # holiday in the default config
    datetime(2026, 11, 24, 23, 59, 59, tzinfo=UTC),
]


def local(person, moment: datetime) -> datetime:
    return moment.astimezone(ZoneInfo(person.timezone))


def test_build_office_is_deterministic_per_seed() -> None:
    assert build_office(7) == build_office(7)
    assert [p.display_name for p in build_office(7)] != [p.display_name for p in build_office(8)]
    assert [p.user_id for p in build_office(7)] == [p.user_id for p in build_office(8)]


def test_the_office_is_a_plausible_organisation() -> None:
    office = build_office(7)
    assert 25 <= len(office) <= 35
    assert len({p.user_id for p in office}) == len(office)
    assert len({p.display_name for p in office}) == len(office)
    assert {p.team_id for p in office} == {"team-north", "team-south", "team-service"}
    assert {p.office_id for p in office} == {"office-berlin", "office-sydney"}
    assert {p.role for p in office} <= set(Settings().pulse.roles)
    by_id = {p.user_id: p for p in office}
    for person in office:
        assert person.active and person.timezone
        if person.manager_id is not None:
            assert by_id[person.manager_id].team_id == person.team_id
    leads = [p for p in office if p.manager_id is None]
    assert len(leads) == 3
    service = [p for p in office if p.team_id == "team-service"]
    assert {(p.role, p.timezone) for p in service} == {("service_agent", "Australia/Sydney")}


def test_every_generated_event_is_canonical() -> None:
    office = build_office(3)
    rng = random.Random(3)
    seen_types: Counter[str] = Counter()
    for seq in range(6000):
        person = office[seq % len(office)]
        moment = MOMENTS[seq % len(MOMENTS)]
        event = generate_event(rng, person, moment, seq)
        assert validate_event(dict(event)) == {**event, "action": event.get("action", "created")}
        assert event["event_id"] == f"sim-{seq}"
        assert event["user_id"] == person.user_id and event["team_id"] == person.team_id
        assert event["source"] in SOURCES
        occurred = datetime.fromisoformat(event["occurred_at"])
        assert occurred == moment
        assert occurred.utcoffset() == local(person, moment).utcoffset()
        kind = event["type"]
        seen_types[kind] += 1
        if kind in ("login", "feature_used"):
            assert event["feature"] in FEATURES
        else:
            assert "feature" not in event
            assert event["record_type"] and event["record_id"]
        if kind == "opportunity_won":
            assert event["amount"] > 0 and event["currency"] in ("EUR", "AUD")
        if kind in ("call", "meeting"):
            assert event["duration_s"] > 0
        if kind == "record_updated":
            assert event["action"] == "updated" and 0 <= event["quality"] <= 1
    assert {"call", "email", "meeting", "case_resolved", "opportunity_won"} <= set(seen_types)


def test_type_mix_follows_the_role() -> None:
    office = build_office(3)
    rng = random.Random(1)
    by_role: dict[str, Counter[str]] = {}
    for seq in range(9000):
        person = office[seq % len(office)]
        event = generate_event(rng, person, BERLIN_AFTERNOON, seq)
        by_role.setdefault(person.role, Counter())[event["type"]] += 1
    assert "case_resolved" not in by_role["sales_rep"]
    assert "opportunity_won" not in by_role["service_agent"]
    assert by_role["service_agent"]["case_resolved"] > 100
    assert by_role["sales_rep"]["call"] > by_role["sales_rep"]["meeting"]


def test_generate_event_is_deterministic_and_needs_an_aware_time() -> None:
    person = build_office(1)[0]
    first = generate_event(random.Random(5), person, BERLIN_AFTERNOON, 9, run="r1")
    again = generate_event(random.Random(5), person, BERLIN_AFTERNOON, 9, run="r1")
    assert first == again and first["event_id"] == "r1-9"
    with pytest.raises(ValueError):
        generate_event(random.Random(5), person, datetime(2026, 1, 1), 0)


def test_activity_follows_working_hours_and_the_calendar() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    assert activity_weight(datetime(2026, 11, 24, 10, tzinfo=berlin), CALENDAR) == 1.0
    assert activity_weight(datetime(2026, 11, 24, 3, tzinfo=berlin), CALENDAR) == FLOOR
    assert activity_weight(datetime(2026, 11, 28, 10, tzinfo=berlin), CALENDAR) == FLOOR
    holiday = Calendar(holidays=[date(2026, 11, 24)])
    assert activity_weight(datetime(2026, 11, 24, 10, tzinfo=berlin), holiday) == FLOOR
    assert 0 < activity_weight(datetime(2026, 11, 24, 12, 30, tzinfo=berlin), CALENDAR) < 1


def test_live_picks_people_in_their_working_hours_but_never_stops() -> None:
    office = build_office(7)
    rng = random.Random(2)

    def teams(moment: datetime) -> Counter[str]:
        return Counter(pick_person(rng, office, moment, CALENDAR).team_id for _ in range(3000))

    berlin_day = teams(BERLIN_AFTERNOON)
    assert berlin_day["team-service"] < 0.05 * 3000
    sydney_day = teams(SYDNEY_AFTERNOON)
    assert sydney_day["team-service"] > 0.6 * 3000
    weekend = teams(datetime(2026, 11, 28, 12, 0, tzinfo=UTC))
    assert set(weekend) == {"team-north", "team-south", "team-service"}


@pytest.mark.parametrize("now", MOMENTS)
def test_backfill_stays_inside_the_local_working_day(now: datetime) -> None:
    office = build_office(11)
    events = backfill_events(random.Random(11), office, now, CALENDAR, run="b")
    assert len({e["event_id"] for e in events}) == len(events)
    by_id = {p.user_id: p for p in office}
    for event in events:
        validate_event(dict(event))
        occurred = datetime.fromisoformat(event["occurred_at"])
        person = by_id[event["user_id"]]
        today = local(person, now)
        midnight = today.replace(hour=0, minute=0, second=0, microsecond=0)
        assert occurred <= now, "in the future"
        assert occurred >= midnight, "before the local midnight"
        assert occurred.astimezone(ZoneInfo(person.timezone)).hour >= 8
        assert occurred.utcoffset() == today.utcoffset()
    stamps = [datetime.fromisoformat(e["occurred_at"]) for e in events]
    assert stamps == sorted(stamps)


def test_backfill_counts_are_realistic() -> None:
    office = build_office(5)
    now = datetime(2026, 11, 24, 17, 0, tzinfo=UTC)  # 18:00 in Berlin: a full day
    events = backfill_events(random.Random(5), office, now, CALENDAR)
    reps = [p.user_id for p in office if p.role == "sales_rep"]
    calls = Counter(e["user_id"] for e in events if e["type"] == "call")
    per_rep = [calls[user_id] for user_id in reps]
    assert 8 <= sum(per_rep) / len(per_rep) <= 20  # ~1-2 calls per working hour
    assert max(per_rep) - min(per_rep) >= 3  # people differ: boards have a story
    # Sydney's day has not started yet (04:00 local): nobody there has events.
    assert not [e for e in events if e["team_id"] == "team-service"]
    weekend = datetime(2026, 11, 28, 17, 0, tzinfo=UTC)
    assert len(backfill_events(random.Random(5), office, weekend, CALENDAR)) < len(events) / 10


def test_backfill_before_eight_is_empty() -> None:
    person = build_office(1)[0]
    early = datetime(2026, 11, 24, 6, 59, tzinfo=UTC)  # 07:59 in Berlin
    assert backfill_times(random.Random(1), person, early, CALENDAR) == []


def test_group_records_keeps_each_users_events_in_arrays() -> None:
    office = build_office(2)[:3]
    rng = random.Random(2)
    events = [generate_event(rng, office[i % 3], BERLIN_AFTERNOON, i) for i in range(450)]
    records = group_records(events)
    total = 0
    for key, value, timestamp in records:
        assert timestamp is None  # today's backfill: the producer's time
        batch = orjson.loads(value)
        assert 1 <= len(batch) <= ARRAY_MAX
        assert {e["user_id"] for e in batch} == {key.decode()}
        total += len(batch)
    assert total == 450
    assert sorted(e["event_id"] for _, v, _ in records for e in orjson.loads(v)) == sorted(
        e["event_id"] for e in events
    )


def decode(records: list) -> list[dict]:
    """Events of activity records (one event or an array of one user's events each)."""
    events = []
    for record in records:
        payload = orjson.loads(record.value)
        batch = payload if isinstance(payload, list) else [payload]
        assert {e["user_id"] for e in batch} == {record.key.decode()}
        events.extend(batch)
    return events


@pytest.mark.integration
def test_run_simulator_produces_exactly_count_events(make_settings) -> None:
    settings = make_settings()
    code = run_simulator(settings, rate=500.0, count=200, backfill=False, seed=4, write_roster=True)
    assert code == 0
    events = decode(read_topic(settings, settings.topics.activities))
    assert len(events) == 200
    assert len({e["event_id"] for e in events}) == 200
    for event in events:
        validate_event(event)
    office = build_office(4)
    roster = read_topic(settings, settings.topics.roster)
    assert {r.key.decode(): parse_profile(r.value) for r in roster} == {
        p.user_id: p for p in office
    }


@pytest.mark.integration
def test_backfill_counts_towards_count(make_settings) -> None:
    settings = make_settings()
    code = run_simulator(settings, rate=0, count=40, backfill=True, seed=4, write_roster=False)
    assert code == 0
    events = decode(read_topic(settings, settings.topics.activities))
    assert len(events) == 40
    now = datetime.now(UTC) + timedelta(seconds=1)
    assert all(datetime.fromisoformat(e["occurred_at"]) <= now for e in events)


def test_history_records_hold_one_local_day_and_arrive_on_time() -> None:
    office = build_office(3)
    records = history_records(random.Random(3), office, BERLIN_AFTERNOON, CALENDAR, 9)
    zones = {p.user_id: ZoneInfo(p.timezone or "UTC") for p in office}
    days = set()
    for key, value, timestamp in records:
        events = orjson.loads(value)
        tz = zones[key.decode()]
        local = [datetime.fromisoformat(e["occurred_at"]).astimezone(tz) for e in events]
        assert len({moment.date() for moment in local}) == 1  # one local day per record
        today = BERLIN_AFTERNOON.astimezone(tz).date()
        assert 1 <= (today - local[0].date()).days <= 9
        assert timestamp == int((max(local).timestamp() + 60) * 1000)  # on time
        days.add((today - local[0].date()).days)
    assert days == set(range(1, 10))


def test_history_gives_the_default_streak_rule_something_to_award() -> None:
    """Someone hits the daily call target on 5 working days in a row (call_streak)."""
    office = build_office(7)  # the seed crm-pulse dev uses
    settings = Settings(_env_file=None)
    targets = {role: spec.targets["calls"]["day"] for role, spec in settings.pulse.roles.items()
               if "day" in spec.targets.get("calls", {})}
    calls: Counter[tuple[str, date]] = Counter()
    for _, value, _ in history_records(random.Random(7), office, BERLIN_AFTERNOON,
                                       settings.pulse.calendar, 9):
        for event in orjson.loads(value):
            if event["type"] == "call":
                calls[event["user_id"], date.fromisoformat(event["occurred_at"][:10])] += 1
    working = sorted({day for _, day in calls if day.weekday() < 5})
    best_run = 0
    for person in office:
        run = 0
        for day in working:
            hit = calls[person.user_id, day] >= targets.get(person.role or "", float("inf"))
            run = run + 1 if hit else 0
            best_run = max(best_run, run)
    assert best_run >= 5
