"""Faust wiring of the stream processors: roster sync, activity ingest, state cleanup.

The agents only move bytes and batches; the logic lives in :mod:`agents.ingest`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agents.group_view import GroupFeed, apply_updates, group_id
from agents.ingest import Ingestor, Record, UserInfo, dead_letter, partition_of
from agents.ledger import Ledger, pack
from agents.period_close import PeriodCloser
from agents.read_clock import ReadClock
from agents.retention import expired_keys
from agents.team_rules import TeamRules
from app.drain import current, keep_through_resume
from app.roster import parse_profile
from app.tables import (
    changelog_partition,
    collecting_sends,
    decoded_items,
    decoder,
    delete_values,
    holds_bytes,
    lazy_reader,
    reader,
    send_records,
    stored_items,
    write_values,
)

if TYPE_CHECKING:
    from app.faust_app import Pulse

logger = logging.getLogger(__name__)


BATCH_MAX_BYTES = 8 * 1024 * 1024


async def _batches(stream: Any, max_size: int, within: float,
                   max_bytes: int = BATCH_MAX_BYTES) -> AsyncIterator[list[Any]]:
    """Batches of unacked events: up to ``max_size`` records or ``max_bytes`` of record
    values (arrays of events make records large: the memory of a fold follows the bytes),
    waiting at most ``within`` seconds. The caller acks exactly the events it processed
    (``stream.ack``).

    The events come straight from the queue Faust's conductor fills for the agent's stream,
    not through the stream's iterator (a ``sleep(0)``, sensors and a context variable per
    event). ``app.drain.current`` does what the iterator did that matters: stale events
    (flow suspended, or an earlier generation) are dropped, never acked, and the others
    tracked; so the queue is kept when the flow resumes (``keep_through_resume``: Faust's
    emptying it made holes in a partition's sequence). Not ``stream.take_events`` either:
    it acks every event in its buffer after the body, including ones a late buffer task
    added while the body awaited.
    """
    app, queue = stream.app, stream.channel.queue
    keep_through_resume(app, queue)
    loop = asyncio.get_running_loop()

    def taken(event: Any) -> bool:
        return current(app, event.message)

    try:
        while True:
            first = await queue.get()
            if not taken(first):
                continue
            batch = [first]
            deadline = loop.time() + within
            size = len(first.value or b"")
            while len(batch) < max_size and size < max_bytes:
                if queue.empty():
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        event = await asyncio.wait_for(queue.get(), remaining)
                    except TimeoutError:
                        break
                else:
                    event = queue.get_nowait()
                if taken(event):
                    batch.append(event)
                    size += len(event.value or b"")
            yield batch
    except StopAsyncIteration:  # the channel stops (the worker stops): so does the stream
        return


# Young-generation size of the cyclic garbage collector while the ingest runs (CPython's
# default is 700). The tables hold hundreds of thousands of long-lived dicts, and with the
# default every ~0.5 s of load triggered a full collection that walked all of them: 60-160 ms
# each (measured with gc.callbacks), a fifth of the backlog time and the p99 of the latency
# phase. Reference counting frees the table values; only cycles wait for the collector.
GC_THRESHOLDS = (20_000, 20, 20)


def _tune_gc() -> None:
    if gc.get_threshold()[0] < GC_THRESHOLDS[0]:
        gc.set_threshold(*GC_THRESHOLDS)


def _seconds(timestamp: float | None) -> float:
    """The record's timestamp; ``-1`` when it has none (rejected as ``bad_timestamp``)."""
    return -1.0 if timestamp is None else timestamp


async def _acknowledged(pending: list[Any]) -> None:
    """Wait until the broker acknowledged every send; on failure, exit without acking."""
    try:
        await asyncio.gather(*pending)
    except BaseException:  # includes cancellation: the batch's acks must not happen
        _crash_without_commit()


def _untimed(records: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes, None]]:
    """``(key, value)`` records for :func:`send_records`, stamped by the producer (now)."""
    return [(key, value, None) for key, value in records]


def _crash_without_commit() -> None:
    """Exit at once, leaving the batch unacked.

    Bad input never gets here (ingest parks it in the DLQ); this is for infrastructure
    failures such as a failed table or topic write, or a stop that interrupts the wait for
    acknowledgements. Carrying on would keep a half-written batch in memory; exiting lets
    the restarted worker replay it from the changelog and the committed offsets, and the
    offset watermarks keep that exact.
    """
    logger.critical("ingest: batch failed; exiting without commit so it is replayed",
                    exc_info=True)
    logging.shutdown()
    os._exit(70)


