"""A realistic office day for demos and load: ``crm-pulse simulate``.

Three teams in two offices (Berlin and Sydney) do what CRM users do: calls, e-mails,
meetings, deals, cases, logins and first uses of CRM functions, mostly in their own working
hours. The office and the events are pure functions of a seeded :class:`random.Random`, so
tests run them without a broker; :func:`run_simulator` only paces and produces them.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import signal
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from kafka import KafkaProducer
from kafka.errors import KafkaError

from app.config import WEEKDAYS, Calendar
from app.kafka import ensure_topics, make_producer
from app.roster import Profile, write_profiles
from app.settings import Settings

logger = logging.getLogger(__name__)

FEATURES = (
    "accounts", "contacts", "leads", "opportunities", "quotes", "orders", "cases",
    "phone_calls", "appointments", "email_tracking", "campaigns", "reports",
)  # fmt: skip
SOURCES = ("dynamics365", "salesforce", "hubspot", "pipedrive", "generic")
FLOOR = 0.03  # off-hours activity relative to working hours: the demo never stands still
BACKFILL_START_HOUR = 8
ARRAY_MAX = 100  # events per record in backfill (one user's events, one partition)
PROGRESS_EVERY_S = 10.0


@dataclass(frozen=True)
class TeamPlan:
    """One simulated team: where it sits, which CRM it mostly uses, who is in it."""

    team_id: str
    office_id: str
    timezone: str
    crm: str
    roles: tuple[tuple[str, int], ...]  # (role, head count); the first person leads


TEAMS: tuple[TeamPlan, ...] = (
    TeamPlan("team-north", "office-berlin", "Europe/Berlin", "dynamics365",
             (("account_manager", 3), ("sales_rep", 8))),
    TeamPlan("team-south", "office-berlin", "Europe/Berlin", "salesforce",
             (("account_manager", 2), ("sales_rep", 8))),
    TeamPlan("team-service", "office-sydney", "Australia/Sydney", "hubspot",
             (("service_agent", 9),)),
)  # fmt: skip
_TEAM_CRM = {team.team_id: team.crm for team in TEAMS}

# Events per working hour of an average person, by role (None: no role in the roster).
_COMMON = {"task": 0.5, "note": 0.4, "record_updated": 0.5, "login": 0.25, "feature_used": 0.6}
RATES: dict[str | None, dict[str, float]] = {
    "sales_rep": {
        "call": 1.3, "email": 2.0, "meeting": 0.3, "opportunity_created": 0.2,
        "opportunity_won": 0.04, "opportunity_lost": 0.04, "lead_created": 0.15,
        "contact_created": 0.15, **_COMMON,
    },
    "account_manager": {
        "call": 0.8, "email": 2.5, "meeting": 0.5, "opportunity_created": 0.1,
        "opportunity_won": 0.03, "opportunity_lost": 0.02, "contact_created": 0.1,
        **_COMMON, "task": 0.8, "record_updated": 0.8,
    },
    "service_agent": {
        "case_created": 1.0, "case_resolved": 1.1, "call": 1.5, "email": 1.5,
        **_COMMON, "task": 0.3, "note": 0.8,
    },
    None: {"call": 0.5, "email": 1.5, "meeting": 0.2, **_COMMON},
}  # fmt: skip
_FEATURE_WEIGHTS: dict[str, tuple[float, ...]] = {  # in FEATURES order
    "sales": (5, 5, 3, 5, 2, 1, 0.3, 2, 2, 2, 0.5, 1),
    "service": (3, 4, 0.2, 0.2, 0.2, 1, 6, 3, 0.5, 2, 0.1, 0.7),
}
_FIRST_NAMES = (
    "Alex", "Anna", "Ben", "Carla", "David", "Elif", "Emma", "Felix", "Hannah", "Ivan",
    "Jana", "Jonas", "Julia", "Kai", "Lea", "Leon", "Lina", "Lukas", "Maja", "Marco",
    "Mia", "Nina", "Noah", "Olga", "Paul", "Rosa", "Sam", "Sara", "Tim", "Yusuf",
    "Amelia", "Charlotte", "Chloe", "Isla", "Jack", "Liam", "Mason", "Oliver", "Ruby",
    "Zoe", "Aditi", "Hiro", "Mei", "Priya", "Tane",
)  # fmt: skip
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def build_office(seed: int) -> list[Profile]:
    """The simulated office: 30 people in :data:`TEAMS`, the same for the same seed."""
    rng = random.Random(seed)
    people: list[Profile] = []
    names: set[str] = set()
    for team in TEAMS:
        short = team.team_id.removeprefix("team-")
        lead_id = f"sim-{short}-01"
        number = 0
        for role, head_count in team.roles:
            for _ in range(head_count):
                number += 1
                name = _unique_name(rng, names)
                user_id = f"sim-{short}-{number:02d}"
                people.append(
                    Profile(
                        user_id=user_id,
                        display_name=name,
                        email=f"{name.rstrip('.').replace(' ', '.').lower()}@example.com",
                        team_id=team.team_id,
                        office_id=team.office_id,
                        role=role,
                        timezone=team.timezone,
                        manager_id=None if user_id == lead_id else lead_id,
                        leaderboard_opt_out=rng.random() < 0.1,
                        dynamics365_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                        salesforce_id="005" + "".join(rng.choices(_ALNUM, k=15)),
                        hubspot_user_id=str(rng.randrange(10_000_000, 100_000_000)),
                        pipedrive_user_id=str(rng.randrange(1_000_000, 10_000_000)),
                    )
                )
    return people


def _unique_name(rng: random.Random, taken: set[str]) -> str:
    while True:
        name = f"{rng.choice(_FIRST_NAMES)} {rng.choice('ABCDEFGHIJKLMNOPRSTUVWZ')}."
        if name not in taken:
            taken.add(name)
            return name


def trait(user_id: str, name: str) -> float:
    """A stable per-person number in [0, 1) (diligence, data quality, ...)."""
    digest = hashlib.blake2b(f"{name}:{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def hourly_rate(person: Profile) -> float:
    """Events per working hour of this person (role mix times personal diligence)."""
    rates = RATES.get(person.role, RATES[None])
    return sum(rates.values()) * (0.7 + 0.6 * trait(person.user_id, "diligence"))


def local_time(person: Profile, now_utc: datetime) -> datetime:
    """``now_utc`` on the person's wall clock (UTC when the profile has no timezone)."""
    return now_utc.astimezone(ZoneInfo(person.timezone or "UTC"))


