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

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import faust
import orjson
from faust.stores.memory import Store as MemoryStore

from app.disk_store import DiskStore, DiskValues
from app.murmur2 import partition_of

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


class DiskTable(PartitionedTable):
    """A :class:`PartitionedTable` whose values live in a :class:`DiskStore`
    (``state_store: disk``); ``options={"cache_bytes": N}`` sizes its block cache."""

    def _new_store(self) -> DiskStore:
        return DiskStore("disk://", self.app, self, table_name=self.name,
                         key_type=self.key_type, key_serializer=self.key_serializer,
                         value_serializer=self.value_serializer, value_type=self.value_type,
                         loop=self.loop, options=self.options)


# -- the batch path: direct store reads and batched changelog writes ---------------------------
#
# The ingest reads thousands of keys and writes thousands of values per batch. Through
# ``table.get`` a read costs a ``Mapping.get`` → ``__getitem__`` → sensor → ``__missing__``
# chain (most dedup lookups miss), and through ``table[key] = value`` a write costs a
# ``FutureMessage``, a trip through Faust's ``ProducerBuffer`` task and one
# ``AIOKafkaProducer.send`` each. For the memory store and the disk store
# (``app/disk_store.py``) the same effect is had with the store's own dict or RocksDB
# (:func:`stored_values`) and one aiokafka ``send_batch`` per changelog partition and batch;
# the records are the ones Faust would write (JSON key and value, ``value["p"]`` as
# partition), so recovery reads them as before.
# Pinned to faust-streaming 0.15.3 (``tests/app/test_transport.py`` guards the internals).


class MemoryValues:
    """The batch path's view of the memory store's dict (``DiskValues`` is the disk
    store's): ``get``, ``set_many``, ``delete_many``, ``items``."""

    def __init__(self, data: dict[Any, Any]) -> None:
        self.data = data
        self.get = data.get

    def set_many(self, values: Mapping[str, Any]) -> None:
        self.data.update(values)

    def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.data.pop(key, None)

    def items(self) -> Iterable[tuple[str, Any]]:
        return self.data.items()

    def __len__(self) -> int:
        return len(self.data)


def stored_values(table: Any) -> MemoryValues | DiskValues | None:
    """The batch path's view of ``table``'s store (``None`` for a store it does not know)."""
    store = table.data
    if isinstance(store, DiskStore):
        return store.values_view
    data = getattr(store, "data", None)
    if isinstance(store, MemoryStore) and isinstance(data, dict):
        return MemoryValues(data)
    return None


def stored_items(table: Any) -> Iterable[tuple[str, Any]]:
    """``(key, value as stored)`` of every key of ``table``."""
    values = stored_values(table)
    return table.data.items() if values is None else values.items()


def holds_bytes(table: Any) -> bool:
    """Whether ``table`` keeps its values as their JSON encoding (``value_type=bytes``).

    For the large tables (KPI, ledger): a value's JSON takes a fraction of the memory of
    the dicts it decodes to, and its changelog record is the same bytes.
    """
    return table.value_serializer == "raw"


def compact(raw: bytes) -> bytes:
    """A copy of ``raw`` that takes its own size: orjson 3.13's ``dumps`` result keeps its
    whole 4 KiB output buffer (``tracemalloc``: 4,097 bytes for a 250-byte value)."""
    return memoryview(raw).tobytes()


def reader(table: Any) -> Callable[[Any], Any]:
    """``key -> value or None`` of ``table``, without Faust's per-read bookkeeping
    (values kept as bytes are decoded)."""
    values = stored_values(table)
    get = table.get if values is None else values.get
    if not holds_bytes(table):
        return get
    loads = orjson.loads

    def decoded(key: Any) -> Any:
        raw = get(key)
        return None if raw is None else loads(raw)

    return decoded


def decoder(table: Any) -> Callable[[Any], Any] | None:
    """How to read a stored value of ``table`` (``None``: it is stored as it is read)."""
    return orjson.loads if holds_bytes(table) else None


def decoded_items(table: Any, wanted: Callable[[Any], bool]) -> Iterator[tuple[Any, Any]]:
    """``(key, value)`` of each ``wanted`` key of ``table``, decoded where stored as bytes."""
    decode = decoder(table) or (lambda value: value)
    return ((key, decode(raw)) for key, raw in stored_items(table) if wanted(key))


def lazy_reader(table: Any) -> Callable[[Any], Any]:
    """:func:`reader`, resolved at the first call (a table's store exists once it is used)."""
    read: Callable[[Any], Any] | None = None

    def get(key: Any) -> Any:
        nonlocal read
        if read is None:
            read = reader(table)
        return read(key)

    return get


