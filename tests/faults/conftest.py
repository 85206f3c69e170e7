"""Shared parts of the fault-injection suite (``tests/faults``).

Every test here starts real processes (the session's tansu broker and redis-server, or its
own where it must stop them, and real ``crm-pulse worker`` processes), injects a fault,
and compares what the worker produced (KPI changelog, Redis, output topics) with an
*independent* count of the input kept by the test: :class:`Truth` folds the deliveries
the test produced with the rules written down in the README (dedup by ``event_id`` per
user, lateness against the record timestamp, local days), without the pipeline's code.

The ``faults`` fixture hands the helpers to the tests (a plain import of a ``conftest``
module is ambiguous under pytest's default import mode), and every test adds one row to the
fault table printed at the end of the run: fault, times injected, events in, events
counted, lost, doubled.
"""

from __future__ import annotations

import base64
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from kafka import KafkaProducer
from kafka_tools import changelog_state, committed, end_offsets, read_topic

from app.embedded import ManagedProcess, start_worker, wait_until
from app.kafka import ensure_topics, make_producer
from app.settings import Settings

# Zones tried in order for "a zone where it is daytime now" (they span 21 hours).
ZONES = ("UTC", "Asia/Tokyo", "America/New_York", "Pacific/Auckland", "America/Los_Angeles",
         "Asia/Kolkata", "Europe/Berlin")
FAULT_ROWS: list[dict[str, Any]] = []
COUNT_KPIS = ("calls", "emails", "uses")
_COLUMNS = ("test", "fault injected", "times", "events in", "counted", "lost", "doubled")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The fault table (issue 7's closing note) for the fault tests that ran."""
    if not FAULT_ROWS:
        return
    terminalreporter.section("fault injection: events in vs counted")
    rows = [[str(row[c]) for c in _COLUMNS] for row in FAULT_ROWS]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(_COLUMNS)]
    terminalreporter.write_line(" | ".join(c.ljust(w) for c, w in zip(_COLUMNS, widths,
                                                                       strict=True)))
    terminalreporter.write_line("-+-".join("-" * w for w in widths))
    for row in rows:
        terminalreporter.write_line(" | ".join(v.ljust(w) for v, w in zip(row, widths,
                                                                          strict=True)))


# -- the independent count -------------------------------------------------------------------


def day_end(occurred: datetime, tz: ZoneInfo) -> datetime:
    """The end (next local midnight) of the local day holding ``occurred``."""
    local = occurred.astimezone(tz).date() + timedelta(days=1)
    return datetime(local.year, local.month, local.day, tzinfo=tz)


@dataclass
class Truth:
    """What the deliveries a test produced must do, by the documented rules alone.

    Call :meth:`deliver` in the order the worker reads them *per user* (a user's records
    share a partition, so production order per key). A delivery counts unless its
    ``event_id`` was counted for that user before (a duplicate) or it arrived (record
    timestamp) after its local day ended plus ``grace`` (late: DLQ, not remembered).
    A user's local day is in ``zones[user]``, else in ``tz`` (the config's default, which is
    also the team timezone).
    """

    tz: ZoneInfo
    grace: timedelta = timedelta(hours=1)
    flags: tuple[str, ...] = ()
    zones: dict[str, ZoneInfo] = field(default_factory=dict)
    counted: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    deliveries: int = 0
    duplicates: int = 0
    late: list[dict[str, Any]] = field(default_factory=list)
    first_uses: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def zone(self, user: str) -> ZoneInfo:
        return self.zones.get(user, self.tz)

    def deliver(self, event: dict[str, Any], arrival: datetime) -> str:
        self.deliveries += 1
        key = (event["user_id"], event["event_id"])
        if key in self.counted:
            self.duplicates += 1
            return "duplicate"
        occurred = datetime.fromisoformat(event["occurred_at"])
        if arrival > day_end(occurred, self.zone(event["user_id"])) + self.grace:
            self.late.append(event)
            return "late"
        self.counted[key] = event
        feature = event.get("feature")
        mine = self.first_uses[event["user_id"]]
        if feature in self.flags and feature not in mine:
            mine.append(feature)
        return "counted"

    @property
    def events(self) -> int:
        """Distinct events that must count."""
        return len(self.counted)

    @staticmethod
    def _day(event: dict[str, Any], tz: ZoneInfo) -> str:
        occurred = datetime.fromisoformat(event["occurred_at"]).astimezone(tz)
        return f"d:{occurred.date().isoformat()}"

    def per_day(self, types: Iterable[str]) -> Counter[tuple[str, str]]:
        """Counted events of ``types`` per (user, day key in the user's zone)."""
        wanted = set(types)
        return Counter((e["user_id"], self._day(e, self.zone(e["user_id"])))
                       for e in self.counted.values() if e["type"] in wanted)

    def per_team_day(self, types: Iterable[str]) -> Counter[tuple[str, str]]:
        """Counted events of ``types`` per (team, day key in the team timezone)."""
        wanted = set(types)
        return Counter((e["team_id"], self._day(e, self.tz)) for e in self.counted.values()
                       if e["type"] in wanted and e.get("team_id"))

    def per_user(self) -> Counter[str]:
        return Counter(user for user, _ in self.counted)


