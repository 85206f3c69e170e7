"""Duplicated, reordered, late and mis-keyed deliveries at random, with explicit record
timestamps (``producer.send(..., timestamp_ms=...)``) as a CRM relay or a replay writes them.

Each user's events of the last three local days (users in two timezones) are delivered
once, twice or three times; a delivery arrives soon after the event, within the grace
after its local day ended, exactly at day end + grace, a second later, or hours later; a
user's deliveries are shuffled (offsets do not follow time), some events travel together
in JSON arrays (a late element goes to the DLQ alone), and a few records carry the wrong
key (the worker re-sends them keyed by their user). The input goes in two waves, so
duplicates meet both in a batch and across batches.

By the README's rules alone (:class:`conftest.Truth`): an event counts once, on its first
delivery that is on time; a delivery after its local day end + ``grace`` goes to the DLQ
with reason ``late`` (every one of them, once per delivery), and a duplicate of a counted
event is dropped even when it arrives late.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import orjson
import pytest
from kafka_tools import all_committed

from app.embedded import wait_ready
from app.kafka import ensure_topics
from app.roster import Profile, write_profiles

pytestmark = pytest.mark.integration
GRACE = timedelta(hours=1)
TYPES = ("call", "call", "email", "feature_used")


class Chaos:
    """The seeded deliveries of one run."""

    def __init__(self, rng: random.Random, zones: dict[str, ZoneInfo], faults) -> None:
        self.rng, self.zones, self.faults = rng, zones, faults
        self.now = datetime.now(ZoneInfo("UTC")).replace(microsecond=0) - timedelta(seconds=5)
        self.seq = 0
        self.kinds: dict[str, int] = {}

    def event(self, user: str, back: int) -> dict | None:
        """An event of ``user``'s local day ``back`` days ago (None: that day has no past)."""
        tz = self.zones[user]
        day = (self.now.astimezone(tz) - timedelta(days=back)).date()
        start = datetime(day.year, day.month, day.day, tzinfo=tz)
        end = min(start + timedelta(days=1), self.now - timedelta(minutes=10))
        if end <= start:
            return None
        self.seq += 1
        kind = self.rng.choice(TYPES)
        event = {"event_id": f"chaos-{self.seq}", "user_id": user, "team_id": "crew",
                 "occurred_at": (start + (end - start) * self.rng.random()).isoformat(),
                 "type": kind}
        if kind == "feature_used":
            event["feature"] = self.rng.choice(["leads", "reports"])
        return event

    def arrival(self, event: dict) -> datetime:
        """When a first delivery arrives: soon, within the grace, at its very end, a second
        too late, or hours late (never after now)."""
        occurred = datetime.fromisoformat(event["occurred_at"])
        deadline = self.faults.day_end(occurred, self.zones[event["user_id"]]) + GRACE
        kind, moment = self.rng.choices(
            [("soon", occurred + timedelta(seconds=self.rng.uniform(1, 1800))),
             ("in grace", deadline - timedelta(seconds=self.rng.uniform(1, 3500))),
             ("at deadline", deadline),
             ("a second late", deadline + timedelta(seconds=1)),
             ("hours late", deadline + timedelta(seconds=self.rng.uniform(60, 6 * 3600)))],
            weights=[50, 15, 5, 5, 25])[0]
        if not occurred <= moment <= self.now:
            kind, moment = "soon", min(self.now, occurred + timedelta(seconds=1))
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        return moment

    def again(self, arrival: datetime) -> datetime:
        """A redelivery: up to three hours after the first (never after now)."""
        return min(self.now, arrival + timedelta(seconds=self.rng.uniform(0, 3 * 3600)))

    def user_deliveries(self, user: str) -> list:
        delivery = self.faults.Delivery
        out = []
        for back in (2, 1, 0):
            for _ in range(self.rng.randint(5, 10)):
                event = self.event(user, back)
                if event is None:
                    continue
                first = self.arrival(event)
                value = orjson.dumps(event)
                out.append(delivery(user.encode(), value, first, [event]))
                copies = self.rng.choices([0, 1, 2], weights=[60, 30, 10])[0]
                for _ in range(copies):
                    out.append(delivery(user.encode(), value, self.again(first), [event]))
            # an array of two or three events of that day, sometimes delivered again
            events = [e for e in (self.event(user, back) for _ in range(3)) if e][
                :self.rng.randint(2, 3)]
            if len(events) >= 2:
                first = self.arrival(events[0])
                value = orjson.dumps(events)
                out.append(delivery(user.encode(), value, first, events))
                if self.rng.random() < 0.4:
                    out.append(delivery(user.encode(), value, self.again(first), events))
        self.rng.shuffle(out)  # reordered: offsets do not follow time
        return out

    def mis_keyed(self, users: list[str]) -> list:
        """Events delivered once under another user's key (re-sent keyed by their user)."""
        out = []
        for user in users:
            for back in (1, 0):
                event = self.event(user, back)
                if event is not None:
                    other = self.rng.choice([u for u in users if u != user])
                    out.append(self.faults.Delivery(other.encode(), orjson.dumps(event),
                                                    self.arrival(event), [event]))
        return out


