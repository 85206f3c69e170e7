"""The worker consumer's drain loop: fetched records to the agents' queues, leanly.

Faust's ``Consumer._drain_messages`` hands every record to the conductor through
``wait_first(callback(message), suspend_flow.wait())``: two tasks and an ``asyncio.wait``
per record, about a third of a single-event worker's time. The ``wait_first`` is there so
that a delivery blocked on a full queue is abandoned when a rebalance suspends the flow.
Here a record is delivered directly when it cannot block (flow running, every target queue
has room, producer buffer below its limit) and through ``wait_first`` otherwise.

Three rules keep a rebalance from losing records, and Faust had none of them:

* A fetched batch is abandoned, not skipped record by record, once the flow is suspended
  (a rebalance began) or a delivery outlasted a whole rebalance (the record's generation is
  no longer the consumer's): the rebalance seeks every assigned partition to its committed
  offset, so those records are fetched again. (Skipping still set each record's read
  offset; set after the new assignment's seek, that made the loop drop the re-fetched
  records below it.) Only a rebalance may abandon records: a generation that changed
  while ``getmany`` waited (the first assignment) is the records' own.
* :func:`current` decides whether a record taken from a queue may be processed and acked:
  only while the flow runs and in the generation it was fetched in. Faust's stream acks the
  records it skips as stale; an ack at an offset beyond the committed one let the next
  commit pass records that were fetched again but not yet processed, lost if the worker
  then died.
* :func:`keep_through_resume`: Faust's flow control empties every agent's queue whenever
  the flow resumes, also at the end of a rebalance's recovery, when the queues hold
  records of the new assignment that this loop already counted as read (it does not
  deliver them again). The hole broke both the commit (acks after it let the commit pass
  it) and the per-value watermarks (a value stored with a later offset made the replay skip
  the hole's events): ``test_fault_worker_kills.py`` lost events that way in 1 of 6 runs
  with Faust's own loop, and more often with this faster one. A queue the agent reads
  with :func:`current` needs no emptying: stale records are dropped as they are taken.

Pinned to faust-streaming 0.15.3 (``tests/app/test_transport.py`` guards the internals).
"""

from __future__ import annotations

import asyncio
from typing import Any

YIELD_EVERY = 100  # records between two passes through the event loop, as in Faust


def current(app: Any, message: Any) -> bool:
    """Whether ``message`` may be processed and acked now; if so, it is tracked (a
    rebalance then waits for its ack)."""
    if not app.flow_control.is_active() or message.generation_id != app.consumer_generation_id:
        return False
    if not message.tracked:
        message.tracked = True
        app.consumer.track_message(message)
    return True


def keep_through_resume(app: Any, queue: Any) -> None:
    """Take ``queue`` out of the queues Faust's flow control empties on a rebalance."""
    app.flow_control._queues.discard(queue)


def _can_deliver_at_once(consumer: Any, tp: Any) -> bool:
    """The conductor's callback for ``tp`` will not wait on a full queue or producer
    buffer. (It can still wait for its lock, held while a rebalance updates the indices; the
    loop then checks the flow and generation after the delivery, as after any other.)"""
    app = consumer.app
    buffer = app.producer.buffer
    if buffer.size > buffer.max_messages:
        return False
    return not any(channel.queue.full() for channel in app.topics._tp_index.get(tp, ()))


async def drain_messages(consumer: Any, fetcher: Any) -> None:
    """Faust's drain loop (``Consumer._drain_messages``) with direct delivery and whole
    batches abandoned on a rebalance."""
    app = consumer.app
    callback = consumer.callback
    suspended = consumer.suspend_flow.is_set
    consumer_should_stop = consumer._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    read_offsets = consumer._read_offset
    acks_enabled_for = app.topics.acks_enabled_for
    commit_every = consumer._commit_every
    since_yield = 0
    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            fetched = consumer.getmany(timeout=1.0)
            await consumer.sleep(0)
            if consumer.should_stop:
                continue
            try:
                async for tp, message in fetched:
                    if suspended():
                        break  # fetched again from the committed offsets after the rebalance
                    since_yield += 1
                    if since_yield > YIELD_EVERY:
                        await asyncio.sleep(0)
                        since_yield = 0
                    offset, read = message.offset, read_offsets.get(tp)
                    if read is not None and offset < read:
                        continue  # already delivered
                    if read and offset - read > 1 and acks_enabled_for(message.topic):
                        await consumer._add_gap(tp, read + 1, offset)
                    if commit_every is not None and consumer._n_acked >= commit_every:
                        consumer._n_acked = 0
                        await consumer.commit()
                    if _can_deliver_at_once(consumer, tp) and not suspended():
                        await callback(message)
                    else:
                        await consumer.wait_first(callback(message),
                                                  consumer.suspend_flow.wait())
                    if suspended() or message.generation_id != app.consumer_generation_id:
                        break  # a rebalance happened while the delivery waited
                    read_offsets[tp] = offset
            finally:
                await fetched.aclose()
    except consumer.consumer_stopped_errors:
        if consumer.transport.app.should_stop:
            return
        raise
    except asyncio.CancelledError:
        if consumer.transport.app.should_stop:
            return
        raise