def activity_weight(local: datetime, calendar: Calendar) -> float:
    """How busy people are at this local time: 1 in working hours, :data:`FLOOR` at night."""
    if WEEKDAYS[local.weekday()] not in calendar.working_days or local.date() in calendar.holidays:
        return FLOOR
    hour = local.hour + local.minute / 60
    if 12 <= hour < 13:
        return 0.6  # lunch
    if 8 <= hour < 18:
        return 1.0
    if 7 <= hour < 8 or 18 <= hour < 20:
        return 0.25
    return FLOOR


def generate_event(
    rng: random.Random, person: Profile, now_utc: datetime, seq: int, *, run: str = "sim"
) -> dict[str, Any]:
    """One canonical activity event of ``person`` at ``now_utc`` (aware).

    ``event_id`` is ``{run}-{seq}``: deterministic, and unique while ``seq`` is; the
    simulator puts its seed and start time in ``run`` so that runs do not collide.
    """
    if now_utc.tzinfo is None:
        raise ValueError("now_utc must be timezone-aware")
    rates = RATES.get(person.role, RATES[None])
    kind = rng.choices(tuple(rates), weights=tuple(rates.values()))[0]
    event: dict[str, Any] = {
        "event_id": f"{run}-{seq}",
        "occurred_at": local_time(person, now_utc).isoformat(timespec="milliseconds"),
        "user_id": person.user_id,
        "team_id": person.team_id,
        "type": kind,
        "source": _source(rng, person),
    }
    event.update(_DETAILS[kind](rng, person))
    if "record_type" in event:
        event["record_id"] = f"{event['record_type']}-{rng.getrandbits(48):012x}"
        event.setdefault("action", "created")
    return event


