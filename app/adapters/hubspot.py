"""HubSpot: the Webhooks API (v3) of a HubSpot app, mapped to canonical activity events.

What HubSpot sends: a ``POST`` whose body is a JSON array (under 100 elements) of events such
as ``{"eventId", "subscriptionId", "portalId", "appId", "occurredAt" (epoch ms),
"subscriptionType", "attemptNumber", "objectId", "changeSource", "sourceId", "propertyName",
"propertyValue", "changeFlag"}``. Classic subscriptions name the object in the type
(``deal.propertyChange``; HubSpot's own example spells the field ``eventType``); generic ones
use ``object.*`` plus ``objectTypeId`` (``0-48`` calls, ``0-47`` meetings, ...). HubSpot
retries a failed batch up to 10 times over 24 hours with the same ``eventId`` and a higher
``attemptNumber``, and may send an event twice, so event ids never include the attempt.

Events name no record owner; ``sourceId`` ``userId:<n>`` is the HubSpot *user* who made the
change, and that user id is what the roster column ``hubspot_user_id`` must hold (an owner
id, as in ``hubspot_owner_id`` property values, is a different number).

Authentication with the app's client secret: ``X-HubSpot-Signature-v3`` is
base64(HMAC-SHA256(secret, method + URI + body + X-HubSpot-Request-Timestamp)), the URI with
12 percent-escapes decoded, the timestamp (ms) at most 5 minutes old. The older
``X-HubSpot-Signature`` (hex SHA-256 of secret + body for ``v1``, of secret + method + URI +
body for ``v2``, no timestamp) is only accepted with ``hubspot_legacy_signatures``.

Sources:
https://developers.hubspot.com/docs/api/webhooks (payload fields, example, retries)
https://developers.hubspot.com/docs/api/webhooks/validating-requests (v1, v2, v3)
https://developers.hubspot.com/docs/guides/apps/public-apps/create-generic-webhook-subscriptions
https://developers.hubspot.com/docs/guides/crm/using-object-apis (object type ids)
https://developers.hubspot.com/docs/guides/api/crm/owners (owner id vs user id)
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

from app.adapters.base import (
    Adapter,
    Delivery,
    Parsed,
    Unmapped,
    VendorEvent,
    bad_body,
    hmac_sha256,
    iso_from_millis,
    same_secret,
)
from app.edge import EdgeError
from schemas.activity import element_bytes

V3_HEADER = "X-HubSpot-Signature-v3"
TIMESTAMP_HEADER = "X-HubSpot-Request-Timestamp"
LEGACY_HEADER = "X-HubSpot-Signature"
VERSION_HEADER = "X-HubSpot-Signature-Version"
MAX_AGE_MS = 5 * 60 * 1000
_FIRST_MS, _LAST_MS = 946_684_800_000, 4_133_980_799_999  # 2000-01-01 .. 2100-12-31 UTC

# The escapes HubSpot decodes in the URI before signing (v3); nothing else is decoded.
_URI_ESCAPE = re.compile(r"%(3A|2F|3F|40|21|24|27|28|29|2A|2C|3B)", re.IGNORECASE)
_ID = re.compile(r"[0-9]{1,30}")
_USER = re.compile(r"userId:([0-9]{1,30})")
_OWNER_PROPERTY = "hubspot_owner_id"


@dataclass(frozen=True)
class Kind:
    """A HubSpot object CRM Pulse counts."""

    record_type: str
    base_type: str
    """The type of its creation, deletion and reassignment (``call``, ``contact_created``)."""
    feature: str | None
    activity: bool = False


KINDS: dict[str, Kind] = {  # objectTypeId -> kind
    "0-1": Kind("contact", "contact_created", "contacts"),
    "0-2": Kind("company", "account_created", "accounts"),
    "0-3": Kind("deal", "opportunity_created", "opportunities"),
    "0-5": Kind("ticket", "case_created", "cases"),
    "0-14": Kind("quote", "quote_created", "quotes"),
    "0-123": Kind("order", "order_created", "orders"),
    "0-136": Kind("lead", "lead_created", "leads"),
    "0-48": Kind("call", "call", "phone_calls", activity=True),
    "0-47": Kind("meeting", "meeting", "appointments", activity=True),
    "0-49": Kind("email", "email", "email_tracking", activity=True),
    "0-27": Kind("task", "task", None, activity=True),
}
CLASSIC: dict[str, str] = {"contact": "0-1", "company": "0-2", "deal": "0-3", "ticket": "0-5"}
"""Classic subscription prefixes (``deal.creation``) -> objectTypeId. Other prefixes
(``product``, ``line_item``, ``conversation``) are ignored."""

MILESTONES: dict[tuple[str, str, str], tuple[str, str, str]] = {
    # (record_type, propertyName, propertyValue) -> (type, action, event id suffix)
    ("deal", "dealstage", "closedwon"): ("opportunity_won", "created", "won"),
    ("deal", "dealstage", "closedlost"): ("opportunity_lost", "created", "lost"),
    ("ticket", "hs_pipeline_stage", "4"): ("case_resolved", "created", "resolved"),
    ("call", "hs_call_status", "COMPLETED"): ("call", "completed", "completed"),
    ("meeting", "hs_meeting_outcome", "COMPLETED"): ("meeting", "completed", "completed"),
    ("task", "hs_task_status", "COMPLETED"): ("task", "completed", "completed"),
}
"""Property changes that mark a milestone; the event id is per record and milestone, so it
counts once however often the record is saved. Stage ids are those of the default pipelines
(custom pipeline stages have numeric ids and map to ``record_updated``)."""

CHANGES = ("creation", "deletion", "propertyChange")
"""Counted subscription suffixes; ``associationChange``, ``merge``, ``restore``,
``privacyDeletion`` and ``newMessage`` are ignored."""


class Unmappable(Exception):
    """An element that cannot become an event (the reason goes to the DLQ)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class HubSpotAdapter(Adapter):
    vendor = "hubspot"
    roster_field: ClassVar[str | None] = "hubspot_user_id"

    @staticmethod
    def owner_key(owner: str) -> str:
        """Roster cells may hold ``12345`` or ``userId:12345``."""
        return owner.strip().removeprefix("userId:")

    def configured(self) -> bool:
        return self.settings.hubspot_client_secret is not None

    def authenticate(self, delivery: Delivery, now: float) -> None:
        secret = self.settings.hubspot_client_secret
        if secret is None:
            return
        headers = delivery.headers
        if headers.get(V3_HEADER) is not None:
            _check_v3(delivery, secret.get_secret_value(), now)
        elif headers.get(LEGACY_HEADER) is None:
            raise EdgeError(401, "bad_signature",
                            f"missing {V3_HEADER}: only HubSpot app webhooks signed with the "
                            "app's client secret are accepted")
        elif self.settings.hubspot_legacy_signatures:
            _check_legacy(delivery, secret.get_secret_value())
        else:
            raise EdgeError(401, "bad_signature",
                            f"only the legacy {LEGACY_HEADER} (v1/v2) was sent, without "
                            f"{V3_HEADER}; set CRM_PULSE_HUBSPOT_LEGACY_SIGNATURES=true to "
                            "accept it (no replay protection)")

    def parse(self, delivery: Delivery) -> Parsed:
        try:
            elements = orjson.loads(delivery.body)
        except orjson.JSONDecodeError as exc:
            raise bad_body(f"not valid JSON ({exc}); HubSpot sends a JSON array") from None
        if not isinstance(elements, list):
            raise bad_body("expected a JSON array of HubSpot webhook events")
        parsed = Parsed()
        for element in elements:
            try:
                event = _map(element)
            except Unmappable as exc:
                parsed.unmapped.append(Unmapped(exc.reason, exc.message,
                                                element_bytes(element, delivery.body)))
                continue
            if event is None:
                parsed.ignored += 1
            else:
                parsed.events.append(event)
        return parsed


