"""A Faust table whose changelog partition can be named explicitly.

Faust picks a table write's changelog partition from the *current event*. When a batch
from ``take_events`` is written back after the loop, the current event is the batch's
last one, which may belong to another partition; recovery would then restore the key on
the wrong worker. :func:`changelog_partition` says which partition a write belongs to.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import faust

_partition: ContextVar[int | None] = ContextVar("crm_pulse_changelog_partition", default=None)


@contextmanager
def changelog_partition(partition: int) -> Iterator[None]:
    """Table writes inside this block go to changelog ``partition``."""
    token = _partition.set(partition)
    try:
        yield
    finally:
        _partition.reset(token)


class PartitionedTable(faust.Table):
    """``faust.Table`` that honours :func:`changelog_partition` (installed as ``Table``)."""

    def partition_for_key(self, key: Any) -> int | None:
        partition = _partition.get()
        if partition is None:
            return super().partition_for_key(key)
        return partition
