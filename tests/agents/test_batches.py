"""The ingest's batches (agents.pipeline._batches) and its GC setting."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from agents.pipeline import _batches


@dataclass
class _Event:
    offset: int
    value: bytes = b"x"


class _Stream:
    """What _batches uses of a Faust stream: ``noack().events()``."""

    def __init__(self, events: list[_Event]) -> None:
        self._events = events

    def noack(self) -> _Stream:
        return self

    async def events(self) -> Any:
        for event in self._events:
            yield event
        await asyncio.sleep(3600)  # a stream does not end


def _sizes(events: list[_Event], **limits: Any) -> list[list[int]]:
    async def scenario() -> list[list[int]]:
        batches = _batches(_Stream(events), **limits)
        got = []
        for _ in range(2):
            got.append([e.offset for e in await anext(batches)])
        await batches.aclose()
        return got

    return asyncio.run(scenario())


def test_batches_stop_at_max_records() -> None:
    assert _sizes([_Event(i) for i in range(6)], max_size=3, within=0.05) == [
        [0, 1, 2], [3, 4, 5]]


def test_batches_stop_at_max_bytes() -> None:
    events = [_Event(i, b"x" * 40) for i in range(6)]
    assert _sizes(events, max_size=100, within=0.05, max_bytes=100) == [
        [0, 1, 2], [3, 4, 5]]  # 120 bytes reach the 100-byte cap


def test_the_ingest_raises_the_young_generation_threshold_only() -> None:
    import gc

    from agents.pipeline import GC_THRESHOLDS, _tune_gc

    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        _tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        gc.set_threshold(GC_THRESHOLDS[0] * 2, 5, 5)  # someone chose more: left alone
        _tune_gc()
        assert gc.get_threshold() == (GC_THRESHOLDS[0] * 2, 5, 5)
    finally:
        gc.set_threshold(*saved)