# -- seeded input ----------------------------------------------------------------------------


@dataclass
class Delivery:
    """One record to produce: key, value, broker timestamp, and the events it carries
    (``None``: a record the worker must dead-letter as a whole)."""

    key: bytes | None
    value: bytes
    arrival: datetime
    events: list[dict[str, Any]] | None


class Stream:
    """Seeded records of today's office activity: calls, e-mails and uses of CRM functions,
    one event or a JSON array of a user's events per record, and a share of records that
    repeat an earlier delivery (a webhook retried, a producer resending)."""

    TYPES = ("call", "call", "call", "email", "email", "feature_used")
    FEATURES = ("leads", "quotes", "reports", "accounts")

    def __init__(self, rng: random.Random, teams: dict[str, str], tz: ZoneInfo, name: str,
                 duplicate_share: float = 0.1, array_share: float = 0.2) -> None:
        self.rng, self.teams, self.tz, self.name = rng, teams, tz, name
        self.users = sorted(teams)
        self.duplicate_share, self.array_share = duplicate_share, array_share
        self.sent: list[Delivery] = []
        self.seq = 0

    def event(self, user: str, occurred: datetime) -> dict[str, Any]:
        self.seq += 1
        kind = self.rng.choice(self.TYPES)
        event = {"event_id": f"{self.name}-{self.seq}", "occurred_at": occurred.isoformat(),
                 "user_id": user, "team_id": self.teams[user], "type": kind}
        if kind == "feature_used":
            event["feature"] = self.rng.choice(self.FEATURES)
        return event

    def wave(self, records: int) -> list[Delivery]:
        """``records`` records of events that happened today before now, arriving now."""
        rng, now = self.rng, datetime.now(self.tz)
        start = now.replace(hour=0, minute=1, second=0, microsecond=0)
        span = (now - start).total_seconds() - 120
        out = []
        for _ in range(records):
            if self.sent and rng.random() < self.duplicate_share:
                again = rng.choice(self.sent)
                out.append(Delivery(again.key, again.value, now, again.events))
                continue
            user = rng.choice(self.users)
            size = rng.randint(2, 4) if rng.random() < self.array_share else 1
            events = [self.event(user, start + timedelta(seconds=rng.uniform(0, span)))
                      for _ in range(size)]
            value = orjson.dumps(events[0] if size == 1 else events)
            delivery = Delivery(user.encode(), value, now, events)
            self.sent.append(delivery)
            out.append(delivery)
        return out


