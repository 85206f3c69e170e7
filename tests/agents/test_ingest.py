"""Ingest as a pure function: validation, DLQ reasons, dedup, lateness, replay exactness."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from factories import event, record

from agents.ingest import Ingestor, UserInfo, partition_of, team_key, user_key
from app.config import PulseConfig, load_config
from app.settings import DEFAULT_CONFIG

ROSTER = {
    "alice": UserInfo("north", "Europe/Berlin"),
    "bruce": UserInfo("north", "Australia/Sydney"),
    "carol": UserInfo("south", None),
}
BERLIN_DAY_END = 1795388400.0  # 2026-11-22T23:00Z, the end of Berlin's 2026-11-22


def make_ingestor(strict: bool = False, max_event_bytes: int = 65_536,
                  partitions: int = 1) -> Ingestor:
    config = load_config(DEFAULT_CONFIG)
    if strict:
        config = PulseConfig.model_validate(
            {**config.model_dump(), "roster": {"strict": True}})
    return Ingestor(config, max_event_bytes, partitions, ROSTER.get)


class Store(dict):
    """The KPI table stand-in: a dict that takes a batch's writes."""

    def run(self, ingestor: Ingestor, records: list) -> Any:
        result = ingestor.fold(records, self.get)
        self.update(result.writes)
        return result

    def value(self, key: str, kpi: str) -> float:
        bucket = self.get(key)
        return bucket["n"].get(kpi, 0) if bucket else 0


def reasons(result: Any) -> list[str]:
    return [orjson.loads(value)["reason"] for _, value in result.dead_letters]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe garbage", "invalid_json"),
        (b'{"event_id": 1', "invalid_json"),
        (b"[]", "schema:event"),
        (b'"a string"', "schema:event"),
        (orjson.dumps({"occurred_at": "2026-11-23T10:00:00Z", "user_id": "alice",
                       "type": "call"}), "schema:event_id"),
        (orjson.dumps(event(occurred_at="2026-11-23T10:00:00")), "schema:occurred_at"),
        (orjson.dumps(event(occurred_at="yesterday")), "schema:occurred_at"),
        (orjson.dumps(event(amount="12")), "schema:amount"),
        (orjson.dumps(event(amount=True)), "schema:amount"),
        (orjson.dumps(event(quality=1.5)), "schema:quality"),
        (orjson.dumps(event(user_id=42)), "schema:user_id"),
        (orjson.dumps(event(type="Call Me!")), "schema:type"),
        (orjson.dumps(event(action="exploded")), "schema:action"),
        (orjson.dumps(event(currency="euro")), "schema:currency"),
        (orjson.dumps(event(attributes=[1])), "schema:attributes"),
    ],
)
def test_bad_records_go_to_the_dlq_with_a_precise_reason(raw: bytes, reason: str) -> None:
    result = Store().run(make_ingestor(), [record(raw, 0, key="alice")])
    assert reasons(result) == [reason]
    assert result.writes == {}
    dlq = orjson.loads(result.dead_letters[0][1])
    assert dlq["original_b64"]
    assert dlq["message"]
    assert dlq["dlq_id"] == "crm.activities:0:0"


def test_huge_payload_is_rejected_without_folding() -> None:
    big = event(attributes={"blob": "x" * 70_000})
    result = Store().run(make_ingestor(), [record(big, 0)])
    assert reasons(result) == ["too_large"]


def test_unknown_user_is_rejected_only_when_the_roster_is_strict() -> None:
    stranger = event(user_id="mallory")
    assert reasons(Store().run(make_ingestor(strict=True), [record(stranger, 0)])) == [
        "unknown_user"]
    assert reasons(Store().run(make_ingestor(strict=False), [record(stranger, 0)])) == []


def test_one_bad_element_of_an_array_does_not_spoil_the_others() -> None:
    store = Store()
    batch = [event(), {"user_id": "alice"}, event(type="phonecall")]
    result = store.run(make_ingestor(), [record(batch, 7)])
    assert reasons(result) == ["schema:event_id"]
    assert orjson.loads(result.dead_letters[0][1])["index"] == 1
    assert store.value(user_key("d:2026-11-23", "alice"), "calls") == 2


