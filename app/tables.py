"""Faust tables whose changelog writes can be placed and awaited explicitly.

Two gaps in faust-streaming 0.15.3 that exactness depends on:

- A table write's changelog partition comes from the *current event*. When a batch is
  written back after the loop, that is the batch's last event, which may belong to another
  partition; recovery would restore the key on the wrong worker.
  :func:`changelog_partition` names the partition instead.
- Changelog records go through ``ProducerBuffer``, whose ``flush()`` (called before every
  offset commit) gives up after 100 ms without a send, so a commit can overtake its own
  batch's changelog. :func:`collecting_sends` gathers the send futures of a block so the
  agent can wait for the broker's acknowledgement before it acks the batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import faust

_partition: ContextVar[int | None] = ContextVar("crm_pulse_changelog_partition", default=None)
_pending: ContextVar[list[Any] | None] = ContextVar("crm_pulse_pending_sends", default=None)


@contextmanager
def changelog_partition(partition: int) -> Iterator[None]:
    """Table writes inside this block go to changelog ``partition``."""
    token = _partition.set(partition)
    try:
        yield
    finally:
        _partition.reset(token)


@contextmanager
def collecting_sends() -> Iterator[list[Any]]:
    """Collect the futures of every changelog write made inside the block (await them)."""
    pending: list[Any] = []
    token = _pending.set(pending)
    try:
        yield pending
    finally:
        _pending.reset(token)


class _ExplicitChangelog:
    """Mixin: honour :func:`changelog_partition` and :func:`collecting_sends`."""

    def partition_for_key(self, key: Any) -> int | None:
        partition = _partition.get()
        if partition is None:
            return super().partition_for_key(key)  # type: ignore[misc]
        return partition

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        future = super().send_changelog(*args, **kwargs)  # type: ignore[misc]
        pending = _pending.get()
        if pending is not None:
            pending.append(future)
        return future


class PartitionedTable(_ExplicitChangelog, faust.Table):
    """``faust.Table`` with explicit changelog partitions (installed as ``Table``)."""


class PartitionedGlobalTable(_ExplicitChangelog, faust.GlobalTable):
    """``faust.GlobalTable`` with explicit changelog partitions (installed as
    ``GlobalTable``): each worker writes its partitions' keys, every worker reads all."""
