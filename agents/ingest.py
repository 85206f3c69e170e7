"""Ingest one batch of ``crm.activities`` records: validate, normalise, dedup, fold.

Pure logic over plain data: the Faust agent hands in records and a table reader and
writes back what :meth:`Ingestor.fold` returns. Exactness without broker transactions
rests on two rules applied here:

- every bucket carries ``o``, the highest source offset already applied to it; a record at
  or below it is a replay and leaves that bucket alone (checked against the stored value,
  so that several events of one record all apply within a batch);
- the ``seen`` buckets remember, per user, arrival day and digest shard, where each
  ``event_id`` was first read (``offset * MAX_EVENTS_PER_RECORD + index``); the same id
  read again at any other position within the horizon is a duplicate delivery.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

from agents.achievements import AchievementRules, Award
from agents.kpis import KpiFolder, new_bucket
from agents.ledger import REASONS, record_key
from agents.ledger import SOURCE as LEDGER_SOURCE
from agents.periods import Calendar, zone
from app.config import PulseConfig
from app.murmur2 import partition_of
from schemas.activity import (
    Rejection,
    checked_event,
    decode_events,
    element_bytes,
    normalise_type,
)

logger = logging.getLogger(__name__)

MAX_EVENTS_PER_RECORD = 100_000
SEEN_SHARDS = "0123456789abcdef"  # dedup memory is split by the digest's first hex digit
_DAY = 86_400
_EARLIEST_TIMESTAMP, _LATEST_TIMESTAMP = 946_684_800.0, 4_102_444_800.0  # 2000..2100


class Record(NamedTuple):
    """The parts of a consumed Kafka record that ingest needs (a tuple: one is made per
    consumed record, and a frozen dataclass costs several times as much to build)."""

    topic: str
    partition: int
    offset: int
    timestamp: float  # seconds; the broker/producer time the record arrived
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class UserInfo:
    """What ingest needs from a roster profile."""

    team_id: str | None
    timezone: str | None
    role: str | None = None


@dataclass
class BatchResult:
    """Table writes (key -> new value), DLQ records and re-keyed forwards of one batch."""

    writes: dict[str, dict[str, Any]] = field(default_factory=dict)
    changed: dict[str, frozenset[str] | None] = field(default_factory=dict)
    """Per written user bucket, the KPIs the batch may have changed (``None``: all, the
    bucket is new); for the serving layer, which then rewrites only those."""
    dead_letters: list[tuple[bytes, bytes]] = field(default_factory=list)
    forwards: list[tuple[bytes, bytes, float]] = field(default_factory=list)
    records: list[tuple[bytes, dict[str, Any]]] = field(default_factory=list)
    """Messages about events naming a CRM record, for the ledger (``crm.records``, keyed by
    record; :func:`agents.ledger.pack` encodes them)."""
    awards: list[Award] = field(default_factory=list)
    applied: int = 0
    duplicates: int = 0
    replayed: int = 0
    counted: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Applied events by (type, source), for the metrics."""
    features: Counter[str] = field(default_factory=Counter)
    occurred: list[float] = field(default_factory=list)
    """Event times of the applied events (latency)."""
    rejected: Counter[str] = field(default_factory=Counter)
    corrected: Counter[str] = field(default_factory=Counter)
    """Applied ledger corrections by reason."""

    def reject(self, record: Record, rejection: Rejection, index: int | None,
               original: bytes, source: str = "unknown") -> None:
        self.dead_letters.append(dead_letter(record, rejection, index, original, source))
        self.rejected[rejection.reason] += 1


def user_key(period_key: str, user_id: str) -> str:
    return f"u|{period_key}|{user_id}"


def team_key(period_key: str, partition: int, team_id: str) -> str:
    return f"t|{period_key}|{partition}|{team_id}"


def flags_key(user_id: str) -> str:
    return f"f||{user_id}"


def statement_key(day_key: str, hour: int, user_id: str) -> str:
    """Statement lines of one person's day (``d:`` key), one value per UTC hour."""
    return f"e|{day_key}|{hour}|{user_id}"


def seen_key(arrival_day: int, digest: str, user_id: str) -> str:
    return f"s|{arrival_day}|{digest[0]}|{user_id}"


def event_digest(event_id: str) -> str:
    return hashlib.blake2b(event_id.encode(), digest_size=8).hexdigest()


