"""Dynamics 365 / Dataverse webhook adapter: documented payloads, auth, idempotency, robustness.

Fixtures are verbatim (see fixtures/dynamics365/SOURCES.md). Microsoft documents one full
webhook body (a contact Update); the other messages are built here from that body, with the
InputParameters the SDK documents for each request (WinOpportunityRequest.OpportunityClose,
CloseIncidentRequest.IncidentResolution, SetStateRequest.State, AssignRequest.Assignee, ...).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from app.adapters.base import Delivery, Parsed
from app.adapters.dynamics365 import Dynamics365Adapter
from app.edge import EdgeError
from app.settings import Settings
from schemas.activity import validate_event

FIXTURES = Path(__file__).parent / "fixtures" / "dynamics365"
KEY = "3b1e7f0c-5d2a-4c47-9d0e-4f6a2b8c9e11"
CONTRACTS = "http://schemas.microsoft.com/xrm/2011/Contracts"
LEARN_USER = "75c2dd85-e89e-e711-8122-000d3aa2331c"
LEARN_OPERATION = "4af10637-4ea2-e711-8122-000d3aa2331c"
LEARN_RECORD = "6d81597f-0f9f-e711-8122-000d3aa2331c"
OWNER = "be79eb35-e36f-ef11-a670-6045bd1ddf50"
OTHER_USER = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
OPPORTUNITY = "9b2c1de0-1234-4c9a-8f00-aaaaaaaaaaaa"
INCIDENT = "5d3e0c4a-77b2-4f61-9a0e-bbbbbbbbbbbb"


def adapter(key: str | None = KEY) -> Dynamics365Adapter:
    return Dynamics365Adapter(Settings(_env_file=None, dynamics365_webhook_key=key))


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def delivery(body: bytes | dict[str, Any], query: dict[str, str] | None = None,
             headers: dict[str, str] | None = None) -> Delivery:
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    query = {"code": KEY} if query is None else query
    url = "https://pulse.example.com/webhooks/dynamics365"
    if query:
        url += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    return Delivery("POST", url, CIMultiDict({"Content-Type": "application/json",
                                               **(headers or {})}), query, body)


def parse(body: bytes | dict[str, Any]) -> Parsed:
    return adapter().parse(delivery(body))


def only_event(body: bytes | dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    parsed = parse(body)
    assert parsed.unmapped == [] and parsed.ignored == 0
    [event] = parsed.events
    validate_event(dict(event.event, user_id="u1"))
    return event.owner, event.event


# The documented serialization of SDK types (as in the Microsoft Learn sample).
def ref(logical_name: str, record_id: str) -> dict[str, Any]:
    return {"__type": f"EntityReference:{CONTRACTS}", "Id": record_id, "KeyAttributes": [],
            "LogicalName": logical_name, "Name": None, "RowVersion": None}


def option(value: int) -> dict[str, Any]:
    return {"__type": f"OptionSetValue:{CONTRACTS}", "Value": value}


def money(value: float) -> dict[str, Any]:
    return {"__type": f"Money:{CONTRACTS}", "Value": value}


def entity(logical_name: str, record_id: str | None, **attributes: Any) -> dict[str, Any]:
    return {"__type": f"Entity:{CONTRACTS}",
            "Attributes": [{"key": k, "value": v} for k, v in attributes.items()],
            "EntityState": None, "FormattedValues": [], "Id": record_id, "KeyAttributes": [],
            "LogicalName": logical_name, "RelatedEntities": [], "RowVersion": None}


def image(**attributes: Any) -> list[dict[str, Any]]:
    return [{"key": "Image", "value": entity("any", None, **attributes)}]


def context(message: str, entity_name: str, record_id: str = LEARN_RECORD,
            inputs: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """The documented Learn body with another message, table and InputParameters."""
    body = json.loads(fixture("contact_update_learn.json"))
    body.update(MessageName=message, PrimaryEntityName=entity_name, PrimaryEntityId=record_id,
                PostEntityImages=[], ParentContext=None,
                InputParameters=[{"key": k, "value": v} for k, v in (inputs or {}).items()])
    body.update(fields)
    return body


# --- documented payloads ---------------------------------------------------------------------

def test_learn_contact_update_is_a_record_update() -> None:
    owner, event = only_event(fixture("contact_update_learn.json"))
    assert owner == LEARN_USER  # no ownerid in the step: the initiating user
    assert event == {
        "event_id": f"dynamics365:{LEARN_OPERATION}:{LEARN_RECORD}",
        "occurred_at": "2017-09-26T07:04:08.000Z",  # /Date(1506409448000-0700)/: UTC millis
        "type": "record_updated", "action": "updated", "source": "dynamics365",
        "record_type": "contact", "record_id": LEARN_RECORD, "attributes": {"message": "Update"},
    }


def test_prevalidation_step_is_ignored_and_the_same_create_after_commit_maps() -> None:
    body = fixture("account_create_prevalidation.json")
    assert parse(body) == Parsed(ignored=1)  # Stage 10: the create may still roll back

    post = json.loads(body) | {"Stage": 40}
    owner, event = only_event(post)
    assert owner == OWNER
    assert event["type"] == "account_created" and event["action"] == "created"
    assert event["feature"] == "accounts"
    assert event["record_id"] == "acf5b83d-06a1-4ef3-b78f-c2eca283e6ad"
    assert event["event_id"] == ("dynamics365:68d6ebe1-ba57-4842-9cbc-d2f4234e3c19:"
                                 "acf5b83d-06a1-4ef3-b78f-c2eca283e6ad")
    assert event["occurred_at"] == "2025-09-25T02:04:18.000Z"


@pytest.mark.parametrize(("table", "type_", "feature"), [
    ("phonecall", "call", "phone_calls"),
    ("appointment", "meeting", "appointments"),
    ("email", "email", "email_tracking"),
    ("task", "task", None),
    ("account", "account_created", "accounts"),
    ("contact", "contact_created", "contacts"),
    ("lead", "lead_created", "leads"),
    ("opportunity", "opportunity_created", "opportunities"),
    ("quote", "quote_created", "quotes"),
    ("salesorder", "order_created", "orders"),
    ("incident", "case_created", "cases"),
    ("campaign", "campaign_created", "campaigns"),
])
def test_create_maps_each_table(table: str, type_: str, feature: str | None) -> None:
    body = context("Create", table, inputs={
        "Target": entity(table, LEARN_RECORD, ownerid=ref("systemuser", OWNER))})
    owner, event = only_event(body)
    assert owner == OWNER
    assert (event["type"], event["action"], event.get("feature")) == (type_, "created", feature)
    assert event["record_type"] == table
    assert event["event_id"] == f"dynamics365:{LEARN_OPERATION}:{LEARN_RECORD}"


def test_redelivery_maps_to_the_same_event_ids() -> None:
    for body in (fixture("contact_update_learn.json"),
                 json.dumps(json.loads(fixture("account_create_prevalidation.json"))
                            | {"Stage": 40}).encode()):
        first, second = parse(body), parse(body)
        assert [e.event["event_id"] for e in first.events] == [
            e.event["event_id"] for e in second.events]


# --- activities ----------------------------------------------------------------------------

def test_phonecall_completed_by_update() -> None:
    body = context("Update", "phonecall", inputs={"Target": entity(
        "phonecall", LEARN_RECORD, statecode=option(1), statuscode=option(2),
        actualdurationminutes=12)},
        PostEntityImages=image(ownerid=ref("systemuser", OWNER)))
    owner, event = only_event(body)
    assert owner == OWNER
    assert (event["type"], event["action"]) == ("call", "completed")
    assert event["event_id"] == f"dynamics365:phonecall:{LEARN_RECORD}:completed"
    assert event["duration_s"] == 720
    assert event["attributes"] == {"message": "Update", "statecode": 1, "statuscode": 2}


def test_task_completed_by_setstate_has_the_same_id_as_by_update() -> None:
    set_state = context("SetState", "task", inputs={
        "EntityMoniker": ref("task", LEARN_RECORD), "State": option(1), "Status": option(5)})
    update = context("Update", "task", OperationId=OTHER_USER, inputs={
        "Target": entity("task", LEARN_RECORD, statecode=option(1))})
    _, by_set_state = only_event(set_state)
    _, by_update = only_event(update)
    assert (by_set_state["type"], by_set_state["action"]) == ("task", "completed")
    assert by_set_state["event_id"] == by_update["event_id"]


def test_cancelled_activity_is_an_update() -> None:
    body = context("Update", "appointment", inputs={
        "Target": entity("appointment", LEARN_RECORD, statecode=option(2))})
    assert only_event(body)[1]["type"] == "record_updated"


def test_delete_takes_the_owner_from_the_pre_image() -> None:
    body = context("Delete", "phonecall", inputs={"Target": ref("phonecall", LEARN_RECORD)},
                   PreEntityImages=image(ownerid=ref("systemuser", OWNER)))
    owner, event = only_event(body)
    assert owner == OWNER
    assert (event["type"], event["action"]) == ("call", "deleted")


def test_delete_of_other_records_uses_the_created_type() -> None:
    body = context("Delete", "lead", inputs={"Target": ref("lead", LEARN_RECORD)})
    owner, event = only_event(body)
    assert owner == LEARN_USER
    assert (event["type"], event["action"]) == ("lead_created", "deleted")


# --- reassignment --------------------------------------------------------------------------

def test_assign_names_the_new_owner_and_the_previous_one() -> None:
    body = context("Assign", "opportunity", record_id=OPPORTUNITY, inputs={
        "Target": ref("opportunity", OPPORTUNITY), "Assignee": ref("systemuser", OWNER)},
        PreEntityImages=image(ownerid=ref("systemuser", OTHER_USER)))
    owner, event = only_event(body)
    assert owner == OWNER
    assert (event["type"], event["action"]) == ("opportunity_created", "reassigned")
    assert event["attributes"]["previous_owner"] == OTHER_USER


def test_owner_change_in_update_is_a_reassignment() -> None:
    body = context("Update", "email", inputs={
        "Target": entity("email", LEARN_RECORD, ownerid=ref("systemuser", OWNER))},
        PreEntityImages=image(ownerid=ref("systemuser", OTHER_USER)))
    owner, event = only_event(body)
    assert owner == OWNER
    assert (event["type"], event["action"]) == ("email", "reassigned")
    assert event["attributes"]["previous_owner"] == OTHER_USER


def test_unchanged_owner_in_update_is_a_record_update() -> None:
    body = context("Update", "email", inputs={
        "Target": entity("email", LEARN_RECORD, ownerid=ref("systemuser", OWNER))},
        PreEntityImages=image(ownerid=ref("systemuser", OWNER)))
    assert only_event(body)[1]["type"] == "record_updated"


def test_team_owner_falls_back_to_the_initiating_user_and_guids_are_lower_case() -> None:
    body = context("Create", "lead", InitiatingUserId=OWNER.upper(), inputs={
        "Target": entity("lead", LEARN_RECORD, ownerid=ref("team", OTHER_USER))})
    assert only_event(body)[0] == OWNER


# --- milestones ----------------------------------------------------------------------------

def win(operation: str = LEARN_OPERATION) -> dict[str, Any]:
    close = entity("opportunityclose", None, opportunityid=ref("opportunity", OPPORTUNITY),
                   actualrevenue=money(25000.5),
                   transactioncurrencyid=ref("transactioncurrency", OTHER_USER))
    return context("Win", "opportunity", record_id="00000000-0000-0000-0000-000000000000",
                   OperationId=operation,
                   inputs={"OpportunityClose": close, "Status": option(3)})


def test_win_is_opportunity_won_with_the_amount() -> None:
    owner, event = only_event(win())
    assert owner == LEARN_USER
    assert event["type"] == "opportunity_won" and event["action"] == "created"
    assert event["event_id"] == f"dynamics365:opportunity:{OPPORTUNITY}:won"
    assert event["record_id"] == OPPORTUNITY and event["amount"] == 25000.5
    assert "currency" not in event  # Dataverse sends a transactioncurrency id, not ISO 4217
    assert event["attributes"]["transactioncurrencyid"] == OTHER_USER


def test_the_same_win_counts_once_however_it_arrives() -> None:
    by_update = context("Update", "opportunity", record_id=OPPORTUNITY, OperationId=OWNER,
                        inputs={"Target": entity("opportunity", OPPORTUNITY,
                                                 statecode=option(1))},
                        PostEntityImages=image(actualvalue=money(24000),
                                               ownerid=ref("systemuser", OWNER)))
    owner, event = only_event(by_update)
    assert owner == OWNER and event["amount"] == 24000
    ids = {only_event(body)[1]["event_id"] for body in (win(), win(OTHER_USER), by_update)}
    assert ids == {f"dynamics365:opportunity:{OPPORTUNITY}:won"}


@pytest.mark.parametrize("body", [
    context("Lose", "opportunity", inputs={"OpportunityClose": entity(
        "opportunityclose", None, opportunityid=ref("opportunity", OPPORTUNITY)),
        "Status": option(4)}),
    context("Update", "opportunity", record_id=OPPORTUNITY, inputs={
        "Target": entity("opportunity", OPPORTUNITY, statecode=option(2))}),
])
def test_lost_opportunity(body: dict[str, Any]) -> None:
    event = only_event(body)[1]
    assert event["type"] == "opportunity_lost" and "amount" not in event
    assert event["event_id"] == f"dynamics365:opportunity:{OPPORTUNITY}:lost"


@pytest.mark.parametrize("body", [
    context("Close", "incident", inputs={"IncidentResolution": entity(
        "incidentresolution", None, incidentid=ref("incident", INCIDENT)),
        "Status": option(5)}),
    context("Create", "incidentresolution", inputs={"Target": entity(
        "incidentresolution", LEARN_RECORD, incidentid=ref("incident", INCIDENT))}),
    context("SetStateDynamicEntity", "incident", record_id=INCIDENT, inputs={
        "EntityMoniker": ref("incident", INCIDENT), "State": option(1), "Status": option(5)}),
])
def test_resolved_case(body: dict[str, Any]) -> None:
    event = only_event(body)[1]
    assert (event["type"], event["record_type"], event["record_id"]) == (
        "case_resolved", "incident", INCIDENT)
    assert event["event_id"] == f"dynamics365:incident:{INCIDENT}:resolved"


# --- ignored, unmapped, not Dataverse ---------------------------------------------------------

@pytest.mark.parametrize("body", [
    context("Create", "new_customactivity"),
    context("Retrieve", "contact"),
    context("Associate", "account"),
    context("Create", "opportunityclose"),
    context("Create", "account", Stage=20),
])
def test_uncounted_operations_are_ignored(body: dict[str, Any]) -> None:
    assert parse(body) == Parsed(ignored=1)


def test_body_over_256kb_without_inputs_still_maps() -> None:
    body = context("Create", "phonecall")
    for trimmed in ("InputParameters", "PreEntityImages", "PostEntityImages", "ParentContext"):
        del body[trimmed]
    owner, event = only_event(body)
    assert owner == LEARN_USER and event["type"] == "call"


@pytest.mark.parametrize(("value", "expected"), [
    ("/Date(1506409448000)/", "2017-09-26T07:04:08.000Z"),
    ("/Date(1724647396000+0300)/", "2024-08-26T04:43:16.000Z"),
    ("2025-09-25T02:04:18.1234567Z", "2025-09-25T02:04:18.123Z"),
    ("2025-09-25T04:04:18+02:00", "2025-09-25T02:04:18.000Z"),
    ("2025-09-25T02:04:18", "2025-09-25T02:04:18.000Z"),
])
def test_timestamp_forms(value: str, expected: str) -> None:
    body = json.loads(fixture("contact_update_learn.json")) | {"OperationCreatedOn": value}
    assert only_event(body)[1]["occurred_at"] == expected


@pytest.mark.parametrize(("changes", "reason"), [
    ({"PrimaryEntityId": None}, "schema:record_id"),
    ({"PrimaryEntityId": "not-a-guid"}, "schema:record_id"),
    ({"OperationCreatedOn": "/Date(abc)/"}, "schema:occurred_at"),
    ({"OperationCreatedOn": "/Date(-2208988800000)/"}, "schema:occurred_at"),  # 1900
    ({"OperationId": None, "RequestId": None}, "schema:event_id"),
    ({"InputParameters": "Target"}, "unmappable"),
])
def test_broken_contexts_are_unmapped(changes: dict[str, Any], reason: str) -> None:
    body = json.dumps(json.loads(fixture("contact_update_learn.json")) | changes).encode()
    parsed = parse(body)
    assert parsed.events == [] and parsed.ignored == 0
    [unmapped] = parsed.unmapped
    assert unmapped.reason == reason and unmapped.original == body and unmapped.message


def test_win_without_the_opportunity_is_unmapped() -> None:
    body = context("Win", "opportunity", record_id="", inputs={"Status": option(3)})
    [unmapped] = parse(body).unmapped
    assert unmapped.reason == "schema:record_id"


@pytest.mark.parametrize("body", [
    b"", b"not json", b"[]", b'"Update"', b'{"MessageName": "Update"}',
    b'{"MessageName": 1, "PrimaryEntityName": "contact"}',
])
def test_not_a_remote_execution_context_is_a_bad_body(body: bytes) -> None:
    with pytest.raises(EdgeError) as error:
        parse(body)
    assert error.value.status == 400


# --- authentication ------------------------------------------------------------------------

def test_configured_only_with_a_key() -> None:
    assert adapter().configured()
    assert not adapter(None).configured()
    adapter(None).authenticate(delivery(b"{}", query={}), 0)  # the edge decides


@pytest.mark.parametrize(("query", "headers"), [
    ({"code": KEY}, {}),                             # WebhookKey
    ({}, {"X-CRM-Pulse-Key": KEY}),                  # HttpHeader
    ({}, {"x-crm-pulse-key": KEY}),
    ({"code": "stale"}, {"X-CRM-Pulse-Key": KEY}),   # either credential may carry the key
])
def test_the_webhook_key_authenticates(query: dict[str, str], headers: dict[str, str]) -> None:
    adapter().authenticate(delivery(fixture("contact_update_learn.json"), query, headers), 0)


@pytest.mark.parametrize(("query", "headers"), [
    ({}, {}),
    ({"code": ""}, {}),
    ({"code": KEY[:-1] + "2"}, {}),
    ({}, {"X-CRM-Pulse-Key": "wrong"}),
    ({"Code": KEY}, {}),                              # the WebhookKey parameter is "code"
    ({}, {"Authorization": f"Bearer {KEY}"}),
])
def test_missing_or_wrong_keys_are_refused(query: dict[str, str],
                                           headers: dict[str, str]) -> None:
    with pytest.raises(EdgeError) as error:
        adapter().authenticate(delivery(fixture("contact_update_learn.json"), query, headers), 0)
    assert (error.value.status, error.value.reason) == (401, "bad_credentials")
    assert KEY not in error.value.message


# --- robustness ----------------------------------------------------------------------------

def _parse_safely(body: bytes) -> None:
    try:
        parsed = parse(body)
    except EdgeError as error:
        assert error.status == 400
        return
    for event in parsed.events:
        validate_event(dict(event.event, user_id="u1"))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_only_raise_edge_errors(body: bytes) -> None:
    _parse_safely(body)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False) | st.text(max_size=30)
    | st.sampled_from(["/Date(1506409448000)/", "/Date(-99999999999999)/", LEARN_RECORD,
                       "2025-09-25T02:04:18Z", "Update", "Win", "opportunity", "phonecall"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["key", "value", "Id", "LogicalName", "Value", "Attributes"]),
        inner, max_size=4),
    max_leaves=12,
)
SEEDS = [
    json.loads(fixture("contact_update_learn.json")),
    json.loads(fixture("account_create_prevalidation.json")) | {"Stage": 40},
    win(),
    context("Update", "phonecall", inputs={"Target": entity(
        "phonecall", LEARN_RECORD, statecode=option(1), actualdurationminutes=5)}),
]


def _mutate(node: Any, data: st.DataObject) -> Any:
    """Replace one value somewhere below ``node`` (a random walk down the tree)."""
    children = list(node) if isinstance(node, dict) else list(range(len(node))) \
        if isinstance(node, list) else []
    if not children or data.draw(st.integers(0, 4)) == 0:
        return data.draw(JSON_VALUES)
    child = children[data.draw(st.integers(0, len(children) - 1))]
    node[child] = _mutate(node[child], data)
    return node


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(SEEDS))), st.integers(1, 4), st.data())
def test_mutated_contexts_only_raise_edge_errors(seed: int, mutations: int,
                                                 data: st.DataObject) -> None:
    body = copy.deepcopy(SEEDS[seed])
    for _ in range(mutations):
        body = _mutate(body, data)
    _parse_safely(json.dumps(body).encode())
