"""Audit statements (pure): every event and correction behind a person's KPI values.

The ingest writes one line per applied event (and per ledger correction) next to the
buckets it changes, under ``e|<day key>|<UTC hour>|<user>`` (:func:`agents.ingest.
statement_key`), with the same offset watermark, so the lines hold exactly what the
buckets hold. A statement reads the lines of a period and folds them again with the same
KPI folder: its totals equal the KPI values of the period's buckets (counts and sums
exactly; distinct values as far as the lines are kept).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from agents.ingest import statement_key
from agents.kpis import KpiFolder, new_bucket
from agents.periods import Calendar

Reader = Callable[[str], dict[str, Any] | None]


def period_lines(calendar: Calendar, read: Reader, user_id: str, tz: ZoneInfo,
                 start: datetime, end: datetime) -> list[dict[str, Any]]:
    """The person's lines of events that happened in ``[start, end)``, oldest first."""
    lines = []
    first, last = start.timestamp(), end.timestamp()
    day = start.astimezone(tz).date()
    while datetime(day.year, day.month, day.day, tzinfo=tz).timestamp() < last:
        day_key = calendar.key_of("day", day)
        day_start = max(first, datetime(day.year, day.month, day.day, tzinfo=tz).timestamp())
        following = day + timedelta(days=1)
        day_end = min(last, datetime(following.year, following.month, following.day,
                                     tzinfo=tz).timestamp())
        for hour in range(int(day_start // 3600), int((day_end - 1) // 3600) + 1):
            value = read(statement_key(day_key, hour, user_id))
            if value:
                lines += [{**line, "u": user_id} for line in value["lines"]
                          if first <= datetime.fromisoformat(line["at"]).timestamp() < last]
        day = following
    return sorted(lines, key=lambda line: (line["at"], line["id"]))


def fold_line(kpis: KpiFolder, bucket: dict[str, Any], line: dict[str, Any]) -> None:
    """Apply one line to ``bucket`` exactly as the ingest applied its event."""
    plan = kpis.plan(line["type"], line["action"])
    if "fix" in line:
        kpis.correct(bucket, plan, line["c"], line["f"])
    else:
        kpis.apply(bucket, plan, line["f"])


def statement(kpis: KpiFolder, lines: list[dict[str, Any]]) -> dict[str, Any]:
    """Per KPI: its value and the lines behind it, each with what it contributed."""
    alone = []  # one bucket per line: what it contributed; their union is the period
    by_kpi: dict[str, list[dict[str, Any]]] = {name: [] for name in kpis.names}
    for line in lines:
        bucket = new_bucket(0, -1)
        fold_line(kpis, bucket, line)
        alone.append(bucket)
        for kpi, amount in _contributions(bucket):
            by_kpi[kpi].append({**_shown(line), "value": amount})
    values = kpis.read(alone)
    return {name: {"value": values[name], "lines": by_kpi[name]} if name not in kpis.ratios
            else {"value": values[name], "of": list(kpis.ratios[name])}
            for name in kpis.names}


def _contributions(bucket: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for kpi, number in bucket["n"].items():
        if number:
            yield kpi, number
    for kpi, values in bucket["s"].items():
        for value in values:
            yield kpi, value


def _shown(line: dict[str, Any]) -> dict[str, Any]:
    shown = {"user_id": line["u"], "event_id": line["id"], "occurred_at": line["at"],
             "type": line["type"], "action": line["action"], "source": line.get("src"),
             "record_type": line.get("rt"), "record_id": line.get("ri")}
    if "fix" in line:
        shown["correction"] = line["fix"]
    return shown


CSV_COLUMNS = ("kpi", "value", "user_id", "event_id", "occurred_at", "type", "action", "source",
               "record_type", "record_id", "correction_reason", "correction_of",
               "correction_by")


def to_csv(kpis: dict[str, Any]) -> str:
    """A statement as CSV: one row per KPI line, then one ``total`` row per KPI."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for kpi, body in kpis.items():
        for line in body.get("lines", ()):
            fix = line.get("correction") or {}
            writer.writerow([kpi, line["value"], line["user_id"], line["event_id"],
                             line["occurred_at"], line["type"], line["action"], line["source"],
                             line["record_type"], line["record_id"], fix.get("reason"),
                             fix.get("of"), fix.get("by")])
        writer.writerow([kpi, body["value"], "total"] + [""] * (len(CSV_COLUMNS) - 3))
    return out.getvalue()
