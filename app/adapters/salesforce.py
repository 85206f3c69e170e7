"""Salesforce: Outbound Messages (SOAP) and relayed Change Data Capture events (JSON).

Both arrive on ``POST /webhooks/salesforce``; the Content-Type tells them apart.

* **Outbound Messages** (``text/xml``): the SOAP ``notifications`` call a workflow rule or flow
  sends, up to 100 ``Notification`` elements (``Id`` + ``sObject`` with the selected fields).
  Salesforce does not sign them, so the endpoint URL configured in Salesforce carries
  ``?token=<CRM_PULSE_SALESFORCE_SECRET>``; when ``CRM_PULSE_SALESFORCE_ORGANIZATION_ID`` is set,
  the message's ``OrganizationId`` must match it too (15-character prefixes compared, as
  Salesforce's security considerations recommend). The body is read with ``defusedxml`` and
  DTDs are refused (no entity expansion, no external entities). The answer is the SOAP
  ``notificationsResponse`` with ``<Ack>true</Ack>``; anything else makes Salesforce retry.
  A message does not say whether the record was created or edited: ``CreatedDate ==
  LastModifiedDate`` means created.
* **Change events** (``application/json``): Change Data Capture events as a subscriber (Pub/Sub
  API client, CometD client, event relay) received them, one object or an array; the Pub/Sub
  payload, ``{"schema", "payload", "event"}`` and CometD's ``{"data": {...}, "channel"}`` are
  all accepted. Signed by the relay with the CRM Pulse HMAC header (``X-CRM-Pulse-Signature``,
  key ``CRM_PULSE_SALESFORCE_SECRET``). Gap and overflow events, undeletes, platform events
  and objects CRM Pulse does not count are ignored.

Ids: Salesforce ids are normalised to their 18-character form (the documented checksum of the
15-character case-sensitive id), for owners, roster values (:meth:`owner_key`) and records.
Creations, deletions and milestones (won, lost, resolved, completed) get record-based event ids
(``salesforce:opportunity:<id>:won``), so retries, re-saves and the two formats count once;
other updates are keyed by the Notification Id (stable across Salesforce's retries) or by
``transactionKey`` + ``sequenceNumber`` of the change event.

Sources:
https://developer.salesforce.com/docs/atlas.en-us.api.meta/api/sforce_api_om_outboundmessaging_wsdl.htm
https://developer.salesforce.com/docs/atlas.en-us.api.meta/api/sforce_api_om_outboundmessaging_security.htm
https://developer.salesforce.com/docs/atlas.en-us.change_data_capture.meta/change_data_capture/cdc_event_fields_header.htm
https://developer.salesforce.com/docs/atlas.en-us.change_data_capture.meta/change_data_capture/cdc_event_fields_body.htm
https://developer.salesforce.com/docs/atlas.en-us.change_data_capture.meta/change_data_capture/cdc_other_events.htm
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar
from xml.etree.ElementTree import Element, ParseError, SubElement, tostring

import orjson
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from app.adapters.base import (
    Acknowledgement,
    Adapter,
    Counts,
    Delivery,
    Parsed,
    Unmapped,
    VendorEvent,
    bad_body,
    iso_from_millis,
    same_secret,
)
from app.edge import EdgeError, verify_generic_signature
from schemas.activity import Rejection, element_bytes

SOURCE = "salesforce"
XML_TYPES = ("text/xml", "application/soap+xml", "application/xml")
_SOAP_NAMESPACES = ("http://schemas.xmlsoap.org/soap/envelope/",  # SOAP 1.1 (Salesforce), 1.2
                    "http://www.w3.org/2003/05/soap-envelope")
_ENVELOPES = frozenset(f"{{{ns}}}Envelope" for ns in _SOAP_NAMESPACES)
_BODIES = frozenset(f"{{{ns}}}Body" for ns in _SOAP_NAMESPACES)
_OUT = "{http://soap.sforce.com/2005/09/outbound}"
_XSI = "{http://www.w3.org/2001/XMLSchema-instance}"
ACK = (b'<?xml version="1.0" encoding="UTF-8"?>'
       b'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
       b'<soapenv:Body><notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound">'
       b"<Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>")

_SFID = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")
_CHECKSUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_TRANSACTION_KEY = re.compile(r"[A-Za-z0-9-]{1,64}")
_BITMAP = re.compile(r"(?:[0-9]+-)?0x[0-9A-Fa-f]+")
_CURRENCY = re.compile(r"[A-Z]{3}")
_MIN_MILLIS, _MAX_MILLIS = 946_684_800_000, 4_133_980_800_000  # 2000-01-01 .. 2101-01-01
_YEAR_S = 31_536_000  # the canonical duration_s maximum


def id18(value: str) -> str:
    """The 18-character form of a 15-character Salesforce id (other values unchanged).

    The suffix encodes, per 5-character chunk, which characters are upper case, so the
    case-sensitive 15-character ids stay distinct when compared case-insensitively.
    """
    if len(value) != 15 or not _SFID.fullmatch(value):
        return value
    return value + "".join(
        _CHECKSUM[sum(1 << bit for bit, char in enumerate(value[start:start + 5])
                      if "A" <= char <= "Z")]
        for start in (0, 5, 10))


@dataclass(frozen=True)
class _Kind:
    """What a Salesforce object's records are in CRM Pulse."""

    type: str
    feature: str | None = None


