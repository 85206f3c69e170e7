"""The record ledger (pure): what each CRM record has contributed, and its corrections.

The ingest forwards every event about a CRM record (``record_type`` + ``record_id``) that it
accepted to ``crm.records``, keyed by the record, with what the event contributed to the
KPIs (a count and the summed fields) when it contributed. So one ledger partition sees all
changes of one record. The ledger keeps, per record, its *lines* (one per contributing
event: who is credited, when it happened, count and sums), its owners and whether it is
deleted, and turns changes of the record into canonical compensating events for
``crm.activities``, keyed by the user they affect:

- ``deleted``: every live line is retracted (count -1, sums negated); lines that arrive
  after the deletion (reordered deliveries) are retracted at once;
- ``reassigned``: lines credited to a previous owner move to the new owner (-1 for the
  old, +1 for the new), in the period the line was earned (its ``occurred_at``); lines of
  other people (a colleague's edit) stay;
- ``updated`` with a summed field (e.g. ``amount``): each live line that carries that
  field gets the difference;
- anything else only adds its own line.

The ingest writes a batch's messages as JSON arrays, one record per ledger partition and
up to :data:`MESSAGES_PER_RECORD` messages (:func:`pack`): one Kafka record per event cost
the ledger agent Faust's per-record path for every event. Single-message records are read
too.

Corrections carry deterministic ids (hash of the record, the triggering event and the
line), so a replay re-sends the same events and the ingest's duplicate check drops them.
A correction changes counts and sums; distinct-value KPIs are not corrected. A record's
value carries ``t``, the newest event time it has seen; :mod:`agents.retention` drops it
once that is older than ``retention.day`` (its days can no longer be corrected).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from schemas.activity import Rejection

SOURCE = "ledger"
MESSAGES_PER_RECORD = 500
"""Messages per ``crm.records`` record (~300 bytes each: well below a producer batch)."""
REASONS = ("deleted", "reassigned", "updated")
_FIELDS = ("event_id", "user_id", "type", "action", "occurred_at", "record_type", "record_id")


def ledger_key(record_type: str, record_id: str) -> str:
    return f"l|{record_type}|{record_id}"


def record_key(event: dict[str, Any]) -> bytes | None:
    """The ``crm.records`` key of an event's CRM record (None: it names no record)."""
    record_type, record_id = event.get("record_type"), event.get("record_id")
    if not record_type or not record_id:
        return None
    return f"{record_type}|{record_id}".encode()


def pack(messages: list[tuple[bytes, dict[str, Any]]],
         partition_of: Callable[[bytes], int]) -> list[tuple[bytes, bytes]]:
    """``(record key, message)`` pairs as records of JSON arrays, one or more per partition.

    Each record's key is its first message's key, so the producer's partitioner (the one
    ``partition_of`` follows) sends it to the partition of all its messages; the messages
    keep their order within the partition.
    """
    by_partition: dict[int, list[tuple[bytes, dict[str, Any]]]] = {}
    for key, message in messages:
        by_partition.setdefault(partition_of(key), []).append((key, message))
    records = []
    for pairs in by_partition.values():
        for start in range(0, len(pairs), MESSAGES_PER_RECORD):
            chunk = pairs[start:start + MESSAGES_PER_RECORD]
            records.append((chunk[0][0], orjson.dumps([message for _, message in chunk])))
    return records


def correction_id(record: str, trigger: str, line: str, part: str) -> str:
    digest = hashlib.sha256(f"{record}\x1f{trigger}\x1f{line}\x1f{part}".encode())
    return f"fix:{digest.hexdigest()[:32]}"


@dataclass
class LedgerResult:
    """New ledger values and the compensating events (key, value) of one batch."""

    writes: dict[str, dict[str, Any]] = field(default_factory=dict)
    corrections: list[tuple[bytes, bytes]] = field(default_factory=list)
    rejected: list[tuple[int, int, bytes | None, Rejection]] = field(default_factory=list)
    """(partition, offset, value, why) of messages the ledger cannot read (for the DLQ)."""
    duplicates: int = 0


