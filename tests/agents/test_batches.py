"""The agents' batches (agents.pipeline._batches), the roster mirror that reads them, and the
ingest's GC setting."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from agents.pipeline import _batches, mirror_roster


@dataclass
class _Message:
    offset: int
    generation_id: int = 1
    tracked: bool = False
    partition: int = 0


@dataclass
class _Event:
    offset: int
    value: bytes | None = b"x"
    generation: int = 1
    key: bytes | None = None

    def __post_init__(self) -> None:
        self.message = _Message(self.offset, self.generation)


class _FlowControl:
    def __init__(self) -> None:
        self.active = True
        self._queues: set[Any] = set()

    def is_active(self) -> bool:
        return self.active


class _Consumer:
    def __init__(self) -> None:
        self.tracked: list[int] = []

    def track_message(self, message: _Message) -> None:
        self.tracked.append(message.offset)


class _App:
    """What _batches reads of the Faust app: flow control, generation, consumer."""

    def __init__(self) -> None:
        self.flow_control = _FlowControl()
        self.consumer_generation_id = 1
        self.consumer = _Consumer()


class _Stream:
    """What _batches uses of a Faust stream: its app and the queue of its channel."""

    def __init__(self, events: list[_Event], app: _App | None = None) -> None:
        self.app = app or _App()
        self.channel = SimpleNamespace(queue=asyncio.Queue())
        self.app.flow_control._queues.add(self.channel.queue)  # Faust manages it
        for event in events:
            self.channel.queue.put_nowait(event)


def _sizes(events: list[_Event], stream: _Stream | None = None, batches: int = 2,
           **limits: Any) -> list[list[int]]:
    async def scenario() -> list[list[int]]:
        taken = _batches(stream or _Stream(events), **limits)
        got = []
        for _ in range(batches):
            got.append([e.offset for e in await anext(taken)])
        await taken.aclose()
        return got

    return asyncio.run(scenario())


def test_batches_stop_at_max_records() -> None:
    assert _sizes([_Event(i) for i in range(6)], max_size=3, within=0.05) == [
        [0, 1, 2], [3, 4, 5]]


def test_batches_stop_at_max_bytes() -> None:
    events = [_Event(i, b"x" * 40) for i in range(6)]
    assert _sizes(events, max_size=100, within=0.05, max_bytes=100) == [
        [0, 1, 2], [3, 4, 5]]  # 120 bytes reach the 100-byte cap


def test_events_of_an_earlier_generation_are_dropped_untracked() -> None:
    """Fetched before a rebalance: the new assignment reads them again from the committed
    offset, so they must be neither processed nor acked (tracking would make them wait)."""
    stream = _Stream([_Event(0, generation=1), _Event(1, generation=2), _Event(2, generation=2),
                      _Event(3, generation=1), _Event(4, generation=2)])
    stream.app.consumer_generation_id = 2
    assert _sizes([], stream, batches=1, max_size=10, within=0.05) == [[1, 2, 4]]
    assert stream.app.consumer.tracked == [1, 2, 4]


def test_events_taken_while_the_flow_is_suspended_are_dropped() -> None:
    stream = _Stream([_Event(i) for i in range(5)])
    answers = iter([False] * 3)  # suspended (a rebalance) for the first three, then resumed
    stream.app.flow_control.is_active = lambda: next(answers, True)
    assert _sizes([], stream, batches=1, max_size=10, within=0.05) == [[3, 4]]
    assert stream.app.consumer.tracked == [3, 4]


def test_the_queue_is_no_longer_emptied_by_flow_control() -> None:
    """Faust empties managed queues when the flow resumes, records the drain loop already
    counted as read among them (a hole in the partition); the reader drops stale ones."""
    stream = _Stream([_Event(0)])
    assert _sizes([], stream, batches=1, max_size=10, within=0.05) == [[0]]
    assert stream.channel.queue not in stream.app.flow_control._queues


def test_batches_end_when_the_channel_stops() -> None:
    """A stopping worker throws StopAsyncIteration into the channel's queue; the agent must
    end, not crash and be restarted (that kept workers from stopping on SIGTERM)."""

    class _StoppedQueue(asyncio.Queue):
        async def get(self) -> Any:
            raise StopAsyncIteration

    stream = _Stream([])
    stream.channel.queue = _StoppedQueue()

    async def drain() -> list[Any]:
        return [batch async for batch in _batches(stream, max_size=10, within=0.05)]

    assert asyncio.run(asyncio.wait_for(drain(), 5)) == []


class _AckedStream(_Stream):
    def __init__(self, events: list[_Event]) -> None:
        super().__init__(events)
        self.expected = len(events)
        self.acked: list[int] = []
        self.all_acked = asyncio.Event()

    async def ack(self, event: _Event) -> None:
        self.acked.append(event.offset)
        if len(self.acked) == self.expected:
            self.all_acked.set()


def test_the_roster_mirror_reads_batches_and_acks_every_record() -> None:
    """The roster agent reads through _batches (before, Faust's stream: its queue emptied
    on a rebalance could drop an update): profiles set, tombstones delete, invalid
    profiles and keyless records are skipped, and every record is acked."""
    profile = b'{"user_id": "u1", "team_id": "t1"}'
    stream = _AckedStream([
        _Event(0, profile, key=b"u1"), _Event(1, b'{"user_id": "u2", "team_id": "t2"}', key=b"u2"),
        _Event(2, None, key=b"u2"), _Event(3, b"not json", key=b"u3"), _Event(4, profile)])
    table: dict[str, Any] = {"u9": {"user_id": "u9", "team_id": "t9"}}

    async def mirror() -> None:
        task = asyncio.create_task(mirror_roster(stream, table, max_size=10, within=0.01))
        try:
            await asyncio.wait_for(stream.all_acked.wait(), 5)
        finally:
            task.cancel()

    asyncio.run(mirror())
    assert stream.acked == [0, 1, 2, 3, 4]
    assert table == {"u9": {"user_id": "u9", "team_id": "t9"},
                     "u1": {"user_id": "u1", "team_id": "t1", "active": True,
                            "leaderboard_opt_out": False}}
    assert stream.channel.queue not in stream.app.flow_control._queues


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