_KINDS: dict[str, _Kind] = {
    "Task": _Kind("task"),
    "Event": _Kind("meeting", "appointments"),
    "Account": _Kind("account_created", "accounts"),
    "Contact": _Kind("contact_created", "contacts"),
    "Lead": _Kind("lead_created", "leads"),
    "Opportunity": _Kind("opportunity_created", "opportunities"),
    "Quote": _Kind("quote_created", "quotes"),
    "Order": _Kind("order_created", "orders"),
    "Case": _Kind("case_created", "cases"),
    "Campaign": _Kind("campaign_created", "campaigns"),
}
_CALL, _EMAIL = _Kind("call", "phone_calls"), _Kind("email", "email_tracking")
_OPERATIONS = {"CREATE": "create", "UPDATE": "update", "DELETE": "delete"}
_ATTRIBUTES = (("stage", "StageName"), ("status", "Status"), ("subtype", "TaskSubtype"))

Milestone = tuple[str | None, str, str]
"""(type, or None for the record's own type; action; event id suffix)."""


def _true(value: Any) -> bool:
    return value is True or value == "true"


def _opportunity_milestone(fields: Mapping[str, Any]) -> Milestone | None:
    stage = fields.get("StageName")
    if _true(fields.get("IsWon")) or stage == "Closed Won":
        return "opportunity_won", "created", "won"
    if _true(fields.get("IsClosed")) or stage == "Closed Lost":
        return "opportunity_lost", "created", "lost"
    return None


def _case_milestone(fields: Mapping[str, Any]) -> Milestone | None:
    if _true(fields.get("IsClosed")) or fields.get("Status") == "Closed":
        return "case_resolved", "created", "resolved"
    return None


def _task_milestone(fields: Mapping[str, Any]) -> Milestone | None:
    if _true(fields.get("IsClosed")) or fields.get("Status") == "Completed":
        return None, "completed", "completed"
    return None


_MILESTONES: dict[str, Callable[[Mapping[str, Any]], Milestone | None]] = {
    "Opportunity": _opportunity_milestone,
    "Case": _case_milestone,
    "Task": _task_milestone,
}




@dataclass(frozen=True)
class _Change:
    """One record's change, whichever format told it."""

    entity: str
    record_id: str
    operation: str
    """create, update or delete."""
    fields: Mapping[str, Any]
    changed: frozenset[str]
    """The fields this change set (all of them when the format cannot tell)."""
    owner: str | None
    occurred_at: str
    change_id: str
    """Unique per change and stable across redeliveries (for updates and reassignments)."""
    owner_changed: bool = False


def _kind(entity: str, fields: Mapping[str, Any]) -> _Kind:
    if entity != "Task":
        return _KINDS[entity]
    subtype, task_type = fields.get("TaskSubtype"), fields.get("Type")
    if "Call" in (subtype, task_type):
        return _CALL
    if subtype in ("Email", "ListEmail") or task_type == "Email":
        return _EMAIL
    return _KINDS["Task"]