def _read_times(pulse: Pulse, topic: Any, clock: ReadClock,
                now: datetime) -> dict[int, datetime]:
    """The read time of each owned partition of ``topic`` that has one (agents/read_clock)."""
    name, consumer = topic.get_topic_name(), pulse.app.consumer
    owned = [tp for tp in pulse.app.assignor.assigned_actives() if tp.topic == name]
    clock.keep({tp.partition for tp in owned})
    times = {}
    for tp in owned:  # faust has no public accessor of the committed offset
        at = clock.tick(tp.partition, consumer.highwater(tp),
                        consumer._committed_offset.get(tp), now)
        if at is not None:
            times[tp.partition] = at
    return times


def _settled(app: Any) -> bool:
    """The tables hold the state of every owned partition: no rebalance, and no table
    recovery pending or running (Faust never clears ``recovery.completed`` after the
    first one, so a later rebalance's restore would pass that check half-way)."""
    recovery = app.tables.recovery
    return (not app.rebalancing and recovery.completed.is_set() and not recovery.in_recovery
            and not recovery.signal_recovery_start.is_set())


def _is_bucket(key: str) -> bool:
    """A user or team KPI bucket's key (what the serving layer shows)."""
    return key.startswith(("u|", "t|"))


def _active_partitions(pulse: Pulse, topic: Any) -> set[int]:
    """The partitions of ``topic`` this worker owns (the state of their keys is here)."""
    name = topic.get_topic_name()
    return {tp.partition for tp in pulse.app.assignor.assigned_actives() if tp.topic == name}


async def _settle(app: Any, stream: Any, events: list[Any],
                  outputs: Callable[[], Iterable[tuple[Any, list[Any]]]], table: Any,
                  writes: dict[str, dict[str, Any]],
                  processed: Callable[[int, int], None] | None = None) -> None:
    """Finish a batch: outputs first, state second, acks last. A crash can then repeat an
    output (same ids), never lose one, and never commit a batch whose state is not stored.

    ``outputs()`` gives ``(topic, [(key, value, timestamp or None), ...])``; it is built
    inside the guard, so a failure there exits without commit too (``processed`` is told
    each acked record's partition and offset).
    """
    try:
        sent = []
        for topic, records in outputs():
            if records:
                sent += await send_records(app.producer, topic.get_topic_name(), records)
    except BaseException:
        _crash_without_commit()
    await _acknowledged(sent)
    try:
        state = await _store(app, table, writes)
    except BaseException:
        _crash_without_commit()
    await _acknowledged(state)
    for event in events:  # only now may these offsets be committed
        await stream.ack(event)
        if processed is not None:
            processed(event.message.partition, event.message.offset)


async def _store(app: Any, table: Any, writes: dict[str, dict[str, Any]]) -> list[Any]:
    """Write each value to its own changelog partition (``p``); the send futures.

    Every write of the KPI and groups tables goes this one way (batched changelog sends,
    ``app/tables.py``), so a key's changelog records keep the order of its writes.
    """
    return await write_values(table, app.producer, writes)


async def mirror_roster(stream: Any, table: Any, max_size: int, within: float) -> None:
    """Mirror ``crm.roster`` records into ``table`` (profiles, tombstones), batch by batch.

    Read with :func:`_batches` like every other agent, so a rebalance cannot drop an update
    (Faust's stream queue is emptied when the flow resumes). Each write goes to the
    changelog partition of its roster record, and the batch is acked once the broker has
    acknowledged every write.
    """
    async for events in _batches(stream, max_size, within):
        with collecting_sends() as pending:
            for event in events:
                if event.key is None:
                    continue
                user_id = event.key.decode("utf-8", "replace")
                with changelog_partition(event.message.partition):
                    if event.value is None:
                        table.pop(user_id, None)
                        continue
                    profile = parse_profile(event.value)
                    if profile is None:
                        logger.warning("roster: invalid profile at offset %d skipped",
                                       event.message.offset)
                        continue
                    table[user_id] = profile.model_dump(exclude_none=True)
        await _acknowledged(pending)
        for event in events:
            await stream.ack(event)


