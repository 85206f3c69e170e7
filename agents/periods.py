"""Calendar arithmetic in each user's timezone: period keys, bounds and lateness.

Keys are short strings that sort by time within a kind: ``h:2026-11-23T14``,
``d:2026-11-23``, ``w:2026-11-23`` (the week's first day), ``m:2026-11``,
``q:2026-Q4``, ``y:2026``. Rolling periods (``rolling_7d``, ``rolling_30d``) are not
stored; they are the sum of their day buckets.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from app.config import ROLLING_DAYS, WEEKDAYS

_QUARTER_HOUR = 900
PREFIX_OF_KIND = {"hour": "h", "day": "d", "week": "w", "month": "m", "quarter": "q", "year": "y"}
KIND_OF_PREFIX = {prefix: kind for kind, prefix in PREFIX_OF_KIND.items()}


@lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@dataclass(frozen=True)
class Period:
    """One period in a timezone: its kind, bounds and the bucket keys that make it up."""

    kind: str
    start: datetime
    end: datetime
    bucket_keys: tuple[str, ...]

    def as_dict(self) -> dict[str, str]:
        tz = self.start.tzinfo
        return {
            "kind": self.kind,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "tz": getattr(tz, "key", str(tz)),
        }


def _local_midnight(day: date, tz: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=tz)


def _add_months(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


class Calendar:
    """Period keys and bounds for the configured kinds and week start."""

    def __init__(self, kinds: tuple[str, ...], week_start: str = "monday") -> None:
        self.kinds = tuple(k for k in PREFIX_OF_KIND if k in kinds)
        self.week_start = WEEKDAYS.index(week_start)
        self._slot_cache: dict[tuple[str, int], tuple[tuple[str, ...], float]] = {}

    # -- hot path -------------------------------------------------------------------------

    def keys_for(self, ts: float, tz: ZoneInfo) -> tuple[tuple[str, ...], float]:
        """Bucket keys of every calendar kind holding ``ts``, and the end of its local day.

        Cached per timezone and quarter hour of UTC: every UTC offset in use since 2000, and
        every change of one, falls on a whole quarter hour, so the local date and hour are
        the same throughout one.
        """
        slot = (tz.key, int(ts // _QUARTER_HOUR))
        cached = self._slot_cache.get(slot)
        if cached is None:
            if len(self._slot_cache) > 50_000:
                self._slot_cache.clear()
            local = datetime.fromtimestamp(ts, tz)
            day = local.date()
            keys = tuple(self._day_keys(day))
            if "hour" in self.kinds:
                keys = (f"h:{day.isoformat()}T{local.hour:02d}", *keys)
            day_end = _local_midnight(day + timedelta(days=1), tz).timestamp()
            cached = self._slot_cache[slot] = (keys, day_end)
        return cached

    def _day_keys(self, day: date) -> list[str]:
        keys = []
        for kind in self.kinds:
            if kind != "hour":
                keys.append(self.key_of(kind, day))
        return keys

    # -- keys and bounds ------------------------------------------------------------------

    def key_of(self, kind: str, day: date, hour: int = 0) -> str:
        if kind == "hour":
            return f"h:{day.isoformat()}T{hour:02d}"
        return f"{PREFIX_OF_KIND[kind]}:{self._label(kind, self.start_day(kind, day))}"

    def start_day(self, kind: str, day: date) -> date:
        if kind == "week":
            return day - timedelta(days=(day.weekday() - self.week_start) % 7)
        if kind == "month":
            return day.replace(day=1)
        if kind == "quarter":
            return date(day.year, (day.month - 1) // 3 * 3 + 1, 1)
        if kind == "year":
            return date(day.year, 1, 1)
        return day

    @staticmethod
    def _label(kind: str, start: date) -> str:
        if kind == "month":
            return f"{start.year}-{start.month:02d}"
        if kind == "quarter":
            return f"{start.year}-Q{(start.month - 1) // 3 + 1}"
        if kind == "year":
            return str(start.year)
        return start.isoformat()

    def period(self, kind: str, at: datetime, tz: ZoneInfo) -> Period:
        """The period of ``kind`` that contains instant ``at``, seen in ``tz``."""
        local = at.astimezone(tz)
        day = local.date()
        if kind in ROLLING_DAYS:
            days = ROLLING_DAYS[kind]
            first = day - timedelta(days=days - 1)
            keys = tuple(self.key_of("day", first + timedelta(days=i)) for i in range(days))
            return Period(kind, _local_midnight(first, tz),
                          _local_midnight(day + timedelta(days=1), tz), keys)
        if kind == "hour":
            start = local.replace(minute=0, second=0, microsecond=0)
            end = (start.astimezone(ZoneInfo("UTC")) + timedelta(hours=1)).astimezone(tz)
            return Period(kind, start, end, (self.key_of("hour", day, local.hour),))
        first = self.start_day(kind, day)
        if kind == "day":
            after = first + timedelta(days=1)
        elif kind == "week":
            after = first + timedelta(days=7)
        else:
            after = _add_months(first, {"month": 1, "quarter": 3, "year": 12}[kind])
        return Period(kind, _local_midnight(first, tz), _local_midnight(after, tz),
                      (self.key_of(kind, first),))

    @staticmethod
    def key_start(key: str) -> date:
        """First local day covered by a stored bucket key (for retention)."""
        prefix, label = key.split(":", 1)
        if prefix == "h":
            return date.fromisoformat(label[:10])
        if prefix == "q":
            year, quarter = label.split("-Q")
            return date(int(year), (int(quarter) - 1) * 3 + 1, 1)
        if prefix == "m":
            return date.fromisoformat(label + "-01")
        if prefix == "y":
            return date(int(label), 1, 1)
        return date.fromisoformat(label)