def test_duplicate_deliveries_count_once() -> None:
    store = Store()
    call = event()
    store.run(make_ingestor(), [record(call, 0), record(call, 1)])
    result = store.run(make_ingestor(), [record(call, 2)])
    assert result.duplicates == 1
    assert store.value(user_key("d:2026-11-23", "alice"), "calls") == 1


def test_same_event_twice_inside_one_array_counts_once() -> None:
    store = Store()
    call = event()
    store.run(make_ingestor(), [record([call, call], 0)])
    assert store.value(user_key("d:2026-11-23", "alice"), "calls") == 1


def test_replaying_already_applied_records_changes_nothing() -> None:
    store = Store()
    records = [record([event(), event(type="meeting")], i) for i in range(5)]
    store.run(make_ingestor(), records)
    before = orjson.dumps(dict(sorted(store.items())))
    result = store.run(make_ingestor(), records)
    assert result.writes == {}
    assert result.replayed == 10
    assert orjson.dumps(dict(sorted(store.items()))) == before


def test_replay_after_a_partial_flush_completes_only_the_missing_keys() -> None:
    """A crash may persist some keys of a batch but not others: replay fills the gaps."""
    records = [record(event(), i) for i in range(4)]
    complete = Store()
    complete.run(make_ingestor(), records)
    partial = Store()
    result = make_ingestor().fold(records, partial.get)
    kept = sorted(result.writes)[::2]  # only every other key reached the changelog
    partial.update({k: result.writes[k] for k in kept})
    partial.run(make_ingestor(), records)
    assert partial == complete


def test_late_events_inside_grace_count_and_later_ones_go_to_the_dlq() -> None:
    store = Store()
    # Berlin day 2026-11-22 ends 2026-11-22T23:00Z; grace is 1 h.
    yesterday = event(occurred_at="2026-11-22T20:00:00Z")
    inside = record(yesterday, 0, arrival=BERLIN_DAY_END + 1800)
    store.run(make_ingestor(), [inside])
    assert store.value(user_key("d:2026-11-22", "alice"), "calls") == 1
    too_late = record(event(occurred_at="2026-11-22T20:00:00Z"), 1,
                      arrival=BERLIN_DAY_END + 3 * 3600)
    assert reasons(store.run(make_ingestor(), [too_late])) == ["late"]
    assert store.value(user_key("d:2026-11-22", "alice"), "calls") == 1


def test_far_future_events_are_rejected() -> None:
    result = Store().run(make_ingestor(), [record(event(occurred_at="2026-11-30T10:00:00Z"), 0)])
    assert reasons(result) == ["schema:occurred_at"]


def test_type_aliases_and_kpi_kinds() -> None:
    store = Store()
    store.run(make_ingestor(), [record([
        event(type="PhoneCall"),
        event(type="opportunity_won", amount=1200.5, currency="EUR"),
        event(type="opportunity_won", amount=800),
        event(type="opportunity_lost"),
        event(type="feature_used", feature="leads"),
        event(type="feature_used", feature="leads"),
        event(type="login", feature="reports"),
    ], 0)])
    bucket = store[user_key("d:2026-11-23", "alice")]
    assert bucket["n"]["calls"] == 1
    assert bucket["n"]["won_amount"] == 2000.5
    assert bucket["n"]["deals_closed"] == 3
    assert sorted(bucket["s"]["features_used"]) == ["leads", "reports"]
    values = make_ingestor().kpis.read([bucket])
    assert values["features_used"] == 2
    assert values["win_rate"] == round(2 / 3, 6)


def test_corrections_do_not_count_until_the_ledger_handles_them() -> None:
    store = Store()
    store.run(make_ingestor(), [record([event(action="deleted"), event(action="updated")], 0)])
    assert store.value(user_key("d:2026-11-23", "alice"), "calls") == 0