class Ledger:
    """Applies ``crm.records`` messages to ledger values."""

    def fold(self, messages: list[tuple[int, int, bytes]],
             read: Callable[[str], dict[str, Any] | None]) -> LedgerResult:
        """``messages``: (partition, offset, value) in log order; a value is one message or
        a JSON array of them (:func:`pack`).

        A record's offset at or below the one stored before this batch is a replay: the
        messages of one record all apply in the same batch, so a stored offset covers them
        all. Within the batch, event ids catch redeliveries.
        """
        result = LedgerResult()
        stored_offsets: dict[str, int] = {}
        for partition, offset, raw in messages:
            for index, contribution in _parse(raw):
                if contribution is None:
                    result.rejected.append((partition, offset, raw, Rejection(
                        "invalid_json", f"message {index} is not a ledger message: needs "
                        f"{', '.join(_FIELDS)}")))
                    continue
                key = ledger_key(contribution["record_type"], contribution["record_id"])
                entry = result.writes.get(key)
                if entry is None:
                    stored = read(key)
                    entry = _empty(partition) if stored is None else orjson.loads(
                        orjson.dumps(stored))
                    stored_offsets[key] = entry["o"]
                if offset <= stored_offsets[key] or contribution["event_id"] in entry["ids"]:
                    result.duplicates += 1  # a replay (offset) or a redelivery (event id)
                    continue
                entry["o"] = offset
                entry["t"] = max(entry.get("t", 0.0), _seconds(contribution["occurred_at"]))
                entry["ids"][contribution["event_id"]] = 1
                self._apply(entry, contribution, result.corrections)
                result.writes[key] = entry
        return result

    def _apply(self, entry: dict[str, Any], event: dict[str, Any],
               out: list[tuple[bytes, bytes]]) -> None:
        fix = _Fixer(event, out)
        action, user = event["action"], event["user_id"]
        if event.get("counted"):
            line = {"u": user, "t": event.get("team_id"), "type": event["type"],
                    "action": action, "at": event["occurred_at"], "c": 1,
                    "s": dict(event.get("sums") or {})}
            entry["lines"][event["event_id"]] = line
            if entry["deleted"]:
                fix.retract(event["event_id"], line, "deleted")
            elif entry["owners"] and user in entry["owners"][:-1]:
                fix.move(event["event_id"], line, entry["owners"][-1])
        if action == "deleted":
            entry["deleted"] = True
            for line_id, line in entry["lines"].items():
                if line["c"]:
                    fix.retract(line_id, line, "deleted")
        elif action == "reassigned":
            previous = event.get("previous_owner")
            owners = [o for o in entry["owners"] if o != user]
            if previous and previous != user and previous not in owners:
                owners.append(previous)
            if not owners and entry["lines"]:  # the ledger knew no owner: the credited people
                owners = sorted({line["u"] for line in entry["lines"].values()} - {user})
            entry["owners"] = [*owners, user]
            for line_id, line in entry["lines"].items():
                if line["c"] and line["u"] in owners and not entry["deleted"]:
                    fix.move(line_id, line, user)
        else:
            if not entry["owners"] and event.get("counted"):
                entry["owners"] = [user]
            if action == "updated" and not entry["deleted"]:
                for line_id, line in entry["lines"].items():
                    if line_id != event["event_id"] and line["c"]:
                        fix.update(line_id, line, event.get("sums") or {})


def _parse(raw: bytes | None) -> list[tuple[int, dict[str, Any] | None]]:
    """The ``(index, message)`` pairs of a ``crm.records`` value; ``None`` for each that is
    not a message (only the ingest writes them, but a stray producer must not stop the
    worker)."""
    try:
        decoded = orjson.loads(raw or b"")
    except orjson.JSONDecodeError:
        return [(0, None)]
    elements = decoded if isinstance(decoded, list) else [decoded]
    return [(index, _message(element)) for index, element in enumerate(elements)]


def _message(message: Any) -> dict[str, Any] | None:
    if not isinstance(message, dict) or not all(
            isinstance(message.get(name), str) for name in _FIELDS):
        return None
    if not isinstance(message.get("sums") or {}, dict):
        return None
    return message


def _seconds(occurred_at: str) -> float:
    """POSIX seconds of an RFC 3339 time (0 when unreadable: expires first)."""
    try:
        return datetime.fromisoformat(occurred_at).timestamp()
    except ValueError:
        return 0.0


def _empty(partition: int) -> dict[str, Any]:
    return {"p": partition, "o": -1, "owners": [], "deleted": False, "ids": {}, "lines": {}}


class _Fixer:
    """Writes the compensating events of one triggering event."""

    def __init__(self, trigger: dict[str, Any], out: list[tuple[bytes, bytes]]) -> None:
        self.trigger, self.out = trigger, out
        self.record = f"{trigger['record_type']}|{trigger['record_id']}"

    def _emit(self, line_id: str, line: dict[str, Any], part: str, user: str,
              team: str | None, count: int, sums: dict[str, float], reason: str) -> None:
        event = {
            "event_id": correction_id(self.record, self.trigger["event_id"], line_id, part),
            "occurred_at": line["at"], "user_id": user, "type": line["type"],
            "action": line["action"], "source": SOURCE,
            "record_type": self.trigger["record_type"], "record_id": self.trigger["record_id"],
            "correction": {"count": count, "sums": sums, "reason": reason, "of": line_id,
                           "by": self.trigger["event_id"]},
        }
        if team:
            event["team_id"] = team
        self.out.append((user.encode(), orjson.dumps(event)))

    def retract(self, line_id: str, line: dict[str, Any], reason: str) -> None:
        self._emit(line_id, line, "out", line["u"], line["t"], -line["c"],
                   {name: -value for name, value in line["s"].items()}, reason)
        line["c"], line["s"] = 0, {}

    def move(self, line_id: str, line: dict[str, Any], owner: str) -> None:
        """Credit the line to ``owner`` instead (its team: the owner's, from the roster)."""
        if line["u"] == owner:
            return
        sums = dict(line["s"])
        self.retract(line_id, line, "reassigned")
        line.update(u=owner, t=None, c=1, s=sums)
        self._emit(line_id, line, "in", owner, None, 1, dict(sums), "reassigned")

    def update(self, line_id: str, line: dict[str, Any], sums: dict[str, float]) -> None:
        delta = {name: value - line["s"][name] for name, value in sums.items()
                 if name in line["s"] and value != line["s"][name]}
        if not delta:
            return
        for name, change in delta.items():
            line["s"][name] += change
        self._emit(line_id, line, "delta", line["u"], line["t"], 0, delta, "updated")
