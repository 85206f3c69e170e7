"""Pipedrive adapter: documented v2/v1 payloads -> canonical events, Basic auth, robustness.

Fixtures are Pipedrive's own examples (see fixtures/pipedrive/SOURCES.md); variants (a deal
won, an activity marked done, an owner change, ...) are derived from them in the tests.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from app.adapters.base import Delivery, Parsed
from app.adapters.pipedrive import PipedriveAdapter
from app.edge import EdgeError
from app.settings import Settings
from schemas.activity import validate_event

FIXTURES = Path(__file__).parent / "fixtures" / "pipedrive"
USER, PASSWORD = "crm-pulse", "s3cret:with:colons"
COMPANY = "pipedrive:8087566"
OWNER = "12415231"


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def adapter(**credentials: Any) -> PipedriveAdapter:
    credentials = credentials or {"pipedrive_username": USER, "pipedrive_password": PASSWORD}
    return PipedriveAdapter(Settings(_env_file=None, **credentials))


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def delivery(body: bytes | dict[str, Any], authorization: str | None = None) -> Delivery:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = CIMultiDict({"Content-Type": "application/json", "User-Agent": "Pipedrive-Webhook"})
    if authorization is not None:
        headers["Authorization"] = authorization
    return Delivery("POST", "https://pulse.example.com/webhooks/pipedrive", headers, {}, raw)


def parse(body: bytes | dict[str, Any]) -> Parsed:
    parsed = adapter().parse(delivery(body))
    for vendor_event in parsed.events:
        validate_event(dict(vendor_event.event, user_id="u1"))
    return parsed


def summary(parsed: Parsed) -> list[tuple[Any, ...]]:
    return [(e.event["type"], e.event["action"], e.event["event_id"], e.owner)
            for e in parsed.events]


# --- documented payloads ----------------------------------------------------------------------

DOCUMENTED = [
    ("v2_activity_create.json", "meeting", "created",
     f"{COMPANY}:bbba59e9-1d1f-4794-9472-72540d421386", "2022-11-24T15:25:44.461Z",
     "appointments", None),
    ("v2_activity_update.json", "meeting", "updated",
     f"{COMPANY}:7a40ac1f-debd-4d22-b8d6-d9a687a96ec4", "2022-11-24T15:28:13.375Z", None, None),
    ("v2_activity_delete.json", "meeting", "deleted",
     f"{COMPANY}:df8b0894-c23e-40ac-a49f-07a4c8e66213", "2022-11-24T15:29:10.654Z", None, None),
    ("v2_deal_create.json", "opportunity_created", "created",
     f"{COMPANY}:71825ee0-0054-4267-b5fd-d28b7a414212", "2022-11-24T13:18:56.089Z",
     "opportunities", 100),
    ("v2_deal_update.json", "record_updated", "updated",
     f"{COMPANY}:df47d877-b58c-4886-91cd-1aa83e1d7366", "2022-11-24T15:11:55.724Z", None, None),
    ("v2_deal_delete.json", "opportunity_created", "deleted",
     f"{COMPANY}:a66e9392-fe41-4425-9bef-a1d32bf2df8c", "2022-11-24T15:16:53.335Z", None, None),
    ("v2_lead_create.json", "lead_created", "created",
     f"{COMPANY}:b18fa830-6c0d-11ed-9826-a53d0eb706a5", "2022-11-24T15:35:58.772Z", "leads",
     300),
    ("v2_lead_update.json", "record_updated", "updated",
     f"{COMPANY}:e235ba60-6c0d-11ed-a825-71d0cf99387b", "2022-11-24T15:37:20.391Z", None, None),
    ("v2_lead_delete.json", "lead_created", "deleted",
     f"{COMPANY}:f6902590-6c0d-11ed-b671-e5d3563ddafd", "2022-11-24T15:37:54.538Z", None, None),
    ("v2_organization_create.json", "account_created", "created",
     f"{COMPANY}:ece7b901-5898-4c80-986a-6b7feeabebe4", "2022-11-24T13:18:55.315Z", "accounts",
     None),
    ("v2_organization_update.json", "record_updated", "updated",
     f"{COMPANY}:ea17c64f-ec7e-4e47-a321-5d84b7735fef", "2022-11-24T15:21:23.152Z", None, None),
    ("v2_organization_delete.json", "account_created", "deleted",
     f"{COMPANY}:ae06c983-cc11-496f-86aa-45cc24f60695", "2022-11-24T15:22:17.705Z", None, None),
    ("v2_person_create.json", "contact_created", "created",
     f"{COMPANY}:5359a602-6d1b-4562-a385-ccaa762bd722", "2022-11-24T13:18:55.665Z", "contacts",
     None),
    ("v2_person_update.json", "record_updated", "updated",
     f"{COMPANY}:7c812ffd-8f50-45ea-a597-b8fcba2da9c0", "2022-11-24T15:18:35.616Z", None, None),
    ("v2_person_delete.json", "contact_created", "deleted",
     f"{COMPANY}:0c73badd-ba9e-43dd-ab86-687b9797f46b", "2022-11-24T15:19:45.149Z", None, None),
    ("v1_deal_added.json", "opportunity_created", "created",
     f"{COMPANY}:deal:8:create:1523440213384700", "2018-04-11T09:50:13.384Z", "opportunities",
     100),
    ("v1_activity_added.json", "call", "created",
     f"{COMPANY}:activity:2:create:1523440262101500", "2018-04-11T09:51:02.101Z", "phone_calls",
     None),
]


@pytest.mark.parametrize(("name", "type_", "action", "event_id", "occurred_at", "feature",
                          "amount"), DOCUMENTED, ids=[row[0] for row in DOCUMENTED])
def test_documented_payload_maps_to_one_event(name: str, type_: str, action: str,
                                              event_id: str, occurred_at: str,
                                              feature: str | None, amount: float | None) -> None:
    parsed = parse((FIXTURES / name).read_bytes())
    assert (parsed.ignored, parsed.unmapped) == (0, [])
    [vendor_event] = parsed.events
    event = vendor_event.event
    assert vendor_event.owner == OWNER
    assert (event["type"], event["action"], event["event_id"]) == (type_, action, event_id)
    assert event["occurred_at"] == occurred_at
    assert event.get("feature") == feature
    assert event.get("amount") == amount
    assert event["source"] == "pipedrive"
    assert "user_id" not in event


def test_created_events_carry_record_details_but_no_personal_data() -> None:
    [lead] = parse(load("v2_lead_create.json")).events
    assert lead.event["record_type"] == "lead"
    assert lead.event["record_id"] == "b1810230-6c0d-11ed-9826-a53d0eb706a5"
    assert lead.event["currency"] == "EUR"
    [call] = parse(load("v1_activity_added.json")).events
    assert call.event["duration_s"] == 15 * 60
    assert call.event["attributes"] == {"webhook_version": 1, "change_source": "app",
                                        "activity_type": "call"}
    for name in ("v2_activity_create.json", "v2_person_create.json", "v1_deal_updated_won.json"):
        text = json.dumps([e.event for e in parse(load(name)).events])
        assert "Sample" not in text and "Call with" not in text and "@" not in text


def test_redelivery_maps_to_the_same_event_ids() -> None:
    for name in sorted(p.name for p in FIXTURES.glob("*.json")):
        body = load(name)
        retried = copy.deepcopy(body)
        if "version" in body["meta"]:
            retried["meta"]["attempt"] = 3
        else:
            retried["retry"] = 2
        assert summary(parse(retried)) == summary(parse(body)), name


# --- derived variants: milestones, completion, owner changes ----------------------------------

def deal_won_v2(meta_id: str = "5f2e9a0c-0000-4000-8000-000000000001") -> dict[str, Any]:
    body = load("v2_deal_update.json")
    body["data"].update(status="won", won_time="2022-11-24T15:40:00Z", value=2500)
    body["previous"] = {"status": "open", "won_time": None, "value": 100}
    body["meta"]["id"] = meta_id
    return body


def test_deal_won_is_a_milestone_with_value_counted_once() -> None:
    [won] = parse(deal_won_v2()).events
    assert won.owner == OWNER
    assert won.event["type"] == "opportunity_won"
    assert won.event["action"] == "created"
    assert won.event["event_id"] == f"{COMPANY}:deal:8:won"
    assert (won.event["amount"], won.event["currency"]) == (2500, "EUR")
    again = parse(deal_won_v2(meta_id="another-delivery")).events
    assert [e.event["event_id"] for e in again] == [f"{COMPANY}:deal:8:won"]


def test_v1_deal_won_shares_the_milestone_id_and_reads_the_owner_object() -> None:
    [won] = parse(load("v1_deal_updated_won.json")).events
    assert (won.event["type"], won.event["event_id"]) == ("opportunity_won",
                                                          f"{COMPANY}:deal:8:won")
    assert won.owner == OWNER  # current.user_id is {"id": 12415231, ...}, previous an int
    assert (won.event["amount"], won.event["currency"]) == (100, "EUR")
    assert won.event["occurred_at"] == "2018-04-11T10:00:13.512Z"


def test_deal_lost_and_deal_created_closed() -> None:
    body = load("v2_deal_update.json")
    body["data"]["status"] = "lost"
    body["previous"] = {"status": "open"}
    assert summary(parse(body)) == [("opportunity_lost", "created", f"{COMPANY}:deal:8:lost",
                                     OWNER)]
    created = load("v2_deal_create.json")
    created["data"]["status"] = "won"
    assert [e.event["type"] for e in parse(created).events] == ["opportunity_created",
                                                               "opportunity_won"]


def test_deal_status_unchanged_is_no_milestone() -> None:
    body = deal_won_v2()
    body["previous"] = {"title": "Old title"}
    assert [e.event["type"] for e in parse(body).events] == ["record_updated"]


def test_activity_marked_done_is_completed() -> None:
    body = load("v2_activity_update.json")
    body["data"]["done"] = True
    body["previous"] = {"done": False, "update_time": "2022-11-24T15:26:57Z"}
    assert summary(parse(body)) == [
        ("meeting", "completed", f"{COMPANY}:7a40ac1f-debd-4d22-b8d6-d9a687a96ec4:completed",
         OWNER)]
    [call] = parse(load("v1_activity_updated_done.json")).events
    assert (call.event["type"], call.event["action"]) == ("call", "completed")
    assert call.event["attributes"]["done"] is True


def test_owner_change_is_reassigned_with_previous_owner() -> None:
    body = load("v2_person_update.json")
    body["data"]["owner_id"] = 777
    body["previous"] = {"owner_id": 12415231}
    [moved] = parse(body).events
    assert moved.owner == "777"
    assert (moved.event["type"], moved.event["action"]) == ("contact_created", "reassigned")
    assert moved.event["attributes"]["previous_owner"] == OWNER
    assert moved.event["event_id"].endswith(":reassigned")


def test_deal_won_by_a_new_owner_gives_milestone_and_reassignment() -> None:
    body = deal_won_v2()
    body["data"]["owner_id"] = 777
    body["previous"]["owner_id"] = 12415231
    assert [(e.event["type"], e.event["action"], e.owner) for e in parse(body).events] == [
        ("opportunity_won", "created", "777"), ("opportunity_created", "reassigned", "777")]


def test_activity_done_by_a_new_owner_gives_completed_and_reassigned() -> None:
    body = load("v2_activity_update.json")
    body["data"].update(done=True, owner_id=777)
    body["previous"] = {"done": False, "owner_id": 12415231}
    assert [(e.event["action"], e.owner) for e in parse(body).events] == [
        ("completed", "777"), ("reassigned", "777")]


def test_bulk_edit_and_merge_are_noted_in_attributes() -> None:
    body = load("v2_person_delete.json")
    body["meta"].update(is_bulk_edit=True, merged_to_id="9")
    [deleted] = parse(body).events
    assert deleted.event["attributes"] == {"webhook_version": 2, "change_source": "app",
                                           "bulk_edit": True, "merged_to_id": "9"}


@pytest.mark.parametrize(("kind", "type_", "feature"), [
    ("call", "call", "phone_calls"), ("meeting", "meeting", "appointments"),
    ("email", "email", "email_tracking"), ("task", "task", None), ("deadline", "task", None),
    ("lunch", "task", None), ("custom_demo_type", "task", None), (None, "task", None),
])
def test_activity_types(kind: str | None, type_: str, feature: str | None) -> None:
    body = load("v2_activity_create.json")
    body["data"]["type"] = kind
    [event] = parse(body).events
    assert (event.event["type"], event.event.get("feature")) == (type_, feature)


def test_owner_falls_back_to_the_user_who_made_the_change() -> None:
    body = load("v2_person_create.json")
    body["data"]["owner_id"] = None
    body["meta"]["user_id"] = "999"
    assert parse(body).events[0].owner == "999"
    del body["meta"]["user_id"]
    assert parse(body).events[0].owner is None  # the edge dead-letters it as unknown_user


def test_integer_ids_and_unix_timestamp_in_v2() -> None:
    body = load("v2_deal_create.json")
    body["meta"].update(company_id=12882925, entity_id=8, id=1, timestamp=1727447128)
    [event] = parse(body).events
    assert event.event["event_id"] == "pipedrive:12882925:1"
    assert event.event["occurred_at"] == "2024-09-27T14:25:28.000Z"


def test_v1_merge_and_event_name_only() -> None:
    body = load("v1_deal_added.json")
    body["meta"]["action"] = "merged"
    body["previous"] = copy.deepcopy(body["current"])
    body["previous"]["person_id"] = 3
    assert [e.event["type"] for e in parse(body).events] == ["record_updated"]
    body = load("v1_activity_added.json")
    del body["meta"]["action"], body["meta"]["object"]
    assert [e.event["type"] for e in parse(body).events] == ["call"]


# --- ignored, unmapped, not Pipedrive ---------------------------------------------------------

@pytest.mark.parametrize("name", ["v2_note_create.json", "v2_product_create.json",
                                  "v2_pipeline_create.json", "v2_user_update.json"])
def test_unsupported_entities_are_ignored(name: str) -> None:
    parsed = parse(load(name))
    assert (parsed.events, parsed.unmapped, parsed.ignored) == ([], [], 1)


def test_v1_unsupported_object_is_ignored() -> None:
    body = load("v1_activity_added.json")
    body["meta"]["object"] = "activityType"
    assert parse(body).ignored == 1


def mutate(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    *parents, last = path.split(".")
    target = body
    for key in parents:
        target = target[key]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return body


@pytest.mark.parametrize(("name", "path", "value", "reason"), [
    ("v2_deal_create.json", "meta.timestamp", "24.11.2022 13:18", "schema:occurred_at"),
    ("v2_deal_create.json", "meta.timestamp", "2022-11-24T13:18:56", "schema:occurred_at"),
    ("v2_deal_create.json", "meta.timestamp", 12, "schema:occurred_at"),
    ("v2_deal_create.json", "data.value", "100 EUR", "schema:amount"),
    ("v2_deal_create.json", "data.currency", "eur", "schema:currency"),
    ("v2_deal_create.json", "meta.id", KeyError, "unmappable"),
    ("v2_deal_create.json", "meta.company_id", None, "unmappable"),
    ("v2_deal_create.json", "data", None, "unmappable"),
    ("v2_deal_create.json", "meta.action", "archive", "unmappable"),
    ("v2_deal_create.json", "meta.entity", 5, "unmappable"),
    ("v1_deal_added.json", "meta.timestamp", KeyError, "unmappable"),
])
def test_broken_elements_are_unmapped(name: str, path: str, value: Any, reason: str) -> None:
    body = mutate(load(name), path, value)
    if path == "meta.timestamp" and name.startswith("v1"):
        del body["meta"]["timestamp_micro"]
    raw = json.dumps(body).encode()
    parsed = adapter().parse(delivery(raw))
    assert parsed.events == []
    [unmapped] = parsed.unmapped
    assert unmapped.reason == reason
    assert unmapped.original == raw
    assert unmapped.message


def test_missing_record_id_is_unmapped() -> None:
    body = load("v2_activity_delete.json")
    del body["meta"]["entity_id"]
    body["previous"] = None
    assert parse(body).unmapped[0].reason == "unmappable"


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1, 2]", b'{"data": {}}',
                                 b'{"meta": "x"}', b'{"meta": {"action": "create"}}'])
def test_not_pipedrive_is_a_bad_body(raw: bytes) -> None:
    with pytest.raises(EdgeError) as error:
        adapter().parse(delivery(raw))
    assert (error.value.status, error.value.reason) == (400, "unmappable")


# --- HTTP Basic auth ----------------------------------------------------------------------------

def authenticate(authorization: str | None, **credentials: Any) -> None:
    body = (FIXTURES / "v2_deal_create.json").read_bytes()
    adapter(**credentials).authenticate(delivery(body, authorization), now=0.0)


def test_matching_basic_credentials_pass() -> None:
    authenticate(basic(USER, PASSWORD))
    authenticate("basic  " + basic(USER, PASSWORD).split()[1])


@pytest.mark.parametrize("authorization", [
    None, "", basic(USER, "wrong"), basic("someone", PASSWORD), basic(USER, PASSWORD[:-1]),
    basic(USER, ""), "Bearer " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
    "Basic", "Basic ***", "Basic Y3JtLXB1bHNl",  # no colon
    "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(), "Basic Y3Jt!!!", "Basic Y3J",
    "Basic " + "A" * 5000,
])
def test_wrong_missing_or_malformed_credentials_are_refused(authorization: str | None) -> None:
    with pytest.raises(EdgeError) as error:
        authenticate(authorization)
    assert (error.value.status, error.value.reason) == (401, "bad_credentials")
    assert "CRM_PULSE_PIPEDRIVE_USERNAME" in error.value.message
    assert PASSWORD not in error.value.message


def test_configured_needs_both_credentials_and_unconfigured_is_left_to_the_edge() -> None:
    assert adapter().configured()
    assert not adapter(pipedrive_username=USER).configured()
    assert not adapter(pipedrive_password=PASSWORD).configured()
    authenticate(None, pipedrive_username=USER)  # the edge refuses unconfigured vendors


# --- robustness ---------------------------------------------------------------------------------

def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths(item, (*prefix, index))
    return found


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30)
    | st.sampled_from(["won", "lost", "call", "2022-11-24T15:25:44.461Z", "01:30", "EUR",
                       "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", "create",
                       "change", "delete", "added", "merged", "deleted"]),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=6,
)
BODIES = [load(p.name) for p in sorted(FIXTURES.glob("*.json"))]


def only_edge_errors(raw: bytes) -> None:
    try:
        parsed = adapter().parse(delivery(raw))
    except EdgeError as error:
        assert error.status == 400
        return
    for vendor_event in parsed.events:
        validate_event(dict(vendor_event.event, user_id="u1"))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_edge_errors(raw: bytes) -> None:
    only_edge_errors(raw)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_documented_payloads_map_or_dead_letter(data: st.DataObject) -> None:
    body = copy.deepcopy(data.draw(st.sampled_from(BODIES)))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths(body) or [("meta",)]))
        *parents, last = path
        target: Any = body
        for key in parents:
            target = target[key]
        if data.draw(st.booleans()) and isinstance(target, dict):
            del target[last]
        else:
            target[last] = data.draw(JSON_VALUES)
        if not isinstance(body, dict) or not paths(body):
            break
    only_edge_errors(json.dumps(body).encode())


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_authorization_headers_only_raise_401(header: str) -> None:
    try:
        authenticate(header)
    except EdgeError as error:
        assert error.status == 401
