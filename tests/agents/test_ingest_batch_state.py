"""What a fold reports for the serving layer (``changed``) and how it treats stored values
(copied, never changed in place), with the fast read paths it uses."""

from __future__ import annotations

from factories import event, record
from test_ingest import Store, make_ingestor

from agents.ingest import user_key

DAY = user_key("d:2026-11-23", "alice")


def test_changed_names_new_buckets_and_the_kpis_a_batch_touched() -> None:
    store = Store()
    first = store.run(make_ingestor(), [record(event(), 0)])
    assert first.changed[DAY] is None  # new bucket: every KPI
    second = store.run(make_ingestor(), [record(event(type="meeting"), 1),
                                         record(event(type="email"), 2)])
    assert second.changed[DAY] == {"meetings", "emails", "activities", "features_used"}
    assert all(key.startswith("u|") for key in second.changed)


def test_stored_values_are_not_changed_in_place() -> None:
    store = Store()
    store.run(make_ingestor(), [record(event(), 0)])
    stored = store[DAY]
    second = record(event(), 1)
    result = make_ingestor().fold([second], store.get)
    assert result.writes[DAY] is not stored and stored["n"]["calls"] == 1
    assert result.writes[DAY]["n"]["calls"] == 2 and result.writes[DAY]["o"] == 1
    store.update(result.writes)
    again = store.run(make_ingestor(), [second])  # a replay: nothing at all
    assert again.writes == {} and again.changed == {} and store[DAY]["n"]["calls"] == 2


def test_misses_are_read_once_per_batch() -> None:
    reads: list[str] = []
    table: dict[str, object] = {}

    def read(key: str) -> object:
        reads.append(key)
        return table.get(key)

    make_ingestor().fold([record(event(), i) for i in range(3)], read)
    assert len(reads) == len(set(reads))
