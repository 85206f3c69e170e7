"""A table store that keeps values on local disk (RocksDB through ``rocksdict``), not in RAM.

For the large tables (KPI, ledger): a month of state for 10,000 people is gigabytes
(``docs/performance.md``, "Memory"), while a worker reads and writes mostly today's keys.

The store holds the same state the memory store would and is rebuilt the same way: it is
emptied when it opens and filled from the changelog by Faust's recovery, and it reports no
persisted offsets. So a restart or rebalance restores exactly what the memory store would,
and the exactness rules of ``docs/reliability.md`` are unchanged. (Restoring from a local
checkpoint instead would need every local write to wait for its changelog acknowledgement;
not done.) The files are personal data and are removed when the worker stops.

Keys and values are the changelog's bytes: the key's JSON and the value as stored
(``value_type=bytes`` tables only). :class:`DiskValues` is the batch path's view of it
(``app/tables.py``); ``options["cache_bytes"]`` bounds RocksDB's block cache.
"""

from __future__ import annotations

import fcntl
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
from faust.stores import base
from faust.types import TP, EventT
from rocksdict import BlockBasedOptions, Cache, Options, Rdict, WriteBatch

_ESTIMATED_KEYS = "rocksdb.estimate-num-keys"


class DataDirInUse(RuntimeError):
    """Another worker process holds this store's directory."""


def open_db(path: Path, cache_bytes: int) -> Rdict:
    """A RocksDB at ``path`` with :func:`_options`."""
    return Rdict(str(path), _options(cache_bytes))


def _options(cache_bytes: int) -> Options:
    """Bloom filters (most dedup reads miss); memory bounded by the block cache, which also
    holds the index and filter blocks (by default these stay outside it and grow with the
    files), and two memtables."""
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    table = BlockBasedOptions()
    table.set_block_cache(Cache(cache_bytes))
    table.set_cache_index_and_filter_blocks(True)
    table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    table.set_bloom_filter(10, False)
    options.set_block_based_table_factory(table)
    options.set_write_buffer_size(max(4 * 1024**2, cache_bytes // 4))
    options.set_max_write_buffer_number(2)
    return options


class DiskStore(base.SerializedStore):
    """Faust store backed by one RocksDB per table and worker, emptied at open."""

    def __init__(self, url: Any, app: Any, table: Any, **kwargs: Any) -> None:
        super().__init__(url, app, table, **kwargs)
        if self.value_serializer != "raw":
            raise ValueError(f"table {table.name!r}: the disk store keeps values as bytes; "
                             "declare it with value_type=bytes")
        self.path = Path(app.conf.datadir) / f"{table.changelog_topic.get_topic_name()}.rocksdb"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = self._take_lock(self.path.with_suffix(".lock"))
        shutil.rmtree(self.path, ignore_errors=True)  # state is rebuilt from the changelog
        self.db = open_db(self.path, self.options["cache_bytes"])
        self.values_view = DiskValues(self.db)

    @staticmethod
    def _take_lock(path: Path) -> Any:
        handle = path.open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise DataDirInUse(
                f"{path.parent} is used by another worker; give each worker its own "
                "CRM_PULSE_DATA_DIR") from None
        return handle

    async def on_stop(self) -> None:
        self.db.close()
        shutil.rmtree(self.path, ignore_errors=True)
        self._lock.close()

    def persisted_offset(self, tp: TP) -> int | None:
        return None  # nothing survives a restart: recovery reads the whole changelog

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        """Not kept (see :meth:`persisted_offset`)."""

    def reset_state(self) -> None:
        self._clear()

    async def backup_partition(self, tp: TP | int, flush: bool = True, purge: bool = False,
                               keep: int = 1) -> None:
        """No backups: the changelog is the copy."""

    def restore_backup(self, tp: TP | int, latest: bool = True, backup_id: int = 0) -> None:
        """No backups: the changelog is the copy."""

    def apply_changelog_batch(self, batch: Iterable[EventT], to_key: Callable[[Any], Any],
                              to_value: Callable[[Any], Any]) -> None:
        writes = WriteBatch(raw_mode=True)
        for event in batch:
            message = event.message
            if message.key is None:
                raise TypeError(f"changelog record without key: {message}")
            if message.value is None:
                writes.delete(message.key)
            else:
                writes.put(message.key, message.value)
        self.db.write(writes)

    def _get(self, key: bytes) -> bytes | None:
        return self.db.get(key)

    def _set(self, key: bytes, value: bytes | None) -> None:
        self.db.put(key, value)

    def _del(self, key: bytes) -> None:
        self.db.delete(key)

    def _iterkeys(self) -> Iterator[bytes]:
        return self.db.keys()

    def _itervalues(self) -> Iterator[bytes]:
        return self.db.values()

    def _iteritems(self) -> Iterator[tuple[bytes, bytes]]:
        return self.db.items()

    def _size(self) -> int:
        return len(self.values_view)

    def _contains(self, key: bytes) -> bool:
        return self.db.get(key) is not None

    def _clear(self) -> None:
        self.db.delete_range(b"", b"\xff" * 8)


class DiskValues:
    """The batch path's view of a :class:`DiskStore` (``str`` keys, stored bytes), like
    ``app.tables.MemoryValues`` of the memory store."""

    def __init__(self, db: Rdict) -> None:
        self._read = db.get
        self._db = db

    def get(self, key: str) -> bytes | None:
        return self._read(orjson.dumps(key))

    def set_many(self, values: Mapping[str, bytes]) -> None:
        dumps = orjson.dumps
        writes = WriteBatch(raw_mode=True)
        for key, value in values.items():
            writes.put(dumps(key), value)
        self._db.write(writes)

    def delete_many(self, keys: Iterable[str]) -> None:
        dumps = orjson.dumps
        writes = WriteBatch(raw_mode=True)
        for key in keys:
            writes.delete(dumps(key))
        self._db.write(writes)

    def items(self) -> Iterator[tuple[str, bytes]]:
        loads = orjson.loads
        return ((loads(key), value) for key, value in self._db.items())

    def __len__(self) -> int:
        """An estimate (RocksDB's own): counting would read every key."""
        return self._db.property_int_value(_ESTIMATED_KEYS) or 0