def test_duplicated_reordered_late_and_mis_keyed_deliveries(make_settings, faults,
                                                            wait) -> None:
    rng = random.Random(1_2026)
    home = faults.daytime_zone()
    away = ZoneInfo("Asia/Tokyo" if home.key != "Asia/Tokyo" else "America/New_York")
    zones = {f"near-{i}": home for i in range(5)} | {f"far-{i}": away for i in range(5)}
    settings = make_settings(config=faults.config(home), session_timeout_s=6,
                             batch_max=500)
    ensure_topics(settings)
    worker = faults.start_worker(settings, "worker")
    write_profiles(settings, [
        Profile(user_id=u, team_id="crew", timezone=None if tz == home else tz.key)
        for u, tz in zones.items()])
    wait_ready(settings, 120, process=worker)

    def roster_known() -> bool:  # each person's periods in their own timezone
        return all(faults.get(settings, f"/api/kpis/users/{u}?period=day")[1]["period"][
            "tz"] == tz.key for u, tz in zones.items())

    wait("the roster synced to the worker", 60, roster_known, process=worker)

    chaos = Chaos(rng, zones, faults)
    per_user = {user: chaos.user_deliveries(user) for user in zones}
    stream = []
    while any(per_user.values()):  # interleave the users, each keeping its own order
        user = rng.choice([u for u, left in per_user.items() if left])
        stream.append(per_user[user].pop(0))
    misfits = chaos.mis_keyed(sorted(zones))
    half = len(stream) // 2
    truth = faults.Truth(home, grace=GRACE, zones=zones)
    for wave in (stream[:half] + misfits[:len(misfits) // 2],
                 stream[half:] + misfits[len(misfits) // 2:]):
        faults.send(settings, wave)
        wait("the wave committed", 120, lambda: all_committed(settings), process=worker)
    for delivery in stream + misfits:  # per user in production order; misfits are unique
        for event in delivery.events:
            truth.deliver(event, delivery.arrival)

    wait("every forwarded record committed", 60, lambda: all_committed(settings),
         process=worker)
    state = faults.kpi_state(settings)
    problems = []
    for kpi, kind in (("calls", "call"), ("emails", "email"), ("uses", "feature_used")):
        problems += faults.kpi_mismatches(state, truth, kpi, [kind])
    assert not problems, "\n".join(problems[:20])
    assert faults.remembered_ids(state) == truth.per_user()

    letters = {letter["dlq_id"]: letter for letter in faults.dead_letters(settings)}
    assert {letter["reason"] for letter in letters.values()} <= {"late"}
    late = sorted(faults.dead_event(letter)["event_id"] for letter in letters.values())
    assert late == sorted(event["event_id"] for event in truth.late)
    print(f"arrivals of first deliveries: {chaos.kinds}; {truth.deliveries} deliveries, "
          f"{truth.duplicates} duplicates dropped, {len(truth.late)} late (DLQ), "
          f"{truth.events} events counted, {len(misfits)} mis-keyed")
    faults.report(f"duplicates x{truth.duplicates}, late x{len(truth.late)}, reordered, "
                  f"mis-keyed x{len(misfits)}", truth.duplicates + len(truth.late),
                  truth.deliveries, faults.counted_events(state), truth.events)
