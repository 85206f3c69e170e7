"""The record ledger's corrections, as pure logic (the real-broker test is
tests/integration/test_ledger.py)."""

from __future__ import annotations

from typing import Any

import orjson

from agents.ingest import partition_of
from agents.ledger import MESSAGES_PER_RECORD, Ledger, LedgerResult, ledger_key, pack


def message(event_id: str, user: str, action: str = "created", counted: bool = True,
            **extra: Any) -> dict[str, Any]:
    return {"event_id": event_id, "user_id": user, "type": "opportunity_won",
            "action": action, "occurred_at": "2026-12-01T10:00:00+00:00",
            "record_type": "opportunity", "record_id": "o-1", "counted": counted,
            "sums": extra.pop("sums", {}), **extra}


class Run:
    """Feeds messages through one ledger, keeping its table in a dict."""

    def __init__(self) -> None:
        self.ledger, self.table, self.offset = Ledger(), {}, 0
        self.corrections: list[dict[str, Any]] = []

    def feed(self, *messages: dict[str, Any]) -> LedgerResult:
        batch = []
        for m in messages:
            batch.append((0, self.offset, orjson.dumps(m)))
            self.offset += 1
        result = self.ledger.fold(batch, self.table.get)
        self.table.update(result.writes)
        self.corrections += [orjson.loads(v) for _, v in result.corrections]
        return result

    def credit(self) -> dict[str, tuple[int, float]]:
        """Net (count, amount) per user of the original lines plus corrections."""
        net: dict[str, list[float]] = {}
        for fix in self.corrections:
            entry = net.setdefault(fix["user_id"], [0, 0])
            entry[0] += fix["correction"]["count"]
            entry[1] += fix["correction"]["sums"].get("amount", 0)
        return {user: (int(c), a) for user, (c, a) in net.items() if c or a}


def test_delete_retracts_and_a_late_line_is_retracted_at_once() -> None:
    run = Run()
    run.feed(message("won-1", "ann", sums={"amount": 500}))
    run.feed(message("del-1", "ann", action="deleted", counted=False))
    assert run.credit() == {"ann": (-1, -500)}
    run.feed(message("won-2", "ann", sums={"amount": 7}))  # reordered: after the delete
    assert run.credit() == {"ann": (-2, -507)}


def test_reassignment_moves_the_owners_lines_but_not_a_colleagues() -> None:
    run = Run()
    run.feed(message("won-1", "ann", sums={"amount": 500}),
             message("edit-1", "bob", action="updated", type="record_updated"))
    run.feed(message("re-1", "cat", action="reassigned", counted=False))
    assert run.credit() == {"ann": (-1, -500), "cat": (1, 500)}
    assert {f["correction"]["of"] for f in run.corrections} == {"won-1"}
    assert {f["occurred_at"] for f in run.corrections} == {"2026-12-01T10:00:00+00:00"}


def test_a_line_arriving_after_the_reassignment_goes_to_the_new_owner() -> None:
    run = Run()
    run.feed(message("re-1", "cat", action="reassigned", counted=False,
                     previous_owner="ann"))
    run.feed(message("won-1", "ann", sums={"amount": 500}))
    assert run.credit() == {"ann": (-1, -500), "cat": (1, 500)}


def test_amount_updates_apply_the_difference() -> None:
    run = Run()
    run.feed(message("won-1", "ann", sums={"amount": 500}))
    run.feed(message("up-1", "ann", action="updated", counted=False, sums={"amount": 650}))
    run.feed(message("up-2", "ann", action="updated", counted=False, sums={"amount": 600}))
    assert run.credit() == {"ann": (0, 100)}
    assert [f["correction"]["count"] for f in run.corrections] == [0, 0]


def test_redelivery_and_replay_change_nothing_and_ids_are_stable() -> None:
    run = Run()
    run.feed(message("won-1", "ann", sums={"amount": 500}))
    run.feed(message("del-1", "ann", action="deleted", counted=False))
    first = list(run.corrections)
    assert run.feed(message("del-1", "ann", action="deleted", counted=False)).duplicates == 1
    assert run.corrections == first
    replay = Ledger().fold([(0, 0, orjson.dumps(message("won-1", "ann", sums={"amount": 500}))),
                            (0, 1, orjson.dumps(message("del-1", "ann", action="deleted",
                                                        counted=False)))], {}.get)
    assert [orjson.loads(v)["event_id"] for _, v in replay.corrections] == [
        f["event_id"] for f in first]


def test_delete_of_an_unknown_record_is_recorded_not_an_error() -> None:
    run = Run()
    result = run.feed(message("del-9", "ann", action="deleted", counted=False))
    assert not result.corrections and not result.rejected
    assert run.table[ledger_key("opportunity", "o-1")]["deleted"] is True


def test_unreadable_messages_are_rejected_with_a_reason() -> None:
    result = Ledger().fold([(0, 0, b"not json"), (0, 1, b'{"event_id": 1}')], {}.get)
    assert [r[3].reason for r in result.rejected] == ["invalid_json", "invalid_json"]


def _keyed(*messages: dict[str, Any]) -> list[tuple[bytes, dict[str, Any]]]:
    return [(f"{m['record_type']}|{m['record_id']}".encode(), m) for m in messages]


def test_pack_writes_one_array_per_partition_keyed_to_reach_that_partition() -> None:
    messages = _keyed(*(message(f"e-{i}", "ann", record_id=f"o-{i % 7}")
                          for i in range(2 * MESSAGES_PER_RECORD + 10)))
    records = pack(messages, lambda key: partition_of(key, 4))
    by_partition: dict[int, list[str]] = {}
    for key, value in records:
        elements = orjson.loads(value)
        assert 1 <= len(elements) <= MESSAGES_PER_RECORD
        for element in elements:  # every message travels with a key of its own partition
            own = f"{element['record_type']}|{element['record_id']}".encode()
            assert partition_of(own, 4) == partition_of(key, 4)
        by_partition.setdefault(partition_of(key, 4), []).extend(e["event_id"] for e in elements)
    for partition, ids in by_partition.items():  # order kept within a partition
        assert ids == [m["event_id"] for k, m in messages if partition_of(k, 4) == partition]
    assert sum(len(ids) for ids in by_partition.values()) == len(messages)


def test_every_message_of_an_array_applies_and_a_replay_of_it_applies_none() -> None:
    won = message("won-1", "ann", sums={"amount": 500})
    moved = message("move-1", "bob", action="reassigned", counted=False, previous_owner="ann")
    (_, array), = pack(_keyed(won, moved), lambda key: 0)
    table: dict[str, Any] = {}
    first = Ledger().fold([(0, 5, array)], table.get)
    table.update(first.writes)
    assert first.duplicates == 0 and len(first.corrections) == 2  # ann -1, bob +1
    assert table[ledger_key("opportunity", "o-1")]["owners"] == ["ann", "bob"]
    replay = Ledger().fold([(0, 5, array)], table.get)
    assert replay.duplicates == 2 and not replay.writes and not replay.corrections


def test_a_bad_element_of_an_array_is_rejected_by_index_and_the_rest_applies() -> None:
    raw = b"[" + orjson.dumps(message("won-1", "ann")) + b',{"event_id": 1}]'
    result = Ledger().fold([(0, 0, raw)], {}.get)
    assert [(r[1], r[3].reason) for r in result.rejected] == [(0, "invalid_json")]
    assert "message 1 " in result.rejected[0][3].message
    assert list(result.writes) == [ledger_key("opportunity", "o-1")]
