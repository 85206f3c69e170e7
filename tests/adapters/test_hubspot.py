"""HubSpot webhook adapter: documented payloads, signatures v1/v2/v3, idempotency, robustness.

``webhooks_api_example.json`` and ``v1_signature_example.json`` are HubSpot's documented
examples, verbatim. ``constructed_events.json`` is built from the documented fields, because
HubSpot publishes no example deliveries for deals, tickets or activities
(fixtures/hubspot/SOURCES.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from app.adapters.base import Counts, Delivery, Parsed
from app.adapters.hubspot import HubSpotAdapter
from app.edge import EdgeError
from app.settings import Settings
from schemas.activity import validate_event

FIXTURES = Path(__file__).parent / "fixtures" / "hubspot"
DOC_SECRET = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy"  # HubSpot's placeholder client secret
DOC_URI = "https://www.example.com/webhook_uri"
SECRET = "5f0c8a1e-7b2d-4c3e-9f60-1a2b3c4d5e6f"
URL = "https://pulse.example.com/webhooks/hubspot"
NOW = 1_773_996_000.0  # 2026-03-20T08:40:00Z
USER = "9586504"  # the Owners API example's userId; its owner id is 41629779


def adapter(secret: str | None = SECRET, legacy: bool = False) -> HubSpotAdapter:
    return HubSpotAdapter(Settings(_env_file=None, hubspot_client_secret=secret,
                                   hubspot_legacy_signatures=legacy))


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def delivery(body: bytes | list[Any], headers: dict[str, str] | None = None,
             method: str = "POST", url: str = URL) -> Delivery:
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    return Delivery(method, url, CIMultiDict({"Content-Type": "application/json",
                                              **(headers or {})}), {}, body)


def parse(body: bytes | list[Any]) -> Parsed:
    return adapter().parse(delivery(body))


def v3_headers(body: bytes, secret: str = SECRET, timestamp: int = int(NOW * 1000),
               method: str = "POST", uri: str = URL) -> dict[str, str]:
    """Signed per HubSpot's v3 algorithm: base64 HMAC-SHA256 of method+uri+body+timestamp."""
    message = f"{method}{uri}".encode() + body + str(timestamp).encode()
    signature = base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest())
    return {"X-HubSpot-Signature-v3": signature.decode(),
            "X-HubSpot-Request-Timestamp": str(timestamp)}


def by_id(parsed: Parsed) -> dict[str, Any]:
    return {e.event["event_id"]: e for e in parsed.events}


def assert_valid(parsed: Parsed) -> None:
    for vendor_event in parsed.events:
        validate_event(dict(vendor_event.event, user_id="u1"))


# --- mapping -------------------------------------------------------------------------------


def test_documented_webhooks_api_example() -> None:
    parsed = parse(fixture("webhooks_api_example.json"))
    assert (len(parsed.events), len(parsed.unmapped), parsed.ignored) == (2, 0, 0)
    assert_valid(parsed)
    update, created = parsed.events
    assert update.owner is None and created.owner is None  # no sourceId: edge -> unknown_user
    assert update.event == {
        "event_id": "hubspot:33:contact:1246965:3816279340",
        "occurred_at": "2016-05-02T19:11:47.945Z",
        "type": "record_updated",
        "action": "updated",
        "source": "hubspot",
        "record_type": "contact",
        "record_id": "1246965",
        "attributes": {"portal_id": "33", "subscription_type": "contact.propertyChange",
                       "change_source": "ACADEMY", "property": "lifecyclestage"},
    }
    assert "subscriber" not in json.dumps(update.event)  # property values are not copied
    assert created.event["event_id"] == "hubspot:33:contact:1246978:created"
    assert (created.event["type"], created.event["action"], created.event["feature"]) == (
        "contact_created", "created", "contacts")


def test_documented_v1_example_body() -> None:
    (event,) = parse(fixture("v1_signature_example.json")).events
    assert event.event["event_id"] == "hubspot:62515:contact:123:created"
    assert event.event["occurred_at"] == "2019-07-26T04:00:00.000Z"
    assert event.event["attributes"]["change_source"] == "CRM"