class Feeder:
    """Produces ``stream`` waves from a thread at about ``rate`` records a second until
    :meth:`stop`, folding each wave into ``truth`` once the broker acknowledged it."""

    def __init__(self, kit: Kit, settings: Settings, stream: Stream, truth: Truth,
                 rate: float, wave: int = 50) -> None:
        self.kit, self.settings, self.stream, self.truth = kit, settings, stream, truth
        self.rate, self.wave = rate, wave
        self.records = 0
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def _run(self) -> None:
        producer = self.kit.producer(self.settings)
        started = time.monotonic()
        try:
            while not self._stop.is_set():
                self.records += self.kit.send(self.settings, self.stream.wave(self.wave),
                                              self.truth, producer=producer)
                # pacing of the load (not a synchronisation)
                self._stop.wait(max(0.0, started + self.records / self.rate - time.monotonic()))
        except BaseException as exc:
            self._error = exc
        finally:
            producer.close()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(120)
        if self._error is not None:
            raise AssertionError(f"the feeder failed: {self._error!r}") from self._error
        return self.records


# -- comparisons against the worker's outputs --------------------------------------------------


def kpi_mismatches(state: dict[str, dict[str, Any]], truth: Truth, kpi: str,
                   types: Iterable[str]) -> list[str]:
    """Differences between the changelog's user and team day buckets and ``truth``."""
    types = list(types)
    problems = []
    want_users = truth.per_day(types)
    got_users: Counter[tuple[str, str]] = Counter()
    got_teams: Counter[tuple[str, str]] = Counter()
    for key, value in state.items():
        parts = key.split("|")
        if parts[0] == "u" and parts[1].startswith("d:"):
            got_users[parts[2], parts[1]] += value["n"].get(kpi, 0)
        elif parts[0] == "t" and parts[1].startswith("d:"):
            got_teams[parts[3], parts[1]] += value["n"].get(kpi, 0)
    for where in sorted(set(want_users) | set(got_users)):
        if want_users[where] != got_users[where]:
            problems.append(f"user {where}: {kpi} {got_users[where]} != {want_users[where]}")
    want_teams = truth.per_team_day(types)
    for where in sorted(set(want_teams) | set(got_teams)):
        if want_teams[where] != got_teams[where]:
            problems.append(f"team {where}: {kpi} {got_teams[where]} != {want_teams[where]}")
    return problems