def register_agents(pulse: Pulse) -> None:
    app, settings = pulse.app, pulse.settings
    roster_table, kpi_table, group_table, ledger_table = (
        pulse.roster_table, pulse.kpi_table, pulse.group_table, pulse.ledger_table)

    roster_get = lazy_reader(roster_table)
    infos: dict[str, tuple[dict[str, Any], UserInfo]] = {}

    def roster_lookup(user_id: str) -> UserInfo | None:
        profile = roster_get(user_id)
        if profile is None:
            return None
        known = infos.get(user_id)
        if known is not None and known[0] is profile:  # same stored profile: same info
            return known[1]
        info = UserInfo(profile.get("team_id"), profile.get("timezone"), profile.get("role"))
        if len(infos) > 100_000:
            infos.clear()
        infos[user_id] = (profile, info)
        return info

    ingestor = Ingestor(settings.pulse, settings.max_event_bytes, settings.partitions,
                        roster_lookup)

    def ledger_partition(key: bytes) -> int:
        return partition_of(key, settings.partitions)

    group_feed = GroupFeed(settings.pulse)
    users_read, groups_read = ReadClock(), ReadClock()

    @app.agent(pulse.roster_topic, name="roster-sync")
    async def roster_sync(stream: Any) -> None:
        """Mirror ``crm.roster`` into the roster GlobalTable every worker reads."""
        # No wait to fill a batch: roster records are rare, and a profile should be in the
        # table before the ingest's batch of the same moment is folded ("Roster first" in
        # docs/reliability.md). The ingest waits batch_within_s; with the same wait here,
        # events folded first often missed their team at a worker's start.
        await mirror_roster(stream, roster_table, settings.batch_max, within=0.0)

    @app.agent(pulse.activities, name="ingest")
    async def ingest(stream: Any) -> None:
        """Validate, dedup and fold activity records into the KPI table, batch by batch."""
        _tune_gc()
        async for events in _batches(stream, settings.batch_max, settings.batch_within_s):
            started = time.monotonic()
            records = [
                Record(m.topic, m.partition, m.offset, _seconds(m.timestamp), e.key, e.value)
                for e in events
                for m in (e.message,)
            ]
            try:  # fold parks bad input itself; an exception here is a bug: replay, not skip
                result = ingestor.fold(records, reader(kpi_table), holds_bytes(kpi_table))
            except Exception:
                _crash_without_commit()
            # Outputs and state go out as whole producer batches (app/tables.py); table
            # values are set in memory before the first await of the state block.
            def outputs(result: Any = result) -> list[tuple[Any, list[Any]]]:
                emitted_at = time.time()
                return [
                    (pulse.achievements, [(*award.record(emitted_at), None)
                                          for award in result.awards]),
                    (pulse.dlq, _untimed(result.dead_letters)),
                    (pulse.activities, result.forwards),
                    (pulse.records, _untimed(pack(result.records, ledger_partition))),
                    (pulse.groups, _untimed(group_feed.records(result.writes, roster_get))
                     if group_feed.enabled else []),
                ]

            await _settle(app, stream, events, outputs, kpi_table, result.writes,
                          users_read.processed)
            pulse.metrics.batch(result, time.monotonic() - started, time.time())
            pulse.serving.stage(result.writes, result.awards, changed=result.changed)

    @app.agent(pulse.groups, name="groups")
    async def group_updates(stream: Any) -> None:
        """Keep the newest team partials and member buckets per group (for group rules)."""
        async for events in _batches(stream, settings.batch_max, settings.batch_within_s):
            by_partition: dict[int, list[bytes]] = {}
            for event in events:
                by_partition.setdefault(event.message.partition, []).append(event.value)
            writes = {}
            for partition, values in by_partition.items():
                writes.update(apply_updates(values, partition, reader(group_table)))
            await _settle(app, stream, events, lambda: [], group_table, writes,
                          groups_read.processed)

    ledger = Ledger()

    @app.agent(pulse.records, name="ledger")
    async def ledger_updates(stream: Any) -> None:
        """Events by CRM record: the ledger's lines, and corrections back to the ingest."""
        async for events in _batches(stream, settings.batch_max, settings.batch_within_s):
            result = ledger.fold(
                [(e.message.partition, e.message.offset, e.value) for e in events],
                reader(ledger_table))

            def outputs(result: Any = result) -> list[tuple[Any, list[Any]]]:
                letters = [dead_letter(Record(pulse.records.get_topic_name(), partition,
                                              offset, time.time(), None, raw),
                                       rejection, None, raw or b"")
                           for partition, offset, raw, rejection in result.rejected]
                return [(pulse.activities, _untimed(result.corrections)),
                        (pulse.dlq, _untimed(letters))]

            await _settle(app, stream, events, outputs, ledger_table, result.writes)

    closer = PeriodCloser(settings.pulse)
    team_rules = TeamRules(settings.pulse, settings.partitions)

    @app.timer(interval=settings.close_interval_s, name="period-close")
    async def close_periods() -> None:
        """Closed periods (below target, streaks, bests, ranks), pace, team goals; once each.

        Each partition is reviewed as of its read time, not the wall clock, so a period is
        never closed while records that count for it wait in the consumer's backlog.
        """
        if not _settled(app):
            return
        now = datetime.now(UTC)
        users_home = _read_times(pulse, pulse.activities, users_read, now)
        groups_home = _read_times(pulse, pulse.groups, groups_read, now)
        user_reviews, group_reviews = [], []
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for profile in list(roster_table.values()):
            user_id = profile.get("user_id")
            if not user_id or not profile.get("active", True):
                continue
            for scope in ("team", "office"):
                if profile.get(f"{scope}_id"):
                    groups.setdefault((scope, profile[f"{scope}_id"]), []).append(profile)
            partition = partition_of(user_id.encode(), settings.partitions)
            if partition in users_home:
                user_reviews.append(closer.review(profile, partition, users_home[partition],
                                                  pulse.kpi_value))
        for (scope, group), members in groups.items() if team_rules.rules else ():
            partition = partition_of(group_id(scope, group).encode(), settings.partitions)
            if partition not in groups_home:
                continue
            if scope == "team":
                group_reviews.append(team_rules.review(group, members, partition,
                                                       groups_home[partition],
                                                       group_table.get))
            else:
                group_reviews.append(team_rules.rank(group, scope, members, partition,
                                                     groups_home[partition],
                                                     group_table.get))
        reviews = user_reviews + group_reviews
        if not any(review.writes for review in reviews):
            return
        emitted_at = time.time()
        try:  # outputs first, state second: a failure repeats an output (same id) next tick
            with collecting_sends() as outputs:
                for review in reviews:
                    for alert in review.alerts:
                        key, value = alert.record(emitted_at)
                        outputs.append(pulse.alerts.send_soon(key=key, value=value))
                    for award in review.awards:
                        key, value = award.record(emitted_at)
                        outputs.append(pulse.achievements.send_soon(key=key, value=value))
            await asyncio.gather(*outputs)
            for table, done in ((kpi_table, user_reviews), (group_table, group_reviews)):
                await asyncio.gather(*await _store(app, table, {
                    key: value for review in done for key, value in review.writes.items()}))
        except Exception:
            logger.warning("period review: broker did not acknowledge; retrying next tick",
                           exc_info=True)
            return
        for review in reviews:
            pulse.metrics.alerted(review.alerts)
            pulse.metrics.awarded(review.awards)
            pulse.serving.stage({}, review.awards)
        logger.info("period review: %d alert(s), %d award(s)",
                    sum(len(r.alerts) for r in reviews), sum(len(r.awards) for r in reviews))

    @app.task
    async def serve() -> None:
        """Flush the serving layer to Redis (never blocks processing)."""
        await pulse.serving.run()

    served: set[int] = set()

    @app.timer(interval=2.0, name="serving-resync")
    async def resync_serving() -> None:
        """Write the owned partitions to Redis in full after a rebalance or an outage."""
        if not _settled(app):
            return
        owned = _active_partitions(pulse, pulse.activities)
        if owned == served and not pulse.serving.needs_resync:
            return
        pulse.serving.needs_resync = False
        served.clear()
        served.update(owned)
        today = datetime.now(UTC).date()
        staged = pulse.serving.resync(
            ((key, value) for key, value in decoded_items(kpi_table, _is_bucket)
             if isinstance(value, dict) and value.get("p") in owned), today)
        logger.info("serving: %d buckets of partitions %s staged for Redis", staged,
                    sorted(owned))

    @app.timer(interval=600.0, name="kpi-retention")
    async def drop_expired_state() -> None:
        """Delete buckets past retention, dedup memory past the horizon and ledger records
        whose days can no longer be corrected."""
        for table, topic in ((kpi_table, pulse.activities), (group_table, pulse.groups),
                             (ledger_table, pulse.records)):
            doomed = expired_keys(stored_items(table), settings.pulse, time.time(),
                                  _active_partitions(pulse, topic), decoder(table))
            if not doomed:
                continue
            try:
                await asyncio.gather(*await delete_values(table, app.producer, doomed))
            except Exception:  # gone from memory; recovery may bring some back for a next run
                logger.warning("retention: tombstones not acknowledged", exc_info=True)
                continue
            logger.info("retention: dropped %d expired keys of %s", len(doomed), table.name)