EXPECTED = [  # event_id suffix after "hubspot:62515:", type, action, feature
    ("deal:5001:created", "opportunity_created", "created", "opportunities"),
    ("deal:5001:won", "opportunity_won", "created", None),
    ("deal:5002:lost", "opportunity_lost", "created", None),
    ("deal:5001:1004", "opportunity_created", "reassigned", None),
    ("deal:5001:1005", "record_updated", "updated", None),
    ("company:6001:created", "account_created", "created", "accounts"),
    ("ticket:7001:created", "case_created", "created", "cases"),
    ("ticket:7001:resolved", "case_resolved", "created", None),
    ("call:8001:created", "call", "created", "phone_calls"),
    ("meeting:8002:created", "meeting", "created", "appointments"),
    ("email:8003:created", "email", "created", "email_tracking"),
    ("task:8004:created", "task", "created", None),
    ("task:8004:completed", "task", "completed", None),
    ("contact:9001:1014", "contact_created", "deleted", None),
    ("lead:8005:created", "lead_created", "created", "leads"),
]


def test_constructed_events_map_per_table() -> None:
    parsed = parse(fixture("constructed_events.json"))
    assert parsed.unmapped == []
    assert parsed.ignored == 7  # association, merge, restore, privacy, conversation, product, note
    assert_valid(parsed)
    got = [(e.event["event_id"].removeprefix("hubspot:62515:"), e.event["type"],
            e.event["action"], e.event.get("feature")) for e in parsed.events]
    assert got == EXPECTED
    assert {e.owner for e in parsed.events} == {USER}
    for vendor_event in parsed.events:
        assert "amount" not in vendor_event.event  # HubSpot events carry no deal amount


def test_milestones_and_reassignment_details() -> None:
    events = by_id(parse(fixture("constructed_events.json")))
    won = events["hubspot:62515:deal:5001:won"].event
    assert won["record_type"] == "deal" and won["record_id"] == "5001"
    assert won["occurred_at"] == "2026-03-20T08:31:00.000Z"
    assert won["attributes"]["property"] == "dealstage"
    assert won["attributes"]["value"] == "closedwon"
    reassigned = events["hubspot:62515:deal:5001:1004"]
    # The new owner is an *owner* id (not a roster user id): kept as an attribute; the
    # event's owner is the user who reassigned the deal.
    assert reassigned.owner == USER
    assert reassigned.event["attributes"]["new_owner_id"] == "41629779"
    call = events["hubspot:62515:call:8001:created"].event
    assert (call["record_type"], call["attributes"]["subscription_type"]) == (
        "call", "object.creation")


@pytest.mark.parametrize(("kind", "prop", "value", "expected"), [
    ("0-48", "hs_call_status", "COMPLETED", ("call", "completed", "call:1:completed")),
    ("0-47", "hs_meeting_outcome", "COMPLETED", ("meeting", "completed", "meeting:1:completed")),
    ("0-47", "hs_meeting_outcome", "NO_SHOW", ("meeting", "updated", "meeting:1:77")),
    ("0-3", "dealstage", "appointmentscheduled", ("record_updated", "updated", "deal:1:77")),
    ("0-3", "hubspot_owner_id", "", ("opportunity_created", "reassigned", "deal:1:77")),
    ("0-5", "hs_pipeline_stage", "2", ("record_updated", "updated", "ticket:1:77")),
    ("0-49", "hubspot_owner_id", "41629779", ("email", "reassigned", "email:1:77")),
])
def test_generic_property_changes(kind: str, prop: str, value: str,
                                  expected: tuple[str, str, str]) -> None:
    element = {"eventId": 77, "portalId": 9, "objectId": 1, "occurredAt": 1773995400000,
               "subscriptionType": "object.propertyChange", "objectTypeId": kind,
               "propertyName": prop, "propertyValue": value, "sourceId": "userId:5"}
    (event,) = parse([element]).events
    assert (event.event["type"], event.event["action"], event.event["event_id"]) == (
        expected[0], expected[1], f"hubspot:9:{expected[2]}")
    validate_event(dict(event.event, user_id="u1"))