def _check_v3(delivery: Delivery, secret: str, now: float) -> None:
    timestamp = delivery.headers.get(TIMESTAMP_HEADER, "").strip()
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 15):
        raise EdgeError(401, "bad_signature",
                        f"missing or malformed {TIMESTAMP_HEADER} (epoch milliseconds)")
    age_ms = now * 1000 - int(timestamp)
    if abs(age_ms) > MAX_AGE_MS:
        raise EdgeError(401, "bad_signature",
                        f"{TIMESTAMP_HEADER} is more than 5 minutes "
                        f"{'old' if age_ms > 0 else 'ahead'}: a replay, or a wrong server clock")
    uri = _URI_ESCAPE.sub(lambda m: bytes.fromhex(m[1]).decode(), delivery.url)
    message = _utf8(f"{delivery.method}{uri}") + delivery.body + timestamp.encode()
    expected = base64.b64encode(hmac_sha256(secret, message)).decode()
    if not _same_signature(delivery.headers.get(V3_HEADER, ""), expected):
        raise EdgeError(401, "bad_signature",
                        f"{V3_HEADER} does not match: check CRM_PULSE_HUBSPOT_CLIENT_SECRET "
                        "(the app's client secret) and that the app's target URL is exactly "
                        f"the URL CRM Pulse receives ({delivery.url})")


