"""The disk store (``state_store: disk``): what the batch path and Faust's recovery write is
what both read back; it starts empty, is removed on stop, and is never shared."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import faust
import orjson
import pytest

from app.disk_store import DataDirInUse, DiskStore
from app.faust_app import Pulse, create_app
from app.settings import Settings
from app.tables import DiskTable, decoded_items, reader, stored_items, stored_values


def _pulse(data_dir: Path) -> Pulse:
    return create_app(Settings(kafka="kafka://127.0.0.1:1", state_store="disk",
                               data_dir=data_dir))


def _changelog(*records: tuple[str, dict | None]) -> list[SimpleNamespace]:
    """Changelog events as Faust's recovery hands them over (key and value as bytes)."""
    return [SimpleNamespace(message=SimpleNamespace(
        key=orjson.dumps(key), value=None if value is None else orjson.dumps(value)))
        for key, value in records]


def test_the_large_tables_use_it_and_the_small_ones_stay_in_memory(tmp_path: Path) -> None:
    pulse = _pulse(tmp_path)
    for table in (pulse.kpi_table, pulse.ledger_table):
        assert isinstance(table, DiskTable) and isinstance(table.data, DiskStore)
        assert table.data.path.parent == tmp_path / pulse.settings.app_id
    assert not isinstance(pulse.group_table.data, DiskStore)
    in_memory = create_app(Settings(kafka="kafka://127.0.0.1:1", state_store="memory"))
    assert not isinstance(in_memory.kpi_table.data, DiskStore)


def test_batch_writes_recovery_and_deletes_read_back_alike(tmp_path: Path) -> None:
    table = _pulse(tmp_path).kpi_table
    values = stored_values(table)
    values.set_many({"u|d:2026-12-08|ann": orjson.dumps({"p": 1, "n": {"calls": 2}}),
                     "s|20430|a|ann": orjson.dumps({"p": 1, "ids": {"a1": 7}})})
    table.data.apply_changelog_batch(
        _changelog(("u|d:2026-12-08|bob", {"p": 2, "n": {"calls": 1}}),
                   ("s|20430|a|ann", None)),
        to_key=None, to_value=None)
    read = reader(table)
    assert read("u|d:2026-12-08|ann") == {"p": 1, "n": {"calls": 2}}
    assert read("u|d:2026-12-08|bob") == {"p": 2, "n": {"calls": 1}}
    assert read("s|20430|a|ann") is None and read("missing") is None
    assert table.get("u|d:2026-12-08|bob") == orjson.dumps({"p": 2, "n": {"calls": 1}})
    values.delete_many(["u|d:2026-12-08|ann"])
    assert dict(decoded_items(table, lambda key: key.startswith("u|"))) == {
        "u|d:2026-12-08|bob": {"p": 2, "n": {"calls": 1}}}
    assert [key for key, _ in stored_items(table)] == ["u|d:2026-12-08|bob"]
    assert len(table.data) == 1


def test_it_starts_empty_and_its_files_go_when_the_worker_stops(tmp_path: Path) -> None:
    killed = _pulse(tmp_path).kpi_table.data
    stored_values(killed.table).set_many({"u|d:2026-12-08|ann": b'{"p":0}'})
    killed.db.close()  # what a SIGKILL leaves: the files, and the lock released
    killed._lock.close()
    assert killed.path.exists()
    store = _pulse(tmp_path).kpi_table.data
    assert reader(store.table)("u|d:2026-12-08|ann") is None
    assert list(stored_items(store.table)) == []
    asyncio.run(store.on_stop())
    assert not store.path.exists()


def test_two_workers_cannot_share_a_data_dir(tmp_path: Path) -> None:
    first = _pulse(tmp_path).kpi_table.data
    with pytest.raises(DataDirInUse, match="CRM_PULSE_DATA_DIR"):
        _pulse(tmp_path).kpi_table.data  # noqa: B018 - the store opens on first use
    asyncio.run(first.on_stop())
    assert isinstance(_pulse(tmp_path).kpi_table.data, DiskStore)


def test_it_keeps_bytes_only(tmp_path: Path) -> None:
    app = faust.App("disk-store-test", broker="kafka://127.0.0.1:1", datadir=str(tmp_path))
    table = DiskTable(app, name="dicts", key_type=str, options={"cache_bytes": 8 * 1024**2})
    with pytest.raises(ValueError, match="value_type=bytes"):
        table.data  # noqa: B018