def _source(rng: random.Random, person: Profile) -> str:
    primary = _TEAM_CRM.get(person.team_id, "generic")
    return primary if rng.random() < 0.75 else rng.choice(SOURCES)


def _quality(rng: random.Random, person: Profile) -> float:
    base = 0.55 + 0.4 * trait(person.user_id, "quality")
    return round(min(1.0, max(0.0, rng.gauss(base, 0.1))), 2)


def _feature(rng: random.Random, person: Profile) -> str:
    weights = _FEATURE_WEIGHTS["service" if person.role == "service_agent" else "sales"]
    return rng.choices(FEATURES, weights=weights)[0]


def _call(rng: random.Random, person: Profile) -> dict[str, Any]:
    seconds = min(3600.0, max(20.0, rng.lognormvariate(math.log(240), 0.6)))
    outbound = rng.random() < (0.4 if person.role == "service_agent" else 0.8)
    return {
        "record_type": "phone_call",
        "duration_s": round(seconds),
        "attributes": {"direction": "outbound" if outbound else "inbound"},
    }


def _meeting(rng: random.Random, person: Profile) -> dict[str, Any]:
    minutes = rng.choices((30, 45, 60, 90), weights=(4, 2, 3, 1))[0]
    return {"record_type": "appointment", "duration_s": minutes * 60}


def _won(rng: random.Random, person: Profile) -> dict[str, Any]:
    amount = min(250_000.0, max(500.0, rng.lognormvariate(math.log(6000), 0.7)))
    currency = "AUD" if (person.timezone or "").startswith("Australia/") else "EUR"
    return {"record_type": "opportunity", "amount": round(amount, -1), "currency": currency}


def _record(record_type: str, quality: bool = False) -> Callable[..., dict[str, Any]]:
    def details(rng: random.Random, person: Profile) -> dict[str, Any]:
        out: dict[str, Any] = {"record_type": record_type}
        if quality:
            out["quality"] = _quality(rng, person)
        return out

    return details


_UPDATED_SALES = ("account", "contact", "lead", "opportunity")
_UPDATED_SERVICE = ("case", "contact", "account")


def _updated(rng: random.Random, person: Profile) -> dict[str, Any]:
    kinds = _UPDATED_SERVICE if person.role == "service_agent" else _UPDATED_SALES
    return {"record_type": rng.choice(kinds), "action": "updated", "quality": _quality(rng, person)}


_DETAILS: dict[str, Callable[[random.Random, Profile], dict[str, Any]]] = {
    "call": _call,
    "meeting": _meeting,
    "email": _record("email"),
    "task": _record("task"),
    "note": _record("note"),
    "opportunity_created": _record("opportunity", quality=True),
    "opportunity_won": _won,
    "opportunity_lost": _record("opportunity"),
    "lead_created": _record("lead", quality=True),
    "contact_created": _record("contact", quality=True),
    "case_created": _record("case", quality=True),
    "case_resolved": _record("case"),
    "record_updated": _updated,
    "login": lambda rng, person: {"feature": _feature(rng, person)},
    "feature_used": lambda rng, person: {"feature": _feature(rng, person)},
}


def _poisson(rng: random.Random, lam: float) -> int:
    if lam > 30:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, product = math.exp(-lam), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k


def backfill_times(
    rng: random.Random, person: Profile, now_utc: datetime, calendar: Calendar
) -> list[datetime]:
    """When ``person`` was active today: 08:00 local until now, sorted, in UTC."""
    local_now = local_time(person, now_utc)
    start = datetime.combine(
        local_now.date(), dtime(BACKFILL_START_HOUR), local_now.tzinfo
    ).astimezone(UTC)
    return active_times(rng, person, start, now_utc, calendar)