def dead_letter(record: Record, rejection: Rejection, index: int | None,
                original: bytes, source: str = "unknown") -> tuple[bytes, bytes]:
    """A ``crm.activities.dlq`` record (key = source) for one rejected record or element."""
    position = f"{record.topic}:{record.partition}:{record.offset}"
    value = {
        "dlq_id": position if index is None else f"{position}:{index}",
        "reason": rejection.reason,
        "message": rejection.message,
        "source": source,
        "received_at": datetime.fromtimestamp(
            min(max(record.timestamp, 0.0), _LATEST_TIMESTAMP), UTC).isoformat(),
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "index": index,
        "original_b64": base64.b64encode(original).decode(),
    }
    return source.encode(), orjson.dumps(value)


class Ingestor:
    """Validates and folds batches; configured once per worker."""

    def __init__(self, config: PulseConfig, max_event_bytes: int, partitions: int,
                 roster: Callable[[str], UserInfo | None]) -> None:
        self.config = config
        self.partitions = partitions
        self.max_event_bytes = max_event_bytes
        self.roster = roster
        self.kpis = KpiFolder(config)
        self.rules = AchievementRules(config)
        self.calendar = Calendar(config.calendar_periods, config.week_start)
        self.default_tz = config.timezone
        self.team_tz = {team_id: team.timezone for team_id, team in config.teams.items()
                        if team.timezone}
        self.grace = config.grace.total_seconds()
        self.horizon_days = max(1, int(config.dedup_horizon.total_seconds() // _DAY))
        self.aliases = {k.lower(): v for k, v in config.type_aliases.items()}
        self.ledger = config.ledger.enabled
        self.statements = config.ledger.statements
        self.revoke = config.ledger.revoke_on_retraction
        self.value_fields = self.kpis.value_fields
        self.correctable = config.retention.day.total_seconds()
        self._partitions: dict[bytes, int] = {}
        self._goals: dict[tuple[str, str | None, str], list[Any]] = {}
        self._kpis_of_type: dict[str, frozenset[str]] = {}

    def _partition_of(self, key: bytes) -> int:
        """:func:`partition_of`, remembered (murmur2 is pure Python)."""
        partition = self._partitions.get(key)
        if partition is None:
            if len(self._partitions) > 200_000:
                self._partitions.clear()
            partition = self._partitions[key] = partition_of(key, self.partitions)
        return partition

    def _step_kpis(self, event_type: str, steps: Sequence[Any]) -> frozenset[str]:
        """The KPIs the steps of an event type may change (remembered per type)."""
        kpis = self._kpis_of_type.get(event_type)
        if kpis is None:
            if len(self._kpis_of_type) > 10_000:
                self._kpis_of_type.clear()
            kpis = self._kpis_of_type[event_type] = frozenset(step.kpi for step in steps)
        return kpis

    def _goals_for(self, period_key: str, role: str | None, event_type: str,
                   steps: Sequence[Any]) -> list[Any]:
        """The rules watching this bucket kind for this person whose KPI an event of this
        type can change (the others cannot cross their goal: before == after)."""
        prefix = period_key.split(":", 1)[0]
        goals = self._goals.get((prefix, role, event_type))
        if goals is None:
            touched = {step.kpi for step in steps}
            goals = [goal for goal in self.rules.watches(period_key, role)
                     if goal[0].rule.kpi in touched]
            if len(self._goals) > 10_000:
                self._goals.clear()
            self._goals[prefix, role, event_type] = goals
        return goals

    def fold(self, records: Sequence[Record], read: Callable[[str], dict[str, Any] | None],
             private_reads: bool = False) -> BatchResult:
        """``private_reads``: ``read`` returns a new value each time (decoded from bytes), so
        the batch may change it without copying it first."""
        batch = _Batch(read, private_reads)
        for record in records:
            self._fold_record(record, batch)
        batch.result.writes = {key: batch.values[key][1] for key in batch.dirty}
        batch.result.changed = {
            key: None if batch.stored.get(key) is None else frozenset(kpis)
            for key, kpis in batch.touched.items()}
        return batch.result

    def _fold_record(self, record: Record, batch: _Batch) -> None:
        result = batch.result
        try:
            if record.value is None:
                raise Rejection("invalid_json", "the record has no value (a tombstone)")
            if not _EARLIEST_TIMESTAMP <= record.timestamp <= _LATEST_TIMESTAMP:
                raise Rejection("bad_timestamp", "record timestamp is not in 2000..2100; "
                                "produce with the default (CreateTime = now)")
            elements = decode_events(record.value)
            if len(elements) > MAX_EVENTS_PER_RECORD:
                raise Rejection("too_large", f"more than {MAX_EVENTS_PER_RECORD} events")
            if len(elements) == 1 and len(record.value) > self.max_event_bytes:
                raise Rejection("too_large", f"event exceeds {self.max_event_bytes} bytes")
        except Rejection as rejection:
            result.reject(record, rejection, None, record.value or b"")
            return
        single = len(elements) == 1
        for index, element in enumerate(elements):
            try:
                self._fold_event(record, index, element, batch)
            except Rejection as rejection:
                self._park(record, None if single else index, element, rejection, result)
            except Exception as exc:  # a bug must not stop the worker: park the event
                logger.exception("ingest: unexpected %s at %s:%d:%d", type(exc).__name__,
                                 record.topic, record.partition, record.offset)
                rejection = Rejection("internal_error", f"processing failed: {type(exc).__name__}")
                self._park(record, None if single else index, element, rejection, result)

    @staticmethod
    def _park(record: Record, index: int | None, element: Any, rejection: Rejection,
              result: BatchResult) -> None:
        """Send one element (or the whole single-event record) to the DLQ."""
        original = record.value if index is None else element_bytes(element, record.value)
        source = element.get("source") if isinstance(element, dict) else None
        result.reject(record, rejection, index, original,
                      source if isinstance(source, str) else "unknown")

    def _fold_event(self, record: Record, index: int, element: Any, batch: _Batch) -> None:
        event, occurred = checked_event(element)
        if len(record.value) > self.max_event_bytes and len(orjson.dumps(event)) > (
            self.max_event_bytes
        ):
            raise Rejection("too_large", f"event exceeds {self.max_event_bytes} bytes")
        user_id = event["user_id"]
        user_key_bytes = user_id.encode()
        if record.key != user_key_bytes or record.partition != self._partition_of(
            user_key_bytes
        ):
            # Not where its user's state lives: re-send it keyed by the user. A replay of
            # this record sends it again; the copies are deduplicated by event_id.
            batch.result.forwards.append((user_key_bytes, orjson.dumps(event), record.timestamp))
            return
        profile = self.roster(user_id)
        if profile is None and self.config.roster.strict:
            raise Rejection("unknown_user", "user_id is not in the roster (roster.strict)")
        event["type"] = normalise_type(event["type"], self.aliases)
        keys, day_end = self.calendar.keys_for(
            occurred, zone((profile and profile.timezone) or self.default_tz))
        if occurred > record.timestamp + _DAY:
            raise Rejection("schema:occurred_at", "occurred_at is more than a day in the future")
        correction = event.get("correction")
        if correction is not None:
            _check_correction(event, correction)
        digest = event_digest(event["event_id"])
        position = record.offset * MAX_EVENTS_PER_RECORD + index
        first_seen = self._first_seen(record, user_id, digest, batch)
        if (first_seen is not None and first_seen != position) or (
                correction is not None and self._corrected_before(event, keys, occurred,
                                                                  position, batch)):
            batch.result.duplicates += 1
            return
        steps = self.kpis.steps_for(event["type"])
        plan = self.kpis.plan(event["type"], event["action"])
        contributes = correction is not None or plan.contributes
        late = record.timestamp > day_end + self.grace
        if correction is not None:
            if record.timestamp - occurred > self.correctable:
                raise Rejection("late", "a correction of a day past retention.day")
        elif late and contributes:
            raise Rejection("late", "arrived after its day ended plus the grace period")
        if first_seen is None:
            self._remember(record, user_id, digest, position, batch)
        if self.ledger and correction is None:
            self._to_ledger(event, contributes, batch.result)
        if late and correction is None:  # a record change that counts nothing: ledger only
            batch.result.applied += 1
            return
        team_id = event.get("team_id") or (profile.team_id if profile else None)
        role = profile.role if profile else None
        applied = False
        event_type = event["type"]
        for period_key in keys:
            key = user_key(period_key, user_id)
            goals = self._goals_for(period_key, role, event_type, steps)
            before = [self.rules.value(batch.get(key), w.rule.kpi) for w, _ in goals] if (
                goals) else ()
            bucket = batch.claim(key, record, _new_bucket)
            if bucket is None:
                continue
            applied = True
            if correction is None:
                self.kpis.apply(bucket, plan, event)
            else:
                self.kpis.correct(bucket, plan, correction["count"], correction["sums"])
            touched = batch.touched.get(key)
            if touched is None:
                touched = batch.touched[key] = set()
            touched.update(self._step_kpis(event_type, steps))
            if goals:
                batch.result.awards.extend(self.rules.crossed(
                    goals, before, bucket, period_key, user_id, team_id, event["occurred_at"]))
                if correction is not None and self.revoke:
                    batch.result.awards.extend(self.rules.uncrossed(
                        goals, before, bucket, period_key, user_id, team_id,
                        event["occurred_at"]))
        if event.get("feature") in self.rules.flags and event["action"] in ("created", "completed"):
            state = batch.claim(flags_key(user_id), record, _new_flags)
            if state is not None:
                batch.result.awards.extend(self.rules.first_uses(
                    state["r"], event["feature"], user_id, team_id, event["occurred_at"]))
        if team_id:
            team_keys, _ = self.calendar.keys_for(
                occurred, zone(self.team_tz.get(team_id, self.config.team_timezone)))
            for period_key in team_keys:
                bucket = batch.claim(team_key(period_key, record.partition, team_id), record,
                                     _new_bucket)
                if bucket is None:
                    continue
                if correction is None:
                    self.kpis.apply(bucket, plan, event)
                else:
                    self.kpis.correct(bucket, plan, correction["count"], correction["sums"])
        if contributes:  # its own key's watermark decides, as for every bucket
            self._state_line(record, event, occurred, keys, correction, position, batch)
        if not (applied or not steps):
            batch.result.replayed += 1
        elif correction is not None:
            batch.result.applied += 1
            batch.result.corrected[correction["reason"]] += 1
        else:
            batch.result.applied += 1
            batch.result.counted[event["type"], event["source"]] += 1
            batch.result.occurred.append(occurred)
            if "feature" in event:
                batch.result.features[event["feature"]] += 1

    def _to_ledger(self, event: dict[str, Any], contributes: bool,
                   result: BatchResult) -> None:
        """Forward an event naming a CRM record to its ledger partition."""
        key = record_key(event)
        if key is None:
            return
        message = {name: event.get(name) for name in _LEDGER_FIELDS}
        message["counted"] = contributes
        message["sums"] = {name: value for name in self.value_fields
                           if _is_number(value := event.get(name))}
        result.records.append((key, message))

    def _corrected_before(self, event: dict[str, Any], keys: Sequence[str], occurred: float,
                          position: int, batch: _Batch) -> bool:
        """Whether this correction was applied from another position: its statement line
        says so for as long as the line's day is kept, beyond the dedup horizon (a ledger
        rebuilt by a replay sends its corrections again, with the same ids)."""
        key = self._line_key(event, keys, occurred)
        lines = batch.get(key) if key is not None else None
        return lines is not None and any(
            line["id"] == event["event_id"] and line.get("pos") != position
            for line in lines["lines"])

    def _line_key(self, event: dict[str, Any], keys: Sequence[str],
                  occurred: float) -> str | None:
        if "day" not in self.config.periods:
            return None
        day_key = next((key for key in keys if key.startswith("d:")), None)
        if day_key is None:
            return None
        return statement_key(day_key, int(occurred // 3600), event["user_id"])

    def _state_line(self, record: Record, event: dict[str, Any], occurred: float,
                    keys: Sequence[str], correction: dict[str, Any] | None,
                    position: int, batch: _Batch) -> None:
        """The audit statement line of an applied event (or correction). Corrections get
        one even without ``ledger.statements``: it is how a repeated one is recognised."""
        if not (self.statements or correction is not None):
            return
        key = self._line_key(event, keys, occurred)
        if key is None:
            return
        lines = batch.claim(key, record, _new_lines)
        if lines is None:
            return
        line = {"id": event["event_id"], "type": event["type"], "action": event["action"],
                "at": event["occurred_at"], "src": event.get("source")}
        if event.get("record_id"):
            line["rt"], line["ri"] = event.get("record_type"), event["record_id"]
        if correction is None:
            line["c"] = 1
            line["f"] = {name: event[name] for name in self.value_fields if name in event}
        else:
            line["c"], line["f"] = correction["count"], correction["sums"]
            line["fix"] = {k: correction[k] for k in ("reason", "of", "by")}
            line["pos"] = position
        lines["lines"].append(line)

    def _first_seen(self, record: Record, user_id: str, digest: str,
                    batch: _Batch) -> int | None:
        """Where this event id was first read within the horizon, if it was.

        The day after the arrival day is searched too: producers' clocks differ, so a
        later offset may carry an earlier timestamp.
        """
        arrival_day = int(record.timestamp // _DAY)
        get = batch.get
        suffix = f"|{digest[0]}|{user_id}"
        for day in range(arrival_day - self.horizon_days, arrival_day + 2):
            seen = get(f"s|{day}{suffix}")  # seen_key(day, digest, user_id)
            if seen is not None:
                position = seen["ids"].get(digest)
                if position is not None:
                    return int(position)
        return None

    @staticmethod
    def _remember(record: Record, user_id: str, digest: str, position: int,
                  batch: _Batch) -> None:
        key = seen_key(int(record.timestamp // _DAY), digest, user_id)
        seen = batch.mutable(key)
        if seen is None:
            seen = {"p": record.partition, "ids": {}}
            batch.values[key] = (-1, seen)
        seen["ids"][digest] = position
        batch.dirty.add(key)


_LEDGER_FIELDS = ("event_id", "user_id", "team_id", "type", "action", "occurred_at", "source",
                  "record_type", "record_id", "previous_owner")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_correction(event: dict[str, Any], correction: Any) -> None:
    """Corrections are the ledger's own events, in its shape (agents/ledger.py)."""
    if event.get("source") != LEDGER_SOURCE or not isinstance(correction, dict):
        raise Rejection("schema:correction", "only the ledger writes corrections")
    count, sums = correction.get("count"), correction.get("sums")
    if (isinstance(count, bool) or count not in (-1, 0, 1) or not isinstance(sums, dict)
            or not all(_is_number(v) and math.isfinite(v) for v in sums.values())
            or correction.get("reason") not in REASONS):
        raise Rejection("schema:correction",
                        "a correction needs count -1/0/1, sums {field: number} and a reason "
                        f"({', '.join(REASONS)})")


_UNREAD: Any = object()


class _Batch:
    """The table values one batch reads and changes.

    ``values[key] = (stored_offset, value)``: the offset stored before this batch decides
    replays, so the events of one record (same offset) all apply. ``stored`` caches every
    table read of the batch, misses included (most dedup lookups are misses).

    Stored values are copied before they change (:func:`_copy`) unless every read gives a
    private value: the table's own values stay as they were until the batch is written back.
    """

    def __init__(self, read: Callable[[str], dict[str, Any] | None],
                 private_reads: bool = False) -> None:
        self.read = read
        self.copy = (lambda value: value) if private_reads else _copy
        self.values: dict[str, tuple[int, dict[str, Any]]] = {}
        self.stored: dict[str, dict[str, Any] | None] = {}
        self.dirty: set[str] = set()
        self.touched: dict[str, set[str]] = {}
        self.result = BatchResult()

    def _stored(self, key: str) -> dict[str, Any] | None:
        value = self.stored.get(key, _UNREAD)
        if value is _UNREAD:
            value = self.stored[key] = self.read(key)
        return value

    def get(self, key: str) -> dict[str, Any] | None:
        entry = self.values.get(key)
        if entry is not None:
            return entry[1]
        value = self.stored.get(key, _UNREAD)
        if value is _UNREAD:
            value = self.stored[key] = self.read(key)
        return value

    def mutable(self, key: str) -> dict[str, Any] | None:
        """A private copy of the value to change (``None`` if there is none yet)."""
        entry = self.values.get(key)
        if entry is not None:
            return entry[1]
        stored = self._stored(key)
        if stored is None:
            return None
        copy = self.copy(stored)
        self.values[key] = (stored.get("o", -1), copy)
        return copy

    def claim(self, key: str, record: Record,
              initial: Callable[[int], dict[str, Any]]) -> dict[str, Any] | None:
        """The value to update for ``record``, or ``None`` if it already holds the record.

        ``initial(partition)`` makes the value of a key not stored yet.
        """
        entry = self.values.get(key)
        if entry is None:
            stored = self._stored(key)
            entry = (-1, initial(record.partition)) if stored is None else (
                stored["o"], self.copy(stored))
            self.values[key] = entry
        stored_offset, value = entry
        offset = record.offset
        if offset <= stored_offset:
            return None
        if offset > value["o"]:
            value["o"] = offset
        self.dirty.add(key)
        return value


def _new_bucket(partition: int) -> dict[str, Any]:
    return new_bucket(partition, -1)


def _new_lines(partition: int) -> dict[str, Any]:
    return {"p": partition, "o": -1, "lines": []}


def _new_flags(partition: int) -> dict[str, Any]:
    return {"p": partition, "o": -1, "r": {}}


def _copy(value: dict[str, Any]) -> dict[str, Any]:
    """Deep copy: a batch that fails half-way must not have changed the stored values."""
    return orjson.loads(orjson.dumps(value))