def _check_legacy(delivery: Delivery, secret: str) -> None:
    version = delivery.headers.get(VERSION_HEADER, "").strip().lower()
    if version == "v1":
        source = secret.encode() + delivery.body
    elif version == "v2":
        source = _utf8(f"{secret}{delivery.method}{delivery.url}") + delivery.body
    else:
        raise EdgeError(401, "bad_signature",
                        f"{VERSION_HEADER} must be v1 or v2 for {LEGACY_HEADER}")
    expected = hashlib.sha256(source).hexdigest()
    if not _same_signature(delivery.headers.get(LEGACY_HEADER, "").lower(), expected):
        raise EdgeError(401, "bad_signature",
                        f"{LEGACY_HEADER} ({version}) does not match: check "
                        "CRM_PULSE_HUBSPOT_CLIENT_SECRET (the app's client secret)")


def _utf8(text: str) -> bytes:
    """The URL's bytes as received (aiohttp keeps undecodable bytes as surrogate escapes)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise EdgeError(401, "bad_signature", "the request URL is not valid UTF-8") from None


def _same_signature(given: str, expected: str) -> bool:
    given = given.strip()
    return given.isascii() and same_secret(given, expected)


def _map(element: Any) -> VendorEvent | None:
    """One webhook event -> a canonical event, or None when CRM Pulse does not count it."""
    if not isinstance(element, dict):
        raise Unmappable("unmappable", "a HubSpot webhook event must be a JSON object")
    subscription = element.get("subscriptionType", element.get("eventType"))
    if not isinstance(subscription, str):
        raise Unmappable("unmappable", "the event has no subscriptionType")
    prefix, _, change = subscription.partition(".")
    if change not in CHANGES:
        return None
    if prefix == "object":
        type_id = element.get("objectTypeId")
        if not isinstance(type_id, str):
            raise Unmappable("unmappable", f"a {subscription} event without objectTypeId")
    else:
        type_id = CLASSIC.get(prefix)
    kind = KINDS.get(type_id)
    if kind is None:
        return None
    portal = _id(element, "portalId")
    event_id = _id(element, "eventId")
    record_id = _id(element, "objectId")
    occurred = element.get("occurredAt")
    if not (isinstance(occurred, int) and not isinstance(occurred, bool)
            and _FIRST_MS <= occurred <= _LAST_MS):
        raise Unmappable("schema:occurred_at",
                         "occurredAt must be epoch milliseconds between 2000 and 2100")
    source = element.get("sourceId")
    user = _USER.fullmatch(source) if isinstance(source, str) else None
    # Creations and milestones are counted once per record; other changes once per eventId,
    # scoped to the record because HubSpot does not guarantee that eventIds are unique.
    record = f"hubspot:{portal}:{kind.record_type}:{record_id}"
    event: dict[str, Any] = {
        "occurred_at": iso_from_millis(occurred),
        "source": "hubspot",
        "record_type": kind.record_type,
        "record_id": record_id,
        "attributes": {"portal_id": portal, "subscription_type": subscription},
    }
    if isinstance(element.get("changeSource"), str):
        event["attributes"]["change_source"] = element["changeSource"][:64]
    if change == "creation":
        event.update(event_id=f"{record}:created", type=kind.base_type, action="created",
                     feature=kind.feature)
    elif change == "deletion":
        event.update(event_id=f"{record}:{event_id}", type=kind.base_type, action="deleted")
    else:
        fields, attributes = _property_change(element, kind, record, event_id)
        event.update(fields)
        event["attributes"].update(attributes)
    return VendorEvent(user[1] if user else None, event)


def _property_change(element: dict[str, Any], kind: Kind, record: str,
                     event_id: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Fields and extra attributes of a milestone, a reassignment or another update."""
    name, value = element.get("propertyName"), element.get("propertyValue")
    if not isinstance(name, str) or not name:
        raise Unmappable("unmappable", "a propertyChange event without propertyName")
    value = value if isinstance(value, str) else ""
    fields: dict[str, Any] = {"event_id": f"{record}:{event_id}", "action": "updated",
                              "type": kind.base_type if kind.activity else "record_updated"}
    attributes = {"property": name[:100]}
    milestone = MILESTONES.get((kind.record_type, name, value))
    if milestone:
        type_, action, suffix = milestone
        fields.update(event_id=f"{record}:{suffix}", type=type_, action=action)
        attributes["value"] = value
    elif name == _OWNER_PROPERTY:
        fields.update(type=kind.base_type, action="reassigned")
        if _ID.fullmatch(value):
            attributes["new_owner_id"] = value
    return fields, attributes


def _id(element: dict[str, Any], name: str) -> str:
    """A HubSpot numeric id as text (JSON numbers, or digit strings)."""
    value = element.get(name)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        value = str(value)
    if not (isinstance(value, str) and _ID.fullmatch(value)):
        raise Unmappable("unmappable", f"{name} must be a HubSpot id (digits)")
    return value