def active_times(
    rng: random.Random, person: Profile, start: datetime, until: datetime, calendar: Calendar
) -> list[datetime]:
    """When ``person`` was active between ``start`` and ``until`` (UTC), sorted."""
    rate, slot, times = hourly_rate(person), timedelta(minutes=15), []
    cursor = start
    while cursor < until:
        end = min(cursor + slot, until)
        hours = (end - cursor).total_seconds() / 3600
        weight = activity_weight(local_time(person, cursor), calendar)
        for _ in range(_poisson(rng, rate * weight * hours)):
            times.append(cursor + (end - cursor) * rng.random())
        cursor = end
    return sorted(times)


def backfill_events(
    rng: random.Random,
    people: list[Profile],
    now_utc: datetime,
    calendar: Calendar,
    *,
    run: str = "sim",
) -> list[dict[str, Any]]:
    """Today's events of every active person until ``now_utc``, oldest first."""
    stamped = [
        (moment, person)
        for person in people
        if person.active
        for moment in backfill_times(rng, person, now_utc, calendar)
    ]
    stamped.sort(key=lambda item: item[0])
    return [
        generate_event(rng, person, moment, seq, run=run)
        for seq, (moment, person) in enumerate(stamped)
    ]


def history_records(
    rng: random.Random,
    people: list[Profile],
    now_utc: datetime,
    calendar: Calendar,
    days: int,
    *,
    run: str = "sim",
) -> list[tuple[bytes, bytes, int]]:
    """The ``days`` local days before today of every active person, as ``(key, value,
    timestamp_ms)`` records, oldest day first.

    Each record holds one person's events of one day and is stamped a minute after its last
    event, as if it had arrived then: the worker takes it as on time, and the closed days
    give streaks, personal bests and last week's ranks something to work on.
    """
    records, seq = [], 0
    for back in range(days, 0, -1):
        stamped = []
        for person in people:
            if not person.active:
                continue
            local_now = local_time(person, now_utc)
            day = datetime.combine(local_now.date() - timedelta(days=back), dtime(0),
                                   local_now.tzinfo).astimezone(UTC)
            stamped += [(moment, person) for moment in
                        active_times(rng, person, day, day + timedelta(days=1), calendar)]
        stamped.sort(key=lambda item: item[0])
        events = []
        for moment, person in stamped:
            events.append(generate_event(rng, person, moment, seq, run=run))
            seq += 1
        records += group_records(events, stamp=True)
    return records


def pick_person(
    rng: random.Random, people: list[Profile], now_utc: datetime, calendar: Calendar
) -> Profile:
    """Who acts next in live mode: busy people in their working hours, anyone at night."""
    active = [p for p in people if p.active] or people
    weights = [hourly_rate(p) * activity_weight(local_time(p, now_utc), calendar) for p in active]
    return rng.choices(active, weights=weights)[0]


def group_records(
    events: list[dict[str, Any]], stamp: bool = False
) -> list[tuple[bytes, bytes, int | None]]:
    """Backfill records: each user's events as JSON arrays of up to :data:`ARRAY_MAX`,
    with ``stamp`` timed a minute after their last event (else the producer's time)."""
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        by_user[event["user_id"]].append(event)
    records = []
    for user_id, mine in by_user.items():
        for i in range(0, len(mine), ARRAY_MAX):
            chunk = mine[i : i + ARRAY_MAX]
            last = datetime.fromisoformat(chunk[-1]["occurred_at"]).timestamp()
            timestamp = int((last + 60) * 1000) if stamp else None
            records.append((user_id.encode(), orjson.dumps(chunk), timestamp))
    return records


