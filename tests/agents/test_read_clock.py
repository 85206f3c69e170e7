"""The read clock: reviews run as of the time up to which a partition's log is processed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agents.read_clock import ReadClock

T0 = datetime(2026, 12, 7, 9, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_unknown_until_a_barrier_is_passed() -> None:
    clock = ReadClock()
    assert clock.tick(0, None, None, at(0)) is None  # no fetch yet: nothing known
    assert clock.tick(0, 10, None, at(1)) is None  # barrier at offset 10, nothing processed
    for offset in range(9):
        clock.processed(0, offset)
    assert clock.tick(0, 12, None, at(2)) is None  # offset 9 still waits
    clock.processed(0, 9)
    assert clock.tick(0, 12, None, at(3)) == at(1)  # all before the barrier of t=1 read


def test_a_backlog_holds_the_clock_at_the_last_barrier_passed() -> None:
    clock = ReadClock()
    clock.tick(0, 0, None, at(0))
    assert clock.tick(0, 5000, None, at(1)) == at(0)  # empty log: read up to t=0
    for tick in range(2, 10):  # a backlog: the barrier of t=1 (offset 5000) is not passed
        clock.processed(0, tick * 100)
        assert clock.tick(0, 5000 + tick, None, at(tick)) == at(0)
    clock.processed(0, 4999)
    assert clock.tick(0, 6000, None, at(10)) == at(1)


def test_the_committed_offset_counts_as_processed_after_assignment() -> None:
    clock = ReadClock()
    clock.tick(3, 700, 700, at(0))
    assert clock.tick(3, 700, 700, at(1)) == at(0)


def test_partitions_no_longer_owned_are_forgotten() -> None:
    clock = ReadClock()
    clock.processed(1, 99)
    clock.tick(1, 100, None, at(0))
    assert clock.tick(1, 100, None, at(1)) == at(0)
    clock.keep({0})  # moved to another worker, which processed on; back later: start again
    assert clock.tick(1, 500, 400, at(2)) is None
    assert clock.tick(1, 500, 400, at(3)) is None
    clock.processed(1, 499)
    assert clock.tick(1, 500, 400, at(4)) == at(2)
