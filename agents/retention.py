"""Which state keys have outlived their retention (pure; the cleanup timer deletes them)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from agents.periods import KIND_OF_PREFIX, Calendar
from app.config import PulseConfig

_DAY = 86_400


def expired_keys(items: Iterable[tuple[str, Any]], config: PulseConfig, now: float,
                 partitions: set[int],
                 decode: Callable[[Any], Any] | None = None) -> list[tuple[str, int]]:
    """``(key, partition)`` of buckets, dedup memory and ledger records that may be dropped
    at ``now``.

    Only keys of ``partitions`` (the ones this worker owns) are considered, so a worker
    never writes tombstones for standby state. A day of slack covers timezones. Values
    stored encoded are read with ``decode``, and only where the key alone does not decide
    (a ledger record's newest time, the partition of an expired key).
    """
    today = datetime.fromtimestamp(now, UTC).date()
    oldest_seen_day = int(now // _DAY) - int(config.dedup_horizon.total_seconds() // _DAY) - 1
    oldest_record = now - config.retention.day.total_seconds() - _DAY
    doomed = []
    for key, stored in items:
        scope, label = key.split("|", 2)[:2]
        if scope == "s":
            expired = int(label) < oldest_seen_day
        elif scope != "l":
            kind = KIND_OF_PREFIX.get(label.split(":", 1)[0])
            if kind is None:  # not kept per period: first-use flags, streak and best state
                continue
            keep_days = getattr(config.retention, kind).days + 1
            expired = (today - Calendar.key_start(label)).days > keep_days + _span_days(kind)
        else:
            expired = True  # a ledger record: kept while its newest day can be corrected
        if not expired:
            continue
        value = stored if decode is None else decode(stored)
        partition = value.get("p") if isinstance(value, dict) else None
        if partition not in partitions:
            continue
        if scope != "l" or value.get("t", now) < oldest_record:
            doomed.append((key, partition))
    return doomed


def _span_days(kind: str) -> int:
    """Retention counts from a period's end; key_start gives its start."""
    return {"hour": 0, "day": 0, "week": 7, "month": 31, "quarter": 92, "year": 366}[kind]



