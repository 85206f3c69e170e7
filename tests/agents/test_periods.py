from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.periods import Calendar, zone

ALL = ("hour", "day", "week", "month", "quarter", "year")


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_call_at_2330_in_sydney_counts_on_the_sydney_day() -> None:
    calendar = Calendar(ALL)
    keys, day_end = calendar.keys_for(ts("2026-11-23T12:30:00Z"), zone("Australia/Sydney"))
    assert keys == ("h:2026-11-23T23", "d:2026-11-23", "w:2026-11-23", "m:2026-11",
                    "q:2026-Q4", "y:2026")
    assert day_end == ts("2026-11-24T00:00:00+11:00")


def test_same_instant_is_another_day_in_utc() -> None:
    keys, _ = Calendar(("day",)).keys_for(ts("2026-11-23T13:30:00Z"), zone("Australia/Sydney"))
    assert keys == ("d:2026-11-24",)
    keys, _ = Calendar(("day",)).keys_for(ts("2026-11-23T13:30:00Z"), zone("UTC"))
    assert keys == ("d:2026-11-23",)


@pytest.mark.parametrize(("week_start", "expected"), [("monday", "w:2026-11-23"),
                                                     ("sunday", "w:2026-11-22")])
def test_week_starts_on_the_configured_day(week_start: str, expected: str) -> None:
    calendar = Calendar(("week",), week_start)
    keys, _ = calendar.keys_for(ts("2026-11-25T12:00:00Z"), zone("UTC"))
    assert keys == (expected,)


def test_month_and_year_boundaries_follow_local_time() -> None:
    calendar = Calendar(("month", "year"))
    keys, _ = calendar.keys_for(ts("2026-12-31T23:30:00Z"), zone("Europe/Berlin"))
    assert keys == ("m:2027-01", "y:2027")


# Zones with half- and quarter-hour offsets, a half-hour DST shift (Lord Howe) and DST on
# both hemispheres: the cache per quarter hour of UTC must not change a single key.
ODD_ZONES = ("Asia/Kolkata", "Asia/Kathmandu", "Australia/Lord_Howe", "America/St_Johns",
             "Europe/Berlin", "America/New_York", "Australia/Adelaide", "Pacific/Chatham")


@settings(max_examples=300, deadline=None)
@given(seconds=st.floats(min_value=946_684_800, max_value=4_102_444_000),
       name=st.sampled_from(ODD_ZONES))
def test_cached_keys_equal_the_local_time_of_every_instant(seconds: float, name: str) -> None:
    tz = zone(name)
    calendar = Calendar(ALL)
    for offset in (0.0, 899.999, -0.001, 450.0):  # the same quarter hour and its neighbours
        at = seconds + offset
        calendar.keys_for(at - 1800, tz)  # warm the cache with another slot
        keys, day_end = calendar.keys_for(at, tz)
        local = datetime.fromtimestamp(at, tz)
        assert keys[0] == f"h:{local.date().isoformat()}T{local.hour:02d}"
        assert keys[1] == f"d:{local.date().isoformat()}"
        midnight = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), tz)
        assert day_end == midnight.timestamp()


def test_period_bounds_across_dst_change() -> None:
    period = Calendar(ALL).period("day", datetime(2026, 3, 29, 12, tzinfo=UTC),
                                  zone("Europe/Berlin"))
    assert period.start.isoformat() == "2026-03-29T00:00:00+01:00"
    assert period.end.isoformat() == "2026-03-30T00:00:00+02:00"
    assert period.end.timestamp() - period.start.timestamp() == 23 * 3600


def test_rolling_period_is_made_of_its_days() -> None:
    period = Calendar(ALL).period("rolling_7d", datetime(2026, 11, 23, 9, tzinfo=UTC),
                                  zone("UTC"))
    assert period.bucket_keys[0] == "d:2026-11-17"
    assert period.bucket_keys[-1] == "d:2026-11-23"
    assert len(period.bucket_keys) == 7
    assert period.end.isoformat() == "2026-11-24T00:00:00+00:00"


def test_week_month_quarter_periods() -> None:
    calendar = Calendar(ALL)
    at = datetime(2026, 11, 25, 9, tzinfo=UTC)
    week = calendar.period("week", at, zone("UTC"))
    assert (week.start.date(), week.end.date()) == (date(2026, 11, 23), date(2026, 11, 30))
    month = calendar.period("month", at, zone("UTC"))
    assert (month.start.date(), month.end.date()) == (date(2026, 11, 1), date(2026, 12, 1))
    quarter = calendar.period("quarter", at, zone("UTC"))
    assert quarter.bucket_keys == ("q:2026-Q4",)
    assert quarter.end.date() == date(2027, 1, 1)


@pytest.mark.parametrize("key", ["h:2026-11-23T05", "d:2026-11-23", "w:2026-11-23"])
def test_key_start(key: str) -> None:
    assert Calendar.key_start(key) == date(2026, 11, 23)


def test_key_start_of_coarse_periods() -> None:
    assert Calendar.key_start("m:2026-11") == date(2026, 11, 1)
    assert Calendar.key_start("q:2026-Q4") == date(2026, 10, 1)
    assert Calendar.key_start("y:2026") == date(2026, 1, 1)