def _number(value: Any, field: str, schema_field: str, low: float, high: float) -> float | None:
    """A numeric field (XML text or JSON number) within [low, high]; ``None`` when absent."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            value = None
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not (math.isfinite(value) and low <= value <= high)):
        raise Rejection(f"schema:{schema_field}",
                        f"{field} must be a number in [{low:g}, {high:g}]")
    return value


def _extras(change: _Change, milestone_type: str | None) -> dict[str, Any]:
    """Amount and currency of a won opportunity; duration of a call or meeting."""
    fields = change.fields
    if milestone_type == "opportunity_won":
        currency = fields.get("CurrencyIsoCode")
        if currency is not None and not (isinstance(currency, str)
                                         and _CURRENCY.fullmatch(currency)):
            raise Rejection("schema:currency", "CurrencyIsoCode must be an ISO 4217 code like EUR")
        return {"amount": _number(fields.get("Amount"), "Amount", "amount", -1e15, 1e15),
                "currency": currency}
    seconds = _number(fields.get("CallDurationInSeconds"), "CallDurationInSeconds",
                      "duration_s", 0, _YEAR_S)
    minutes = _number(fields.get("DurationInMinutes"), "DurationInMinutes", "duration_s",
                      0, _YEAR_S / 60)
    return {"duration_s": seconds if minutes is None else minutes * 60}


def _events(change: _Change) -> list[VendorEvent]:
    """The canonical events of one record's change."""
    kind = _kind(change.entity, change.fields)
    record_type = change.entity.lower()
    key = f"{SOURCE}:{record_type}:{change.record_id}"
    common: dict[str, Any] = {"occurred_at": change.occurred_at, "source": SOURCE,
                              "record_type": record_type, "record_id": change.record_id}
    attributes = {name: value[:100] for name, field in _ATTRIBUTES
                  if isinstance(value := change.fields.get(field), str)}
    if attributes:
        common["attributes"] = attributes

    def event(type_: str, action: str, suffix: str, **extra: Any) -> VendorEvent:
        fields = {"event_id": f"{key}:{suffix}", "type": type_, "action": action, **common,
                  **{name: value for name, value in extra.items() if value is not None}}
        return VendorEvent(change.owner, fields)

    if change.operation == "delete":
        return [event(kind.type, "deleted", "deleted")]
    events = []
    if change.operation == "create":
        events.append(event(kind.type, "created", "created", feature=kind.feature,
                            **_extras(change, None)))
    changed = {name: value for name, value in change.fields.items() if name in change.changed}
    milestone = _MILESTONES.get(change.entity, lambda _: None)(changed)
    if milestone is not None:
        type_, action, suffix = milestone
        events.append(event(type_ or kind.type, action, suffix, **_extras(change, type_)))
    if change.owner_changed:
        events.append(event(kind.type, "reassigned", f"{change.change_id}:reassigned"))
    if not events:
        events.append(event("record_updated", "updated", change.change_id))
    return events


def _salesforce_id(value: Any, field: str, reason: str = "unmappable") -> str | None:
    """``value`` as an 18-character id; ``None`` when absent."""
    if value is None:
        return None
    if not (isinstance(value, str) and _SFID.fullmatch(value)):
        raise Rejection(reason, f"{field} is not a Salesforce id (15 or 18 letters and digits)")
    return id18(value)


# -- Outbound Messages ----------------------------------------------------------------------


def _notifications(body: bytes) -> Element:
    """The ``notifications`` element of an Outbound Message, read without DTDs or entities."""
    try:
        root = fromstring(body, forbid_dtd=True)
    except DefusedXmlException:
        raise bad_body("XML with a DTD or entity declarations is refused; Salesforce Outbound "
                       "Messages have none") from None
    except (ParseError, ValueError, LookupError):
        raise bad_body("the body is not well-formed XML; send Salesforce Outbound Messages "
                       "as they are") from None
    soap_body = next((child for child in root if child.tag in _BODIES), None)
    notifications = (soap_body.find(f"{_OUT}notifications")
                     if root.tag in _ENVELOPES and soap_body is not None else None)
    if notifications is None:
        raise bad_body("not a Salesforce Outbound Message: expected a SOAP Envelope whose Body "
                       "holds notifications (http://soap.sforce.com/2005/09/outbound)")
    return notifications


def _text(element: Element) -> str | None:
    """An element's text; ``None`` for xsi:nil, empty or structured elements."""
    if element.get(f"{_XSI}nil") == "true" or len(element):
        return None
    return (element.text or "").strip() or None


