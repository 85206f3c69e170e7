"""Builders for canonical events and consumed records used across tests."""

from __future__ import annotations

from itertools import count
from typing import Any

import orjson

from agents.ingest import Record

_ids = count()


def event(user_id: str = "alice", type: str = "call", occurred_at: str = "2026-11-23T10:00:00Z",
          **fields: Any) -> dict[str, Any]:
    """A valid canonical event; every call gets a fresh event_id unless one is given."""
    base = {"event_id": f"evt-{next(_ids)}", "occurred_at": occurred_at, "user_id": user_id,
            "type": type}
    base.update(fields)
    return base


def record(value: Any, offset: int, key: str | bytes | None = None, partition: int = 0,
           arrival: float = 1795435200.0, topic: str = "crm.activities") -> Record:
    """A consumed record; ``arrival`` defaults to 2026-11-23T12:00Z; key = the user id."""
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    if key is None and isinstance(value, dict):
        key = value.get("user_id")
    if key is None and isinstance(value, list) and value and isinstance(value[0], dict):
        key = value[0].get("user_id")
    key_bytes = key.encode() if isinstance(key, str) else key
    return Record(topic, partition, offset, arrival, key_bytes, raw)