def test_classic_and_generic_creation_share_the_event_id() -> None:
    """Subscribed twice (contact.creation and object.creation for contacts): counted once."""
    common = {"portalId": 9, "objectId": 42, "occurredAt": 1773995400000}
    parsed = parse([dict(common, eventId=1, subscriptionType="contact.creation"),
                    dict(common, eventId=2, subscriptionType="object.creation",
                         objectTypeId="0-1")])
    assert {e.event["event_id"] for e in parsed.events} == {"hubspot:9:contact:42:created"}


def test_redelivery_maps_to_the_same_event_ids() -> None:
    body = fixture("constructed_events.json")
    retried = [dict(element, attemptNumber=4) for element in json.loads(body)]
    first, again = parse(body), parse(retried)
    assert [e.event for e in first.events] == [e.event for e in again.events]


def test_source_ids_that_are_not_users_name_nobody() -> None:
    element = {"eventId": 1, "portalId": 9, "objectId": 1, "occurredAt": 1773995400000,
               "subscriptionType": "company.propertyChange", "propertyName": "twitterhandle",
               "propertyValue": "x", "changeSource": "HUBSPOT_INTERNAL",
               "sourceId": "CompanyInsightsPropertyMappings"}
    (event,) = parse([element]).events
    assert event.owner is None


def test_owner_key_accepts_the_source_id_form() -> None:
    assert HubSpotAdapter.owner_key(" userId:9586504 ") == HubSpotAdapter.owner_key("9586504")


# --- broken elements and bodies ------------------------------------------------------------

VALID = {"eventId": 1, "portalId": 9, "objectId": 1, "occurredAt": 1773995400000,
         "subscriptionType": "deal.creation", "sourceId": "userId:5"}


@pytest.mark.parametrize(("element", "reason"), [
    ("deal.creation", "unmappable"),
    ([VALID], "unmappable"),
    ({k: v for k, v in VALID.items() if k != "subscriptionType"}, "unmappable"),
    (dict(VALID, subscriptionType=7), "unmappable"),
    ({k: v for k, v in VALID.items() if k != "objectId"}, "unmappable"),
    (dict(VALID, portalId=None), "unmappable"),
    (dict(VALID, eventId=True), "unmappable"),
    (dict(VALID, objectId=-3), "unmappable"),
    (dict(VALID, objectId="12a"), "unmappable"),
    (dict(VALID, occurredAt="1773995400000"), "schema:occurred_at"),
    (dict(VALID, occurredAt=1773995400.5), "schema:occurred_at"),
    (dict(VALID, occurredAt=10**16), "schema:occurred_at"),
    (dict(VALID, occurredAt=123), "schema:occurred_at"),
    (dict(VALID, subscriptionType="object.creation"), "unmappable"),
    (dict(VALID, subscriptionType="deal.propertyChange"), "unmappable"),
    (dict(VALID, subscriptionType="deal.propertyChange", propertyName=""), "unmappable"),
])
def test_broken_elements_are_unmapped_alone(element: Any, reason: str) -> None:
    parsed = parse([VALID, element])
    assert len(parsed.events) == 1
    (unmapped,) = parsed.unmapped
    assert unmapped.reason == reason
    assert unmapped.message
    assert unmapped.original == orjson.dumps(element)


def test_digit_string_ids_are_accepted() -> None:
    (event,) = parse([dict(VALID, portalId="9", objectId="1", eventId="1")]).events
    assert event.event["event_id"] == "hubspot:9:deal:1:created"


@pytest.mark.parametrize("element", [
    dict(VALID, subscriptionType="deal.associationChange"),
    dict(VALID, subscriptionType="object.associationChange"),  # no objectTypeId needed
    dict(VALID, subscriptionType="deal.merge"),
    dict(VALID, subscriptionType="conversation.newMessage"),
    dict(VALID, subscriptionType="line_item.creation"),
    dict(VALID, subscriptionType="object.creation", objectTypeId="2-143967026"),
    dict(VALID, subscriptionType="object.creation", objectTypeId="0-421"),
    dict(VALID, subscriptionType="something-new"),
    {"subscriptionType": "product.deletion"},  # ignored before ids are needed
])
def test_unsupported_events_are_ignored(element: dict[str, Any]) -> None:
    parsed = parse([element])
    assert (parsed.events, parsed.unmapped, parsed.ignored) == ([], [], 1)