def _timestamp(value: str | None, field: str) -> str | None:
    """An xsd:dateTime as RFC 3339 in UTC with milliseconds; ``None`` when absent."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None or not 2000 <= moment.year <= 2100:
        raise Rejection("schema:occurred_at", f"{field} must be a date-time with an offset, "
                                         "years 2000-2100")
    moment = moment.astimezone(UTC)
    if not 2000 <= moment.year <= 2100:
        raise Rejection("schema:occurred_at", f"{field} must be in the years 2000-2100")
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _outbound_events(notification: Element) -> list[VendorEvent] | None:
    """One ``Notification``'s events; ``None`` when its object is not counted."""
    sobject = notification.find(f"{_OUT}sObject")
    if sobject is None:
        raise Rejection("unmappable", "the Notification has no sObject")
    entity = sobject.get(f"{_XSI}type", "").rpartition(":")[2]
    if not entity:
        raise Rejection("unmappable", "the sObject has no xsi:type naming its object")
    if entity not in _KINDS:
        return None
    fields = {child.tag.rpartition("}")[2]: _text(child) for child in sobject}
    id_element = notification.find(f"{_OUT}Id")
    notification_id = _salesforce_id(None if id_element is None else _text(id_element),
                                     "the Notification Id", "schema:event_id")
    record_id = _salesforce_id(fields.get("Id"), "the record Id", "schema:record_id")
    if notification_id is None or record_id is None:
        raise Rejection("schema:record_id", "the Notification needs its Id and the record's "
                        "Id; add Id to the Outbound Message's fields")
    created = _timestamp(fields.get("CreatedDate"), "CreatedDate")
    modified = _timestamp(fields.get("LastModifiedDate"), "LastModifiedDate")
    if created is not None and modified in (None, created):
        operation, occurred_at = "create", created
    elif modified is not None:
        operation, occurred_at = "update", modified
    else:
        raise Rejection("schema:occurred_at", "add CreatedDate and LastModifiedDate to the "
                        "Outbound Message's fields")
    modifier = _salesforce_id(fields.get("LastModifiedById"), "LastModifiedById")
    owner = _salesforce_id(fields.get("OwnerId"), "OwnerId") or modifier
    return _events(_Change(
        entity=entity, record_id=record_id, operation=operation, fields=fields,
        changed=frozenset(fields), owner=owner, occurred_at=occurred_at,
        change_id=f"om:{notification_id}"))


def _shallow_xml(notification: Element) -> bytes:
    """The Notification with its Id, sObject and fields (deeper nesting dropped), for the DLQ."""
    copy = Element(notification.tag, notification.attrib)
    for child in notification:
        child_copy = SubElement(copy, child.tag, child.attrib)
        child_copy.text = child.text
        for field in child:
            SubElement(child_copy, field.tag, field.attrib).text = field.text
    return tostring(copy)


# -- Change Data Capture ---------------------------------------------------------------------


def _changed(header: Mapping[str, Any], payload: Mapping[str, Any]) -> frozenset[str]:
    """Names of the fields an update set: ``changedFields`` when decoded to names, else the
    non-null fields (Pub/Sub sends unchanged fields as null, CometD leaves them out)."""
    names = header.get("changedFields")
    if isinstance(names, list) and names and all(
            isinstance(name, str) and not _BITMAP.fullmatch(name) for name in names):
        return frozenset(names)
    return frozenset(name for name, value in payload.items()
                     if value is not None and name != "ChangeEventHeader")


def _change_events(element: Any) -> list[VendorEvent] | None:
    """One change event's events (one record each); ``None`` when it is not counted."""
    if not isinstance(element, dict):
        raise Rejection("unmappable", "each element must be a change event object")
    payload = element
    for wrapper in ("data", "payload"):  # CometD {"data": {"payload": ...}}, {"payload": ...}
        if isinstance(payload.get(wrapper), dict):
            payload = payload[wrapper]
    header = payload.get("ChangeEventHeader")
    if header is None and "CreatedById" in payload and "CreatedDate" in payload:
        return None  # a platform event: CRM Pulse does not count those
    if not isinstance(header, dict):
        raise Rejection("unmappable", "not a change event: no ChangeEventHeader; relay Change Data "
                                 "Capture events as Salesforce delivers them")
    entity, change_type = header.get("entityName"), header.get("changeType")
    if not (isinstance(entity, str) and isinstance(change_type, str)):
        raise Rejection("unmappable", "the ChangeEventHeader needs entityName and changeType")
    if change_type.startswith("GAP_") or change_type == "UNDELETE" or entity not in _KINDS:
        return None
    operation = _OPERATIONS.get(change_type)
    if operation is None:
        raise Rejection("unmappable", f"unknown changeType {change_type[:40]!r}")
    timestamp = header.get("commitTimestamp")
    if isinstance(timestamp, bool) or not (isinstance(timestamp, int | float)
                                           and _MIN_MILLIS <= timestamp < _MAX_MILLIS):
        raise Rejection("schema:occurred_at", "commitTimestamp must be epoch milliseconds "
                                         "(years 2000-2100)")
    transaction, sequence = header.get("transactionKey"), header.get("sequenceNumber")
    if not (isinstance(transaction, str) and _TRANSACTION_KEY.fullmatch(transaction)
            and isinstance(sequence, int) and not isinstance(sequence, bool)
            and 0 <= sequence < 10**9):
        raise Rejection("schema:event_id", "the ChangeEventHeader needs transactionKey and "
                                      "sequenceNumber")
    record_ids = header.get("recordIds")
    if not (isinstance(record_ids, list) and record_ids
            and all(isinstance(record_id, str) for record_id in record_ids)):
        raise Rejection("schema:record_id", "the ChangeEventHeader needs recordIds")
    if any(record_id.endswith("*") for record_id in record_ids):
        return None  # a field type conversion on every record of the object
    if not all(_SFID.fullmatch(record_id) for record_id in record_ids):
        raise Rejection("schema:record_id",
                        "recordIds must be Salesforce ids (15 or 18 letters and digits)")
    commit_user = _salesforce_id(header.get("commitUser"), "commitUser")
    owner = _salesforce_id(payload.get("OwnerId"), "OwnerId") or commit_user
    changed = frozenset(payload) if operation == "create" else _changed(header, payload)
    events = []
    for record_id in record_ids:
        events += _events(_Change(
            entity=entity, operation=operation, fields=payload, changed=changed, owner=owner,
            record_id=id18(record_id), occurred_at=iso_from_millis(timestamp),
            change_id=f"cdc:{transaction}:{sequence}",
            owner_changed=operation == "update" and "OwnerId" in changed))
    return events