class _Sender:
    """Sends without waiting per record; remembers failures reported by the producer."""

    def __init__(self, producer: KafkaProducer, topic: str) -> None:
        self.producer, self.topic, self.failed = producer, topic, 0

    def send(self, key: bytes, value: bytes, timestamp_ms: int | None = None) -> None:
        self.producer.send(self.topic, key=key, value=value,
                           timestamp_ms=timestamp_ms).add_errback(self._failed)

    def _failed(self, exc: BaseException) -> None:
        if not self.failed:
            logger.error("simulator: the broker rejected a record: %s", exc)
        self.failed += 1


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C and SIGTERM set ``stop`` (a clean exit) instead of raising mid-send."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda *_: stop.set())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_simulator(
    settings: Settings,
    rate: float,
    count: int | None,
    backfill: bool,
    seed: int,
    write_roster: bool,
    history_days: int = 0,
) -> int:
    """Produce the simulated office day to ``crm.activities``; 0 when done or interrupted.

    ``rate`` is live events per second (``<= 0``: as fast as possible); ``count`` caps
    the total including backfill (``history_days`` before today come on top). Returns 1
    when the broker failed or rejected records.
    """
    office = build_office(seed)
    calendar = settings.pulse.calendar
    rng = random.Random(seed)
    run = f"sim{seed}-{time.time_ns() // 1_000_000:x}"  # event ids differ between runs
    stop = threading.Event()
    sent = 0
    try:
        ensure_topics(settings)
        producer = make_producer(settings, client_id="crm-pulse-simulator")
    except KafkaError as exc:
        logger.error("simulator: cannot reach the broker: %s", exc)
        return 1
    sender = _Sender(producer, settings.topics.activities)
    try:
        with _stop_on_signals(stop):
            if write_roster:
                write_profiles(settings, office, producer=producer)
            if history_days > 0 and not stop.is_set():
                records = history_records(rng, office, datetime.now(UTC), calendar,
                                          history_days, run=f"{run}-h")
                for key, value, timestamp in records:
                    sender.send(key, value, timestamp)
                logger.info("simulator: backfilled %d records of the %d days before today",
                            len(records), history_days)
            if backfill and not stop.is_set():
                now = datetime.now(UTC)
                events = backfill_events(rng, office, now, calendar, run=f"{run}-b")
                events = events if count is None else events[:count]
                for key, value, _ in group_records(events):
                    sender.send(key, value)
                sent = len(events)
                logger.info("simulator: backfilled %d events of today", sent)
            sent += _live(sender, rng, office, calendar, rate, count, sent, run, stop)
        producer.flush(timeout=30)
    except KafkaError as exc:
        logger.error("simulator: broker error after %d events: %s", sent, exc)
        sender.failed += 1
    except KeyboardInterrupt:  # no signal handler outside the main thread
        logger.info("simulator: interrupted")
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=10)
    logger.info("simulator: done, %d events sent", sent)
    return 1 if sender.failed else 0


def _live(
    sender: _Sender,
    rng: random.Random,
    office: list[Profile],
    calendar: Calendar,
    rate: float,
    count: int | None,
    already: int,
    run: str,
    stop: threading.Event,
) -> int:
    """Paced live events, one per record with ``occurred_at`` = now; returns how many."""
    started = last_report = time.monotonic()
    sent = reported = 0
    while not stop.is_set() and (count is None or already + sent < count):
        now = time.monotonic()
        if now - last_report >= PROGRESS_EVERY_S:
            logger.info(
                "simulator: %d events sent, %.1f events/s",
                already + sent,
                (sent - reported) / (now - last_report),
            )
            last_report, reported = now, sent
        due = (sent + 1) if rate <= 0 else int((now - started) * rate) + 1
        if due <= sent:
            stop.wait(min(0.2, started + sent / rate - now))
            continue
        budget = due - sent if count is None else min(due - sent, count - already - sent)
        for _ in range(min(budget, 1000)):
            moment = datetime.now(UTC)
            person = pick_person(rng, office, moment, calendar)
            event = generate_event(rng, person, moment, sent, run=run)
            sender.send(person.user_id.encode(), orjson.dumps(event))
            sent += 1
    return sent