def contents(state: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """User/team buckets and first-use flags without bookkeeping (watermark, partition),
    for comparing two runs over the same input."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        if key.startswith(("u|", "t|")):
            out[key] = {"n": value["n"], "s": {k: sorted(v) for k, v in value["s"].items()}}
        elif key.startswith("f|"):
            out[key] = value["r"]
    return out


def remembered_ids(state: dict[str, dict[str, Any]]) -> Counter[str]:
    """Event ids in the dedup memory per user (``s|`` keys): each counted event once."""
    counts: Counter[str] = Counter()
    for key, value in state.items():
        if key.startswith("s|"):
            counts[key.rsplit("|", 1)[1]] += len(value["ids"])
    return counts


def counted_events(state: dict[str, dict[str, Any]]) -> int:
    """Events the worker counted: the sum of the count KPIs over the users' day buckets
    (every event type of the fault tests feeds exactly one of them)."""
    return sum(value["n"].get(kpi, 0) for key, value in state.items()
               if key.startswith("u|d:") for kpi in COUNT_KPIS)


def same_content(outputs: list[dict[str, Any]], id_field: str) -> dict[str, dict[str, Any]]:
    """Each output once by id; asserts that a repeated id carries the same content."""
    first: dict[str, dict[str, Any]] = {}
    for output in outputs:
        earlier = first.setdefault(output[id_field], output)
        assert {**output, "emitted_at": None} == {**earlier, "emitted_at": None}, (
            f"{id_field} {output[id_field]} delivered with different contents:\n"
            f"{earlier}\n{output}")
    return first


# -- the kit handed to the tests -------------------------------------------------------------


class Kit:
    """HTTP, topic and process helpers of the fault tests (and the module's helpers)."""

    Delivery = Delivery
    Feeder = Feeder
    Stream = Stream
    Truth = Truth
    day_end = staticmethod(day_end)
    kpi_state = staticmethod(changelog_state)
    contents = staticmethod(contents)
    kpi_mismatches = staticmethod(kpi_mismatches)
    remembered_ids = staticmethod(remembered_ids)
    counted_events = staticmethod(counted_events)
    same_content = staticmethod(same_content)

    def __init__(self, tmp_path: Path, node: str) -> None:
        self.tmp_path = tmp_path
        self.node = node
        self.started: list[ManagedProcess] = []

    # processes

    def start_worker(self, settings: Settings, name: str) -> ManagedProcess:
        """Start a worker without waiting (for kills during start or rebalance)."""
        ensure_topics(settings)
        process = start_worker(settings, self.tmp_path / f"{name}-{len(self.started)}.log")
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.started:
            try:
                process.stop()
            except Exception as exc:  # keep stopping the others
                print(f"could not stop {process!r}: {exc}")

    # HTTP

    @staticmethod
    def get(settings: Settings, path: str, timeout: float = 15) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(settings.web_url + path, timeout=timeout) as response:
                return response.status, orjson.loads(response.read())
        except urllib.error.HTTPError as error:
            body = error.read()
            try:
                return error.code, orjson.loads(body)
            except orjson.JSONDecodeError:
                return error.code, body

    @staticmethod
    def post(settings: Settings, path: str, body: bytes, headers: dict[str, str],
             timeout: float = 30) -> tuple[int, bytes, dict[str, str]]:
        request = urllib.request.Request(settings.web_url + path, data=body, method="POST")
        request.add_header("Content-Type", "application/json")
        for name, value in headers.items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as error:
            return error.code, error.read(), dict(error.headers)

    def readyz(self, settings: Settings) -> dict[str, Any]:
        status, body = self.get(settings, "/readyz", timeout=5)
        return {"http": status, **(body if isinstance(body, dict) else {})}

    def owned_partitions(self, settings: Settings) -> set[int]:
        """The crm.activities partitions a worker owns (its consumer-lag series)."""
        request = urllib.request.urlopen(settings.web_url + "/metrics", timeout=10)
        with request as response:
            text = response.read().decode()
        return {int(line.split('partition="', 1)[1].split('"', 1)[0])
                for line in text.splitlines() if line.startswith("crm_pulse_consumer_lag{")}

    # topics

    @staticmethod
    def values(settings: Settings, topic: str) -> list[dict[str, Any]]:
        return [orjson.loads(r.value) for r in read_topic(settings, topic)]

    def awards(self, settings: Settings) -> list[dict[str, Any]]:
        return self.values(settings, settings.topics.achievements)

    def alerts(self, settings: Settings, kind: str = "below_target") -> list[dict[str, Any]]:
        return [a for a in self.values(settings, settings.topics.alerts) if a["kind"] == kind]

    def dead_letters(self, settings: Settings) -> list[dict[str, Any]]:
        return self.values(settings, settings.topics.dlq)

    @staticmethod
    def dead_event(letter: dict[str, Any]) -> Any:
        """The original element of a dead letter, decoded when it is JSON."""
        raw = base64.b64decode(letter["original_b64"])
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            return raw

    @staticmethod
    def changelog_end(settings: Settings) -> int:
        """Records in the KPI changelog (sum of its partitions' log ends)."""
        return sum(end_offsets(settings, f"{settings.app_id}-kpi-changelog").values())

    @staticmethod
    def lag(settings: Settings) -> int:
        """crm.activities records not committed by the worker group."""
        ends = end_offsets(settings, settings.topics.activities)
        done = committed(settings)
        return sum(max(0, end - max(0, done.get(p, 0))) for p, end in ends.items())

    @staticmethod
    def producer(settings: Settings) -> KafkaProducer:
        """A producer that keeps the order of its records (one request in flight)."""
        return make_producer(settings, max_in_flight_requests_per_connection=1)

    def produce(self, settings: Settings, records: Iterable[tuple[bytes | None, bytes, float]],
                topic: str | None = None, producer: KafkaProducer | None = None) -> int:
        """Send ``(key, value, timestamp seconds)`` records in order; wait for every ack."""
        active = producer or self.producer(settings)
        futures = []
        try:
            for key, value, timestamp in records:
                futures.append(active.send(topic or settings.topics.activities, key=key,
                                           value=value, timestamp_ms=int(timestamp * 1000)))
            active.flush(60)
            for future in futures:
                future.get(timeout=60)
        finally:
            if producer is None:
                active.close()
        return len(futures)

    def send(self, settings: Settings, deliveries: list[Delivery], truth: Truth | None = None,
             producer: KafkaProducer | None = None) -> int:
        """Produce ``deliveries`` in order (their timestamps) and fold them into ``truth``."""
        self.produce(settings, [(d.key, d.value, d.arrival.timestamp()) for d in deliveries],
                     producer=producer)
        if truth is not None:
            for delivery in deliveries:
                for event in delivery.events or ():
                    truth.deliver(event, delivery.arrival)
        return len(deliveries)

    # time

    @staticmethod
    def daytime_zone() -> ZoneInfo:
        """A zone where it is now between 03:00 and 20:00, so its "today" holds for a test
        (and no pace warning is due with ``work_hours: [0, 24]``, ``at_risk_after: 0.9``)."""
        for name in ZONES:
            if 3 <= datetime.now(ZoneInfo(name)).hour < 20:
                return ZoneInfo(name)
        raise AssertionError("no candidate zone has daytime now")

    @staticmethod
    def today(tz: ZoneInfo) -> date:
        return datetime.now(tz).date()

    def config(self, tz: ZoneInfo, extra: str = "") -> Path:
        """A small KPI model: calls and e-mails per day, a call target of 4 for ``rep``,
        every day a working day, no pace warnings during a test, plus ``extra`` YAML."""
        path = self.tmp_path / "pulse.yaml"
        path.write_text(CONFIG.format(tz=tz.key) + extra)
        return path

    # the table

    def report(self, fault: str, times: int, events_in: int, counted: int,
               unique_in: int | None = None) -> None:
        """One row of the fault table: lost = unique events in - counted (when positive),
        doubled = counted - unique events in (when positive)."""
        unique = events_in if unique_in is None else unique_in
        row = {"test": self.node, "fault injected": fault, "times": times,
               "events in": events_in if unique_in is None else f"{events_in} ({unique} unique)",
               "counted": counted, "lost": max(0, unique - counted),
               "doubled": max(0, counted - unique)}
        FAULT_ROWS.append(row)
        print("\nFAULT ROW " + " | ".join(f"{k}={v}" for k, v in row.items()))


CONFIG = """\
timezone: {tz}
team_timezone: {tz}
periods: [day]
catch_up: 3d
kpis:
  calls: {{title: Calls, count: [call]}}
  emails: {{title: E-mails, count: [email]}}
  uses: {{title: CRM functions used, count: [feature_used]}}
roles:
  rep: {{targets: {{calls: {{day: 4}}}}}}
calendar:
  working_days: [monday, tuesday, wednesday, thursday, friday, saturday, sunday]
alerts: {{at_risk_after: 0.9, work_hours: [0, 24]}}
privacy: {{min_group_size: 1}}
"""


@pytest.fixture
def faults(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Kit]:
    kit = Kit(tmp_path, request.node.name)
    try:
        yield kit
    finally:
        kit.stop_all()


def waiting(what: str, timeout: float, predicate: Callable[[], object], **kwargs: Any) -> float:
    """``wait_until`` that returns the seconds it took (for the timings in the report)."""
    started = time.monotonic()
    wait_until(predicate, timeout, what, **kwargs)
    return time.monotonic() - started


@pytest.fixture
def wait() -> Callable[..., float]:
    return waiting