async def write_values(table: Any, producer: Any,
                       writes: Mapping[str, dict[str, Any]]) -> list[Any]:
    """Set each key and send its changelog record to partition ``value["p"]``; the send
    futures to await (deletes: :func:`delete_values`).

    Every value is set in memory before the first await, so no other task sees half a batch.
    Table values must carry their changelog partition as ``p``; a table that
    :func:`holds_bytes` keeps their JSON.
    """
    values = stored_values(table)
    dumps, as_bytes = orjson.dumps, holds_bytes(table)
    if values is None:  # a store the batch path does not know: Faust's own path
        with collecting_sends() as pending:
            for key, value in writes.items():
                with changelog_partition(value["p"]):
                    table[key] = compact(dumps(value)) if as_bytes else value
        return pending
    by_partition: dict[int, list[tuple[str, Any]]] = {}
    stored_by_key = {}
    for key, value in writes.items():
        stored = stored_by_key[key] = compact(dumps(value)) if as_bytes else value
        by_partition.setdefault(value["p"], []).append((key, stored))
    values.set_many(stored_by_key)
    return await _send_batches(table, producer, by_partition,
                               (lambda raw: raw) if as_bytes else dumps)


async def delete_values(table: Any, producer: Any, doomed: Iterable[tuple[str, int]]) -> list[Any]:
    """Delete each ``(key, changelog partition)``: a tombstone each; the send futures."""
    values = stored_values(table)
    if values is None:
        with collecting_sends() as pending:
            for key, partition in doomed:
                with changelog_partition(partition):
                    table.pop(key, None)
        return pending
    by_partition: dict[int, list[tuple[str, None]]] = {}
    keys = []
    for key, partition in doomed:
        keys.append(key)
        by_partition.setdefault(partition, []).append((key, None))
    values.delete_many(keys)
    return await _send_batches(table, producer, by_partition, lambda tombstone: tombstone)


async def _send_batches(table: Any, producer: Any,
                        by_partition: Mapping[int, list[tuple[str, Any]]],
                        encode: Callable[[Any], bytes | None]) -> list[Any]:
    """Encode each record as it goes into its producer batch: a batch's whole changelog
    encoded up front held every ``dumps`` result (each keeps 4 KiB, see :func:`compact`)."""
    client = producer._ensure_producer()  # the started aiokafka producer
    topic = table.changelog_topic.get_topic_name()
    dumps = orjson.dumps
    futures = []
    for partition, records in by_partition.items():
        futures += await _send_partition(
            client, topic, partition,
            ((dumps(key), encode(value), None) for key, value in records))
    return futures


async def send_records(producer: Any, topic: str,
                       records: Iterable[tuple[bytes, bytes, float | None]]) -> list[Any]:
    """Send ``(key, value, timestamp seconds or None)`` records to ``topic``, each to the
    partition Kafka's default partitioner gives its key (murmur2, as Faust's ``send`` and
    every producer of ours do), in whole batches; the send futures to await.

    For the ingest's outputs (awards, DLQ, forwards, group feed): through Faust's
    ``send_soon`` each record waited its turn in the ``ProducerBuffer`` task, which on a
    busy worker took hundreds of milliseconds per batch of outputs.
    """
    client = producer._ensure_producer()
    partitions = sorted(await client.partitions_for(topic))
    by_partition: dict[int, list[tuple[bytes, bytes, int | None]]] = {}
    for key, value, timestamp in records:
        partition = partitions[partition_of(key, len(partitions))]
        by_partition.setdefault(partition, []).append(
            (key, value, None if timestamp is None else int(timestamp * 1000)))
    futures = []
    for partition, batch in by_partition.items():
        futures += await _send_partition(client, topic, partition, batch)
    return futures


async def _send_partition(client: Any, topic: str, partition: int,
                          records: Iterable[tuple[bytes, bytes | None, int | None]]) -> list[Any]:
    futures = []
    batch = client.create_batch()
    for key, value, timestamp in records:
        if batch.append(key=key, value=value, timestamp=timestamp) is None:
            futures.append(await client.send_batch(batch, topic, partition=partition))
            batch = client.create_batch()
            if batch.append(key=key, value=value, timestamp=timestamp) is None:
                raise ValueError(f"a record of {len(value or b'')} bytes does not fit into "
                                 "a producer batch")
    futures.append(await client.send_batch(batch, topic, partition=partition))
    return futures
