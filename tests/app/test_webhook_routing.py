"""From parsed deliveries to produced records: owner mapping, validation, dead letters."""

from __future__ import annotations

import base64

import orjson

from app.adapters.base import Parsed, Unmapped, VendorEvent
from app.adapters.dynamics365 import Dynamics365Adapter
from app.adapters.generic import GenericAdapter
from app.adapters.hubspot import HubSpotAdapter
from app.settings import Settings
from app.webhooks import OwnerDirectory, body_digest, route

SETTINGS = Settings(_env_file=None)
HUBSPOT, DYNAMICS, GENERIC = (cls(SETTINGS) for cls in
                              (HubSpotAdapter, Dynamics365Adapter, GenericAdapter))
GUID = "75c2dd85-e89e-e711-8122-000d3aa2331c"
PROFILES = [
    {"user_id": "hugo", "team_id": "north", "hubspot_user_id": "9586504"},
    {"user_id": "dora", "team_id": "north", "dynamics365_id": "{" + GUID.upper() + "}"},
]
NOW = 1_795_000_000.0


def directory(profiles: list[dict] | None = None, **timing: float) -> OwnerDirectory:
    source = PROFILES if profiles is None else profiles
    return OwnerDirectory(lambda: list(source), (HUBSPOT, DYNAMICS, GENERIC), **timing)


def call(owner: str | None, event_id: str = "e1", **fields: object) -> VendorEvent:
    event = {"event_id": event_id, "occurred_at": "2026-11-23T09:00:00Z", "type": "call",
             **fields}
    return VendorEvent(owner, event)


def dead(routed_letters: list[tuple[bytes, bytes]]) -> list[dict]:
    return [orjson.loads(value) for _, value in routed_letters]


def test_vendor_owners_map_to_roster_users_by_each_vendors_comparison() -> None:
    owners = directory()
    assert owners.user_for(HUBSPOT, "9586504") == "hugo"
    assert owners.user_for(DYNAMICS, GUID) == "dora"  # case and braces do not matter
    assert owners.user_for(HUBSPOT, GUID) is None     # another vendor's column


def test_a_user_added_to_the_roster_is_found_on_the_next_miss() -> None:
    profiles = list(PROFILES)
    owners = directory(profiles, miss_refresh_s=0.0)
    assert owners.user_for(HUBSPOT, "42") is None
    profiles.append({"user_id": "new", "team_id": "north", "hubspot_user_id": "42"})
    assert owners.user_for(HUBSPOT, "42") == "new"


def test_known_owners_are_grouped_by_user_with_the_vendor_as_source() -> None:
    parsed = Parsed(events=[call("9586504", "a"), call("9586504", "b")])
    routed = route(HUBSPOT, parsed, b"body", directory(), strict_roster=True, received_at=NOW)
    assert routed.dead_letters == []
    assert [(e["user_id"], e["event_id"], e["source"]) for e in routed.by_user["hugo"]] == [
        ("hugo", "a", "hubspot"), ("hugo", "b", "hubspot")]
    assert routed.accepted == 2


def test_unknown_owners_dead_lettered_if_strict_else_kept_under_the_vendor_id() -> None:
    parsed = Parsed(events=[call("777"), call(None, "e2")])
    strict = route(HUBSPOT, parsed, b"body", directory(), strict_roster=True, received_at=NOW)
    assert strict.by_user == {}
    letters = dead(strict.dead_letters)
    assert [(d["reason"], d["index"]) for d in letters] == [("unknown_user", 0),
                                                            ("unknown_user", 1)]
    assert letters[0]["dlq_id"] == f"webhook:hubspot:{body_digest(b'body')}:0"
    assert orjson.loads(base64.b64decode(letters[0]["original_b64"]))["event_id"] == "e1"
    lenient = route(HUBSPOT, parsed, b"body", directory(), strict_roster=False,
                    received_at=NOW)
    assert list(lenient.by_user) == ["hubspot:777"]  # no owner at all: still dead-lettered
    assert [d["reason"] for d in dead(lenient.dead_letters)] == ["unknown_user"]


def test_adapter_rejects_and_invalid_mapped_events_go_to_the_dlq_with_their_reason() -> None:
    parsed = Parsed(events=[call("9586504", occurred_at="yesterday"), call("9586504", "ok")],
                    unmapped=[Unmapped("unmappable", "no record id", b'{"x":1}')])
    routed = route(HUBSPOT, parsed, b"body", directory(), strict_roster=True, received_at=NOW)
    assert [e["event_id"] for e in routed.by_user["hugo"]] == ["ok"]
    assert [d["reason"] for d in dead(routed.dead_letters)] == ["unmappable",
                                                                "schema:occurred_at"]


def test_generic_owners_are_user_ids_already() -> None:
    routed = route(GENERIC, Parsed(events=[call("zoe")]), b"body", directory(),
                   strict_roster=True, received_at=NOW)
    assert list(routed.by_user) == ["zoe"]


def test_the_previous_owner_of_a_reassignment_is_mapped_for_the_ledger() -> None:
    moved = call(GUID, "r1", action="reassigned", record_type="opportunity", record_id="o-1",
                 attributes={"previous_owner": "9586504"})
    routed = route(HUBSPOT, Parsed(events=[call("9586504", "r0", action="reassigned",
                                                previous_owner="9586504")]),
                   b"body", directory(), strict_roster=False, received_at=NOW)
    assert routed.by_user["hugo"][0]["previous_owner"] == "hugo"
    routed = route(DYNAMICS, Parsed(events=[moved]), b"body", directory(),
                   strict_roster=False, received_at=NOW)
    assert routed.by_user["dora"][0]["previous_owner"] == "dynamics365:9586504"  # unknown


def test_corrections_are_refused_at_the_edge() -> None:
    forged = [call("9586504", "c1", correction={"count": 1, "sums": {}, "reason": "updated"}),
              call("9586504", "c2", source="ledger")]
    routed = route(HUBSPOT, Parsed(events=forged), b"body", directory(), strict_roster=True,
                   received_at=NOW)
    assert routed.accepted == 0
    assert routed.reasons == ["schema:correction", "schema:correction"]