# -- The adapter -------------------------------------------------------------------------------

T = TypeVar("T")


def _add(parsed: Parsed, element: T, mapper: Callable[[T], list[VendorEvent] | None],
         original: Callable[[T], bytes]) -> None:
    try:
        events = mapper(element)
    except Rejection as exc:
        parsed.unmapped.append(Unmapped(exc.reason, exc.message, original(element)))
        return
    if events is None:
        parsed.ignored += 1
    else:
        parsed.events.extend(events)


class SalesforceAdapter(Adapter):
    vendor = SOURCE
    roster_field: ClassVar[str | None] = "salesforce_id"
    content_types = ("application/json", "text/json", *XML_TYPES)

    @staticmethod
    def owner_key(owner: str) -> str:
        return id18(owner)

    def configured(self) -> bool:
        return self.settings.salesforce_secret is not None

    @staticmethod
    def _outbound(delivery: Delivery) -> bool:
        content_type = delivery.headers.get("Content-Type", "").split(";", 1)[0]
        return content_type.strip().lower() in XML_TYPES

    def authenticate(self, delivery: Delivery, now: float) -> None:
        secret = self.settings.salesforce_secret
        if secret is None:
            return
        if not self._outbound(delivery):
            verify_generic_signature(delivery.headers, delivery.body, secret, now)
            return
        token = delivery.query.get("token", "")
        if not token:
            raise EdgeError(401, "bad_credentials", "the Outbound Message's endpoint URL has no "
                            "?token=; set it to https://<crm-pulse-host>/webhooks/salesforce"
                            "?token=<CRM_PULSE_SALESFORCE_SECRET>")
        if not same_secret(token, secret.get_secret_value()):
            raise EdgeError(401, "bad_credentials", "the ?token= of the Outbound Message's "
                            "endpoint URL is not CRM_PULSE_SALESFORCE_SECRET")
        expected = self.settings.salesforce_organization_id
        if expected:
            element = _notifications(delivery.body).find(f"{_OUT}OrganizationId")
            organization = (None if element is None else _text(element)) or ""
            if not same_secret(organization[:15], expected[:15]):
                raise EdgeError(401, "bad_credentials", "the Outbound Message comes from "
                                f"organization {organization[:18]!r}, not from "
                                "CRM_PULSE_SALESFORCE_ORGANIZATION_ID")

    def parse(self, delivery: Delivery) -> Parsed:
        parsed = Parsed()
        if self._outbound(delivery):
            for notification in _notifications(delivery.body).iterfind(f"{_OUT}Notification"):
                _add(parsed, notification, _outbound_events, _shallow_xml)
            return parsed
        try:
            body = orjson.loads(delivery.body)
        except orjson.JSONDecodeError:
            raise bad_body("the body is not JSON; relay change events as a JSON object or "
                           "array") from None
        if isinstance(body, dict):
            _add(parsed, body, _change_events, lambda _: delivery.body)
        elif isinstance(body, list) and body:
            for element in body:
                _add(parsed, element, _change_events, _json_original(delivery.body))
        else:
            raise bad_body("expected a change event object or a non-empty array of them")
        return parsed

    def acknowledge(self, delivery: Delivery, counts: Counts) -> Acknowledgement:
        if self._outbound(delivery):  # Salesforce retries anything but this SOAP Ack
            return Acknowledgement(200, ACK, "text/xml")
        return super().acknowledge(delivery, counts)


def _json_original(body: bytes) -> Callable[[Any], bytes]:
    """One array element as JSON (the whole body when it nests too deep to re-encode)."""
    return lambda element: element_bytes(element, body)
