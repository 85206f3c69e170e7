"""Ingest and the record ledger: what it forwards, how it folds corrections, statement lines."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from factories import event, record
from test_ingest import ROSTER, Store, make_ingestor, reasons

from agents.ingest import Ingestor, statement_key, user_key
from app.config import PulseConfig, load_config
from app.settings import DEFAULT_CONFIG

NOON = 1795435200.0  # 2026-11-23T12:00Z, the arrival time of the records


def correction(count: int, amount: float = 0, **fields: Any) -> dict[str, Any]:
    fields = {"source": "ledger", "occurred_at": "2026-11-20T10:00:00Z", **fields}
    return event("carol", "opportunity_won", record_type="opportunity", record_id="o-1",
                 correction={"count": count, "sums": {"amount": amount}, "reason": "deleted",
                             "of": "won-1", "by": "del-1"}, **fields)


def test_counted_record_events_go_to_the_ledger_with_their_sums() -> None:
    ingestor, store = make_ingestor(), Store()
    won = event("carol", "opportunity_won", record_type="opportunity", record_id="o-1",
                amount=500, event_id="won-1")
    result = store.run(ingestor, [record(won, 0)])
    (key, value), = result.records
    assert key == b"opportunity|o-1"
    assert value | {"sums": {}} == {
        "event_id": "won-1", "user_id": "carol", "team_id": None, "type": "opportunity_won",
        "action": "created", "occurred_at": won["occurred_at"], "source": "generic",
        "record_type": "opportunity", "record_id": "o-1", "previous_owner": None,
        "counted": True, "sums": {}}
    assert value["sums"] == {"amount": 500}
    assert not store.run(ingestor, [record(won, 1)]).records  # a duplicate: not again


def test_a_late_record_change_that_counts_nothing_still_reaches_the_ledger() -> None:
    ingestor, store = make_ingestor(), Store()
    gone = event("carol", "meeting", "2026-11-19T10:00:00Z", action="deleted",
                 record_type="meeting", record_id="m-1")
    result = store.run(ingestor, [record(gone, 0)])
    assert not result.dead_letters and len(result.records) == 1
    late = event("carol", "meeting", "2026-11-19T10:00:00Z", record_type="meeting",
                 record_id="m-2")
    assert reasons(store.run(ingestor, [record(late, 1)])) == ["late"]


def with_statements() -> Ingestor:
    config = load_config(DEFAULT_CONFIG)
    config = PulseConfig.model_validate({**config.model_dump(), "ledger": {"statements": True}})
    return Ingestor(config, 65_536, 1, ROSTER.get)


def test_corrections_change_the_period_where_the_line_was_earned() -> None:
    ingestor, store = with_statements(), Store()
    won = event("carol", "opportunity_won", "2026-11-20T10:00:00Z", amount=500,
                record_type="opportunity", record_id="o-1")
    store.run(ingestor, [record(won, 0, arrival=NOON - 3 * 86_400)])
    day = user_key("d:2026-11-20", "carol")
    assert (store.value(day, "deals_won"), store.value(day, "won_amount")) == (1, 500)
    result = store.run(ingestor, [record(correction(-1, -500), 1)])  # 3 days later
    assert not result.dead_letters and not result.records  # never back to the ledger
    assert result.corrected == {"deleted": 1} and not result.counted
    assert (store.value(day, "deals_won"), store.value(day, "won_amount")) == (0, 0)
    hour = int(datetime(2026, 11, 20, 10, tzinfo=UTC).timestamp() // 3600)
    lines = store[statement_key("d:2026-11-20", hour, "carol")]["lines"]
    assert [(line["c"], line["f"]) for line in lines] == [(1, {"amount": 500}),
                                                          (-1, {"amount": -500})]


def test_corrections_only_from_the_ledger_and_within_retention() -> None:
    ingestor, store = make_ingestor(), Store()
    forged = correction(1, 10**6, source="generic")
    bad_count = correction(5)
    too_old = correction(-1, event_id="old", occurred_at="2026-09-01T10:00:00Z")
    result = store.run(ingestor, [record(forged, 0), record(bad_count, 1),
                                  record(too_old, 2)])
    assert reasons(result) == ["schema:correction", "schema:correction", "late"]


def test_a_correction_sent_again_after_the_dedup_horizon_counts_once() -> None:
    ingestor, store = make_ingestor(), Store()  # statements off: corrections get lines all the same
    won = event("carol", "opportunity_won", "2026-11-20T10:00:00Z", amount=500,
                record_type="opportunity", record_id="o-1")
    store.run(ingestor, [record(won, 0, arrival=NOON - 3 * 86_400)])
    fix = correction(-1, -500, event_id="fix:1")
    store.run(ingestor, [record(fix, 1)])
    store.run(ingestor, [record(fix, 1)])  # a replay of the same record: nothing new
    again = store.run(ingestor, [record(fix, 2, arrival=NOON + 20 * 86_400)])  # a rebuilt ledger
    assert again.duplicates == 1 and not again.corrected
    day = user_key("d:2026-11-20", "carol")
    assert (store.value(day, "deals_won"), store.value(day, "won_amount")) == (0, 0)


def test_awards_stand_unless_revoke_on_retraction_is_set() -> None:
    rule = {"id": "first_deal", "kind": "threshold", "kpi": "deals_won", "period": "day",
            "value": 1, "title": "First deal"}
    for revoke, kinds in ((False, []), (True, ["achievement_revoked"])):
        config = PulseConfig.model_validate({
            **load_config(DEFAULT_CONFIG).model_dump(), "achievements": [rule],
            "ledger": {"revoke_on_retraction": revoke}})
        ingestor, store = Ingestor(config, 65_536, 1, ROSTER.get), Store()
        won = event("carol", "opportunity_won", "2026-11-20T10:00:00Z", amount=500,
                    record_type="opportunity", record_id="o-1")
        awarded = store.run(ingestor, [record(won, 0, arrival=NOON - 3 * 86_400)]).awards
        assert [a.kind for a in awarded] == ["threshold"]
        revoked = store.run(ingestor, [record(correction(-1, -500), 1)]).awards
        assert [a.kind for a in revoked] == kinds
        assert all(a.achievement_id == awarded[0].achievement_id for a in revoked)


def test_a_statement_line_whose_write_was_lost_is_written_by_the_replay() -> None:
    """A crash between a batch's changelog writes: the buckets landed, the line did not."""
    ingestor, store = with_statements(), Store()
    won = event("carol", "opportunity_won", amount=500, record_type="opportunity",
                record_id="o-1")
    first = ingestor.fold([record(won, 0)], store.get)
    store.update({k: v for k, v in first.writes.items() if not k.startswith("e|")})
    again = store.run(ingestor, [record(won, 0)])  # the replay of the same record
    assert again.replayed == 1  # the buckets hold it already
    lines = [line for key, value in store.items() if key.startswith("e|")
             for line in value["lines"]]
    assert [line["id"] for line in lines] == [won["event_id"]]