@pytest.mark.parametrize("body", [b"", b"not json", b"\xff\xfe", b'{"eventId": 1}', b"42",
                                  b'"[]"', b"[1,", b"null"])
def test_bodies_that_are_not_hubspot_are_refused(body: bytes) -> None:
    with pytest.raises(EdgeError) as caught:
        parse(body)
    assert caught.value.status == 400


def test_empty_array() -> None:
    assert parse(b"[]") == Parsed()


def test_default_acknowledgement() -> None:
    answer = adapter().acknowledge(delivery(b"[]"), Counts(15, 0, 7))
    assert answer.status == 202
    assert json.loads(answer.body) == {"accepted": 15, "dead_lettered": 0, "ignored": 7}


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                 max_size=4),
    max_leaves=12,
)
FIELDS = st.sampled_from(["eventId", "portalId", "objectId", "occurredAt", "subscriptionType",
                          "eventType", "objectTypeId", "propertyName", "propertyValue",
                          "sourceId", "changeSource"])
DOCUMENTED = json.loads(fixture("constructed_events.json")) + json.loads(
    fixture("webhooks_api_example.json"))


def only_edge_errors(body: bytes) -> None:
    try:
        parsed = parse(body)
    except EdgeError:
        return
    assert_valid(parsed)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_edge_errors(body: bytes) -> None:
    only_edge_errors(body)


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_arbitrary_json_only_raises_edge_errors(value: Any) -> None:
    only_edge_errors(json.dumps(value).encode())


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(DOCUMENTED), FIELDS, JSON | st.sampled_from(["0-48", "closedwon", "4"]))
def test_mutated_documented_events_never_raise(element: dict[str, Any], field: str,
                                              value: Any) -> None:
    only_edge_errors(json.dumps([dict(element, **{field: value})]).encode())


# --- authentication ------------------------------------------------------------------------


def test_configured_only_with_a_client_secret() -> None:
    assert adapter().configured()
    assert not adapter(None).configured()
    adapter(None).authenticate(delivery(b"[]"), NOW)  # unconfigured: the edge decides


def test_v3_hubspot_client_vector() -> None:
    """The vector of HubSpot's Python client (tests/spec/utils/test_signature.py)."""
    body = b"{'example_field':'example_value'}"
    headers = {"X-HubSpot-Signature-v3": "HPW73RUtKmcYoEDADG0s6MmGFWUzWJKAW07r8RDgcQw=",
               "X-HubSpot-Request-Timestamp": "15000000"}
    adapter(DOC_SECRET).authenticate(delivery(body, headers, url=DOC_URI), 15000.0 + 60)


def test_v3_valid_signature_passes() -> None:
    body = fixture("constructed_events.json")
    adapter().authenticate(delivery(body, v3_headers(body)), NOW)
    adapter().authenticate(delivery(body, v3_headers(body)), NOW + 299)


def bad_signature(deliv: Delivery, *, legacy: bool = False, now: float = NOW) -> str:
    with pytest.raises(EdgeError) as caught:
        adapter(legacy=legacy).authenticate(deliv, now)
    assert (caught.value.status, caught.value.reason) == (401, "bad_signature")
    assert SECRET not in caught.value.message
    return caught.value.message


