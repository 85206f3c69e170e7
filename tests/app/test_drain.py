"""The worker's drain loop (app/drain.py): direct delivery, and whole fetched batches
abandoned when a rebalance begins (their records are fetched again from the committed
offsets, so delivering or skipping them past that point loses or drops records)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from app.drain import drain_messages

TOPIC = "crm.activities"


@dataclass
class _Message:
    offset: int
    topic: str = TOPIC
    generation_id: int | None = None  # set when fetched, as Faust's consumer does

    @property
    def tp(self) -> tuple[str, int]:
        return (self.topic, 0)


class _Consumer:
    """What drain_messages uses of Faust's consumer; ``getmany`` serves ``batches`` in turn
    and stops the loop once they are used up."""

    def __init__(self, batches: list[list[int]],
                 on_deliver: Callable[[_Consumer, _Message], None] = lambda c, m: None,
                 queue_full: bool = False, assigned_while_waiting: bool = False) -> None:
        self.batches = [[_Message(offset) for offset in batch] for batch in batches]
        self.on_deliver = on_deliver
        queue = SimpleNamespace(full=lambda: queue_full)
        self.app = SimpleNamespace(
            consumer_generation_id=1,
            topics=SimpleNamespace(acks_enabled_for=lambda topic: True,
                                   _tp_index={(TOPIC, 0): [SimpleNamespace(queue=queue)]}),
            producer=SimpleNamespace(buffer=SimpleNamespace(size=0, max_messages=1000)))
        self.transport = SimpleNamespace(app=SimpleNamespace(should_stop=False))
        self.consumer_stopped_errors = ()
        self.should_stop = False
        self.suspend_flow = asyncio.Event()
        self._stopped = asyncio.Event()
        self._read_offset: dict[Any, int] = {}
        self._commit_every = None
        self._n_acked = 0
        self.delivered: list[int] = []
        self.gaps: list[tuple[int, int]] = []
        self.waited_first = 0
        self.assigned_while_waiting = assigned_while_waiting

    async def callback(self, message: _Message) -> None:
        self.delivered.append(message.offset)
        self.on_deliver(self, message)

    async def getmany(self, timeout: float) -> Any:  # noqa: ASYNC109 (Faust's signature)
        if not self.batches:
            self._stopped.set()
            return
        if self.assigned_while_waiting:  # the group's first assignment, during the wait
            self.app.consumer_generation_id += 1
        for message in self.batches.pop(0):
            message.generation_id = self.app.consumer_generation_id
            yield message.tp, message

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def _add_gap(self, tp: Any, start: int, end: int) -> None:
        self.gaps.append((start, end))

    async def wait_first(self, *coros: Any) -> None:
        self.waited_first += 1
        delivery, suspension = coros
        suspension.close()
        await delivery


def _drain(consumer: _Consumer) -> _Consumer:
    fetcher = SimpleNamespace(_stopped=asyncio.Event())
    asyncio.run(asyncio.wait_for(drain_messages(consumer, fetcher), 5))
    return consumer


def test_records_are_delivered_in_order_and_their_read_offsets_kept() -> None:
    consumer = _drain(_Consumer([[0, 1, 2], [3, 5]]))
    assert consumer.delivered == [0, 1, 2, 3, 5]
    assert consumer._read_offset == {(TOPIC, 0): 5}
    assert consumer.gaps == [(4, 5)]
    assert consumer.waited_first == 0  # every queue had room: no wait_first


def test_records_already_delivered_are_not_delivered_again() -> None:
    consumer = _drain(_Consumer([[0, 1, 2], [0, 1, 3]]))
    assert consumer.delivered == [0, 1, 2, 3]


def test_a_full_queue_is_waited_for_in_a_way_a_rebalance_can_abandon() -> None:
    consumer = _drain(_Consumer([[0, 1]], queue_full=True))
    assert consumer.delivered == [0, 1]
    assert consumer.waited_first == 2


def test_a_suspended_flow_abandons_the_rest_of_the_batch() -> None:
    def rebalance_after_1(consumer: _Consumer, message: _Message) -> None:
        if message.offset == 1:
            consumer.suspend_flow.set()

    consumer = _drain(_Consumer([[0, 1, 2, 3], [4]], rebalance_after_1))
    assert consumer.delivered == [0, 1]  # nothing more while suspended
    # Offset 1's read offset is not kept: a later seek to the committed offsets must not
    # find a read offset past it, or the loop would drop the records fetched again.
    assert consumer._read_offset == {(TOPIC, 0): 0}


def test_a_new_generation_abandons_a_batch_fetched_in_the_old_one() -> None:
    def new_generation_after_1(consumer: _Consumer, message: _Message) -> None:
        if message.offset == 1 and consumer.app.consumer_generation_id == 1:
            consumer.app.consumer_generation_id += 1  # a whole rebalance during the delivery
            consumer._read_offset.clear()  # the new assignment's seek resets them

    consumer = _drain(_Consumer([[0, 1, 2, 3], [0, 1, 2, 3]], new_generation_after_1))
    # The old batch stops after 1; the new generation's fetch starts from the beginning.
    assert consumer.delivered == [0, 1, 0, 1, 2, 3]


def test_records_fetched_while_the_generation_changed_are_the_new_generations() -> None:
    """getmany waits for the group's first assignment: its records belong to the generation
    it returns in (a worker abandoned them once, and never fetched them again)."""
    consumer = _drain(_Consumer([[0, 1], [2]], assigned_while_waiting=True))
    assert consumer.delivered == [0, 1, 2]