def test_team_partials_sum_members_per_partition() -> None:
    store = Store()
    ingestor = make_ingestor(partitions=4)

    def at_home(value: dict, offset: int) -> object:
        return record(value, offset, partition=partition_of(value["user_id"].encode(), 4))

    store.run(ingestor, [
        at_home(event(user_id="alice"), 0),
        at_home(event(user_id="bruce", occurred_at="2026-11-23T01:00:00Z"), 1),
        at_home(event(user_id="carol", team_id="north"), 2),  # the event's team wins
        at_home(event(user_id="carol"), 3),
    ])
    north = [store.get(team_key("d:2026-11-23", p, "north")) for p in range(4)]
    assert ingestor.kpis.read(north)["calls"] == 3
    south = [store.get(team_key("d:2026-11-23", p, "south")) for p in range(4)]
    assert ingestor.kpis.read(south)["calls"] == 1


def test_team_periods_use_the_team_timezone() -> None:
    """Bruce (Sydney) calls at 09:00 on his 24th: still the 23rd for his Berlin team."""
    store = Store()
    store.run(make_ingestor(), [record(event(user_id="bruce",
                                             occurred_at="2026-11-24T09:00:00+11:00"), 0)])
    assert store.value(user_key("d:2026-11-24", "bruce"), "calls") == 1
    assert store.value(team_key("d:2026-11-23", 0, "north"), "calls") == 1


def test_records_on_the_wrong_partition_are_forwarded() -> None:
    ingestor = make_ingestor(partitions=4)
    home = partition_of(b"alice", 4)
    result = Store().run(ingestor, [record(event(), 0, partition=(home + 1) % 4)])
    assert [key for key, _, _ in result.forwards] == [b"alice"]
    assert result.writes == {}


def test_tombstones_and_bad_timestamps_go_to_the_dlq() -> None:
    tombstone = record(b"", 0, key="alice")
    tombstone = type(tombstone)(tombstone.topic, 0, 0, tombstone.timestamp, b"alice", None)
    future = record(event(), 1, arrival=1e17)
    result = Store().run(make_ingestor(), [tombstone, future])
    assert reasons(result) == ["invalid_json", "bad_timestamp"]


def test_redelivery_stamped_a_day_earlier_is_still_a_duplicate() -> None:
    store = Store()
    call = event(occurred_at="2026-11-23T23:59:00+00:00")
    store.run(make_ingestor(), [record(call, 0, arrival=1795478400.5)])  # 2026-11-24T00:00Z
    result = store.run(make_ingestor(), [record(call, 1, arrival=1795478399.5)])
    assert result.duplicates == 1


def test_duplicate_of_a_counted_event_is_not_reported_late() -> None:
    store = Store()
    call = event(occurred_at="2026-11-22T20:00:00Z")
    store.run(make_ingestor(), [record(call, 0, arrival=BERLIN_DAY_END + 60)])
    result = store.run(make_ingestor(), [record(call, 1, arrival=BERLIN_DAY_END + 5 * 3600)])
    assert (result.duplicates, reasons(result)) == (1, [])


def test_user_timezone_decides_the_day() -> None:
    store = Store()
    store.run(make_ingestor(), [record(event(user_id="bruce",
                                             occurred_at="2026-11-23T23:30:00+11:00"), 0)])
    assert store.value(user_key("d:2026-11-23", "bruce"), "calls") == 1
    assert store.value(user_key("h:2026-11-23T23", "bruce"), "calls") == 1


def test_records_not_keyed_by_their_user_are_forwarded_not_counted() -> None:
    store = Store()
    result = store.run(make_ingestor(), [record(event(user_id="carol"), 0, key="alice")])
    assert [key for key, _, _ in result.forwards] == [b"carol"]
    assert store == {}


def test_unknown_fields_are_kept() -> None:
    result = Store().run(make_ingestor(), [record(event(user_id="x"), 0, key="y")])
    payload = event(crm_extra={"k": 1})
    forwarded = Store().run(make_ingestor(), [record(payload, 0, key="other")]).forwards
    assert orjson.loads(forwarded[0][1])["crm_extra"] == {"k": 1}
    assert result.forwards