def test_v3_refusals() -> None:
    body = fixture("constructed_events.json")
    assert "CLIENT_SECRET" in bad_signature(delivery(body, v3_headers(body, secret="other")))
    assert "CLIENT_SECRET" in bad_signature(delivery(body + b" ", v3_headers(body)))
    assert "5 minutes old" in bad_signature(delivery(body, v3_headers(body)), now=NOW + 301)
    assert "ahead" in bad_signature(delivery(body, v3_headers(body)), now=NOW - 301)
    headers = v3_headers(body)
    del headers["X-HubSpot-Request-Timestamp"]
    assert "Timestamp" in bad_signature(delivery(body, headers))
    assert "missing" in bad_signature(delivery(body))
    bad_signature(delivery(body, v3_headers(body), method="PUT"))
    bad_signature(delivery(body, v3_headers(body), url=URL + "?x=1"))
    for timestamp in (str(int(NOW * 1000) - 1), "x", "١٢٣"):  # signed for another timestamp
        headers = dict(v3_headers(body), **{"X-HubSpot-Request-Timestamp": timestamp})
        bad_signature(delivery(body, headers))
    bad_signature(delivery(body, dict(v3_headers(body), **{"X-HubSpot-Signature-v3": "é€"})))


def test_v3_decodes_hubspots_list_of_escapes_in_the_uri() -> None:
    url = URL + "?tenant=a%3Ab%2fc%40d%20e%2A"
    signed_as = URL + "?tenant=a:b/c@d%20e*"  # %20 is not on HubSpot's list
    body = fixture("webhooks_api_example.json")
    adapter().authenticate(delivery(body, v3_headers(body, uri=signed_as), url=url), NOW)
    bad_signature(delivery(body, v3_headers(body, uri=url), url=url))


def test_v1_documented_example() -> None:
    body = fixture("v1_signature_example.json")
    signature = "232db2615f3d666fe21a8ec971ac7b5402d33b9a925784df3ca654d05f4817de"
    headers = {"X-HubSpot-Signature": signature, "X-HubSpot-Signature-Version": "v1"}
    adapter(DOC_SECRET, legacy=True).authenticate(delivery(body, headers), NOW)


@pytest.mark.parametrize(("method", "body", "signature"), [
    ("GET", b"", "eee2dddcc73c94d699f5e395f4b9d454a069a6855fbfa152e91e88823087200e"),
    ("POST", b'{"example_field":"example_value"}',
     "9569219f8ba981ffa6f6f16aa0f48637d35d728c7e4d93d0d52efaa512af7900"),
])
def test_v2_documented_examples(method: str, body: bytes, signature: str) -> None:
    headers = {"X-HubSpot-Signature": signature.upper(), "X-HubSpot-Signature-Version": "v2"}
    deliv = delivery(body, headers, method=method, url=DOC_URI)
    adapter(DOC_SECRET, legacy=True).authenticate(deliv, NOW)


def legacy_headers(body: bytes, secret: str = SECRET, version: str = "v1") -> dict[str, str]:
    digest = hashlib.sha256(secret.encode() + body).hexdigest()
    return {"X-HubSpot-Signature": digest, "X-HubSpot-Signature-Version": version}


def test_legacy_refusals() -> None:
    body = fixture("webhooks_api_example.json")
    message = bad_signature(delivery(body, legacy_headers(body)))  # legacy not enabled
    assert "CRM_PULSE_HUBSPOT_LEGACY_SIGNATURES" in message
    assert "v1" in bad_signature(delivery(body, legacy_headers(body, "wrong")), legacy=True)
    bad_signature(delivery(body + b"\n", legacy_headers(body)), legacy=True)
    bad_signature(delivery(body, legacy_headers(body, version="v2")), legacy=True)
    bad_signature(delivery(body, legacy_headers(body, version="v3")), legacy=True)
    headers = legacy_headers(body)
    del headers["X-HubSpot-Signature-Version"]
    bad_signature(delivery(body, headers), legacy=True)


def test_a_present_v3_signature_must_verify_even_with_a_valid_legacy_one() -> None:
    body = fixture("webhooks_api_example.json")
    headers = dict(legacy_headers(body), **v3_headers(body, secret="other"))
    bad_signature(delivery(body, headers), legacy=True)


def test_ids_with_a_trailing_newline_are_refused() -> None:
    parsed = parse([dict(VALID, objectId="12\n"), dict(VALID, sourceId="userId:5\n")])
    assert [u.reason for u in parsed.unmapped] == ["unmappable"]
    assert parsed.events[0].owner is None
