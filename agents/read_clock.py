"""How far each partition's log has been read, as a time: the clock of period reviews.

A period may be reviewed (closed, warned about) only once every record that counts for it
is in the tables. The wall clock says nothing about that: after downtime, or under a
backlog, on-time records of a closed day can still wait behind others in the log. The
timer cannot see the timestamps of records the consumer has not read, so it uses barriers:
at time T it notes a partition's high watermark H; once the ingest has processed every
offset below H, every record appended before T is in the tables, and T becomes the
partition's *read time*. Reviews of a partition run as of its read time: a day closes once
its end plus grace lies before it, and pace warnings compare with that moment's figures.

A caught-up partition's read time trails the wall clock by one timer interval; one with a
backlog waits until the records appended before the barrier are processed. The high
watermark comes from the consumer's last fetch, so it can miss records appended within
the last fetch wait (100 ms): far inside the lateness grace.
"""

from __future__ import annotations

from datetime import datetime


class ReadClock:
    """Read times of the partitions of one topic this worker consumes."""

    def __init__(self) -> None:
        self._processed: dict[int, int] = {}  # partition -> next offset to process
        self._barriers: dict[int, tuple[int, datetime]] = {}
        self._read: dict[int, datetime] = {}

    def processed(self, partition: int, offset: int) -> None:
        """The ingest stored and acknowledged the record at ``offset``."""
        if offset >= self._processed.get(partition, 0):
            self._processed[partition] = offset + 1

    def keep(self, partitions: set[int]) -> None:
        """Forget partitions no longer owned (another worker moved their position on)."""
        for known in (self._processed, self._barriers, self._read):
            for partition in set(known) - partitions:
                del known[partition]

    def tick(self, partition: int, highwater: int | None, committed: int | None,
             now: datetime) -> datetime | None:
        """Advance ``partition``'s clock at ``now``; its read time (None: not known yet).

        ``highwater``: the log end from the consumer's last fetch (None before the first);
        ``committed``: the group's committed offset (the start position after assignment).
        """
        position = max(self._processed.get(partition, 0), committed or 0)
        barrier = self._barriers.get(partition)
        if barrier is not None and position >= barrier[0]:
            self._read[partition] = barrier[1]
            barrier = None
        if barrier is None and highwater is not None:
            self._barriers[partition] = (highwater, now)
        return self._read.get(partition)
