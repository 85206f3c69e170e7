"""Pipedrive webhooks (v2 and v1) -> canonical activity events.

Pipedrive POSTs one JSON object per change of one record; Webhooks v2 is the default for new
webhooks since 17 March 2025, v1 webhooks still run:

- **v2**: ``{"meta": {action: create|change|delete, entity, entity_id, id (event UUID),
  company_id, user_id, timestamp (ISO 8601; unix seconds for ``user``), attempt, ...},
  "data": {...} | null, "previous": {changed fields} | null}``.
- **v1**: ``{"v": 1, "event": "updated.deal", "meta": {action: added|updated|merged|deleted,
  object, id (record id), company_id, user_id, timestamp, timestamp_micro, ...},
  "current": {...} | null, "previous": {full previous state} | null, "retry": 0..3}``.

Pipedrive does not sign webhooks: it sends the HTTP Basic credentials set on the webhook
(``http_auth_user`` / ``http_auth_password``) with every request; both are compared in
constant time with ``CRM_PULSE_PIPEDRIVE_USERNAME`` / ``CRM_PULSE_PIPEDRIVE_PASSWORD``.

Sources:
https://pipedrive.readme.io/docs/guide-for-webhooks-v2,
https://pipedrive.readme.io/docs/webhooks-v2-migration-guide (payload examples),
https://pipedrive.readme.io/docs/guide-for-webhooks (v1 format, Basic auth),
https://developers.pipedrive.com/docs/api/v1/Webhooks (``http_auth_user``, ``version``).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson

from app.adapters.base import (
    Adapter,
    Delivery,
    Parsed,
    Unmapped,
    VendorEvent,
    bad_body,
    iso_from_millis,
    same_secret,
)
from app.edge import EdgeError
from schemas.activity import Rejection

SOURCE = "pipedrive"

# Record kinds other than activities: entity -> (base type, first-use feature).
RECORDS: dict[str, tuple[str, str]] = {
    "deal": ("opportunity_created", "opportunities"),
    "person": ("contact_created", "contacts"),
    "organization": ("account_created", "accounts"),
    "lead": ("lead_created", "leads"),
}
# Activity type keys -> (type, feature); any other key (deadline, lunch, custom) is a task.
ACTIVITY_TYPES: dict[str, tuple[str, str | None]] = {
    "call": ("call", "phone_calls"),
    "meeting": ("meeting", "appointments"),
    "email": ("email", "email_tracking"),
    "task": ("task", None),
}
OTHER_ACTIVITY: tuple[str, str | None] = ("task", None)
# Both versions' actions -> the v2 name.
ACTIONS = {
    "create": "create", "change": "change", "delete": "delete",
    "added": "create", "updated": "change", "merged": "change", "deleted": "delete",
}
OWNER_FIELDS = ("owner_id", "user_id")
"""Where a record names its owner: v2 ``owner_id``; v1 activities and deals ``user_id``
(deals: ``{"id": ..., "name": ...}``), v1 persons and organizations ``owner_id``."""
DEAL_MILESTONES = {"won": "opportunity_won", "lost": "opportunity_lost"}

_EPOCH_MIN, _EPOCH_MAX = 946_684_800, 4_133_980_800  # 2000-01-01 .. 2101-01-01 (UTC)
_DURATION = re.compile(r"^([0-9]{1,3}):([0-5][0-9])(?::([0-5][0-9]))?$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_MAX_AUTH_HEADER = 1024
_CREDENTIALS_HINT = ("set the same HTTP Auth username and password on the Pipedrive webhook as "
                     "CRM_PULSE_PIPEDRIVE_USERNAME / CRM_PULSE_PIPEDRIVE_PASSWORD")




@dataclass(frozen=True)
class _Change:
    """One webhook of either version, in the terms the mapping needs."""

    company: str
    delivery: str
    """Stable across retries: v2 ``meta.id``; v1 object, id, action and timestamp."""
    action: str
    entity: str
    record_id: str
    occurred_at: str
    actor: str | None
    record: dict[str, Any]
    """The record as it is now (as it was last, for deletions)."""
    changed: dict[str, Any]
    """Previous values of the fields that changed (``change`` only)."""
    attributes: dict[str, Any]


class PipedriveAdapter(Adapter):
    vendor: ClassVar[str] = SOURCE
    roster_field: ClassVar[str | None] = "pipedrive_user_id"

    def configured(self) -> bool:
        return (self.settings.pipedrive_username is not None
                and self.settings.pipedrive_password is not None)

    def authenticate(self, delivery: Delivery, now: float) -> None:
        expected_user = self.settings.pipedrive_username
        expected_password = self.settings.pipedrive_password
        if expected_user is None or expected_password is None:
            return  # unconfigured: the edge decides
        header = delivery.headers.get("Authorization") or ""
        if not header:
            raise EdgeError(401, "bad_credentials",
                            f"no Authorization header: {_CREDENTIALS_HINT}")
        username, password = _basic_credentials(header)
        user_ok = same_secret(username, expected_user)
        password_ok = same_secret(password, expected_password.get_secret_value())
        if not (user_ok and password_ok):
            raise EdgeError(401, "bad_credentials",
                            f"HTTP Basic credentials do not match: {_CREDENTIALS_HINT}")

    def parse(self, delivery: Delivery) -> Parsed:
        body, meta = _decode(delivery.body)
        parsed = Parsed()
        try:
            v2, entity, action = _entity_action(body, meta)
            if entity != "activity" and entity not in RECORDS:
                parsed.ignored = 1
                return parsed
            if not isinstance(action, str) or action not in ACTIONS:
                shown = repr(action[:40]) if isinstance(action, str) else "(not a string)"
                raise Rejection("unmappable", f"unknown webhook action {shown}")
            change = _read_change(body, meta, v2, entity, ACTIONS[action])
            parsed.events.extend(_map(change))
        except Rejection as exc:
            parsed.unmapped.append(Unmapped(exc.reason, exc.message, delivery.body))
        return parsed


def _basic_credentials(header: str) -> tuple[str, str]:
    """``Basic base64(user:password)`` -> (user, password); 401 for anything else."""
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "basic" or not token or len(header) > _MAX_AUTH_HEADER:
        raise EdgeError(401, "bad_credentials",
                        f"Authorization is not HTTP Basic: {_CREDENTIALS_HINT}")
    try:
        decoded = base64.b64decode(token, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise EdgeError(401, "bad_credentials",
                        f"Authorization Basic value is not valid base64: {_CREDENTIALS_HINT}"
                        ) from None
    username, colon, password = decoded.partition(":")
    if not colon:
        raise EdgeError(401, "bad_credentials",
                        f"Authorization Basic value has no user:password: {_CREDENTIALS_HINT}")
    return username, password


def _decode(raw: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_body(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("meta"), dict):
        raise bad_body("not a Pipedrive webhook: expected a JSON object with a 'meta' object")
    return body, body["meta"]


def _is_v2(body: dict[str, Any], meta: dict[str, Any]) -> bool:
    version = meta.get("version")
    if isinstance(version, str) and version.startswith("2"):
        return True
    return "entity" in meta and "v" not in body and "v" not in meta


def _entity_action(body: dict[str, Any], meta: dict[str, Any]) -> tuple[bool, str, Any]:
    """Whether it is v2, the entity (lower case) and the action as the webhook names it."""
    v2 = _is_v2(body, meta)
    if v2:
        entity, action = meta.get("entity"), meta.get("action")
    elif body.get("v") == 1 or meta.get("v") == 1 or "object" in meta or "event" in body:
        entity, action = meta.get("object"), meta.get("action")
        event = body.get("event")
        if isinstance(event, str) and (entity is None or action is None):
            action, _, entity = event.partition(".")  # "updated.deal"
    else:
        raise bad_body("not a Pipedrive webhook: 'meta' has neither 'version' 2.0 nor 'v' 1")
    if not isinstance(entity, str) or not entity:
        raise Rejection("unmappable", "the webhook names no entity (meta.entity/meta.object)")
    return v2, entity.lower(), action


def _read_change(body: dict[str, Any], meta: dict[str, Any], v2: bool, entity: str,
                 action: str) -> _Change:
    current = body.get("data" if v2 else "current")
    previous = body.get("previous")
    if action == "delete":
        record = previous if isinstance(previous, dict) else {}
    elif isinstance(current, dict):
        record = current
    else:
        raise Rejection("unmappable", f"{action} webhook for a {entity} carries no record")
    if action != "change" or not isinstance(previous, dict):
        changed: dict[str, Any] = {}
    elif v2:
        changed = previous  # v2 'previous' holds only the fields that changed
    else:
        changed = {k: v for k, v in previous.items() if record.get(k) != v}
    record_id = _id(meta.get("entity_id" if v2 else "id")) or _id(record.get("id"))
    company = _id(meta.get("company_id"))
    if record_id is None or company is None:
        raise Rejection("unmappable", f"{entity} webhook without record id or company_id")
    if v2:
        delivery = _id(meta.get("id"))
        stamp = meta.get("timestamp")
    else:
        micro = meta.get("timestamp_micro")
        stamp = micro / 1_000_000 if _is_number(micro) else meta.get("timestamp")
        delivery = (f"{entity}:{record_id}:{action}:{micro if _is_number(micro) else stamp}"
                    if _is_number(stamp) else None)
    if delivery is None:
        raise Rejection("unmappable", f"{entity} webhook without a stable event id (meta.id "
                                        "in v2, meta.timestamp in v1)")
    return _Change(
        company=company, delivery=delivery, action=action, entity=entity,
        record_id=record_id, occurred_at=_occurred_at(stamp), actor=_id(meta.get("user_id")),
        record=record, changed=changed, attributes=_attributes(meta, v2),
    )


def _attributes(meta: dict[str, Any], v2: bool) -> dict[str, Any]:
    attributes: dict[str, Any] = {"webhook_version": 2 if v2 else 1}
    source = meta.get("change_source")
    if isinstance(source, str) and 0 < len(source) <= 32:
        attributes["change_source"] = source
    if meta.get("is_bulk_edit" if v2 else "is_bulk_update") is True:
        attributes["bulk_edit"] = True
    merged_to = _id(meta.get("merged_to_id"))
    if merged_to is not None:
        attributes["merged_to_id"] = merged_to
    return attributes


def _map(change: _Change) -> list[VendorEvent]:
    owner = _owner(change.record) or change.actor
    base, feature, details, attributes = _describe(change)
    key = f"{SOURCE}:{change.company}:{change.delivery}"

    def event(type_: str, action: str, event_id: str = key,
              more: dict[str, Any] | None = None, **fields: Any) -> VendorEvent:
        if len(event_id) > 200:
            raise Rejection("schema:event_id", "Pipedrive ids too long for an event_id")
        canonical = {
            "event_id": event_id, "occurred_at": change.occurred_at, "type": type_,
            "action": action, "source": SOURCE, "record_type": change.entity,
            "record_id": change.record_id, **fields, "attributes": {**attributes, **(more or {})},
        }
        return VendorEvent(owner, {k: v for k, v in canonical.items() if v is not None})

    if change.action == "delete":
        return [event(base, "deleted")]
    events = []
    if change.action == "create":
        events.append(event(base, "created", feature=feature, **details))
    milestone = _deal_milestone(change)
    if milestone is not None:
        name, type_ = milestone
        events.append(event(type_, "created", f"{SOURCE}:{change.company}:deal:"
                            f"{change.record_id}:{name}", **_money(change.record)))
    if change.action == "change":
        if change.entity == "activity" and _completed(change):
            events.append(event(base, "completed", f"{key}:completed", **details))
        previous_owner = _owner_change(change)
        if previous_owner is not None:
            events.append(event(base, "reassigned", f"{key}:reassigned", previous_owner))
        if not events:
            updated = base if change.entity == "activity" else "record_updated"
            events.append(event(updated, "updated", **details))
    return events


def _describe(change: _Change) -> tuple[str, str | None, dict[str, Any], dict[str, Any]]:
    """Base type, feature, type-specific fields and attributes of the changed record."""
    record = change.record
    attributes = dict(change.attributes)
    if change.entity != "activity":
        base, feature = RECORDS[change.entity]
        status = record.get("status")
        if isinstance(status, str) and 0 < len(status) <= 32:
            attributes["status"] = status
        return base, feature, _money(record) if change.action == "create" else {}, attributes
    kind = record.get("type")
    base, activity_feature = OTHER_ACTIVITY
    if isinstance(kind, str) and 0 < len(kind) <= 64:
        base, activity_feature = ACTIVITY_TYPES.get(kind, OTHER_ACTIVITY)
        attributes["activity_type"] = kind
    if record.get("done") is True:
        attributes["done"] = True
    return base, activity_feature, {"duration_s": _duration(record.get("duration"))}, attributes


def _deal_milestone(change: _Change) -> tuple[str, str] | None:
    """(``won``/``lost``, type) when a deal is created closed or its status changes to it."""
    status = change.record.get("status")
    if change.entity != "deal" or not isinstance(status, str) or status not in DEAL_MILESTONES:
        return None
    if change.action == "change" and "status" not in change.changed:
        return None
    return status, DEAL_MILESTONES[status]


def _completed(change: _Change) -> bool:
    return change.record.get("done") is True and change.changed.get("done", True) is not True


def _owner_change(change: _Change) -> dict[str, str] | None:
    """``{"previous_owner": id}`` (empty if it had none) when the owner field changed."""
    for field in OWNER_FIELDS:
        if field in change.record and field in change.changed:
            before, after = _id(change.changed[field]), _id(change.record[field])
            if before == after:
                return None
            return {} if before is None else {"previous_owner": before}
    return None


def _owner(record: dict[str, Any]) -> str | None:
    for field in OWNER_FIELDS:
        owner = _id(record.get(field))
        if owner is not None:
            return owner
    return None


def _id(value: Any) -> str | None:
    """A Pipedrive id (int, string, or v1's ``{"id": ...}`` user object) as a string."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value) if abs(value) < 10**30 else None
    if isinstance(value, str) and 0 < len(value) <= 100 and value.isprintable():
        return value
    return None


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _occurred_at(stamp: Any) -> str:
    """ISO 8601 with offset (v2) or unix seconds (v1, v2 ``user``) -> RFC 3339 UTC."""
    if _is_number(stamp):
        if _EPOCH_MIN <= stamp < _EPOCH_MAX:
            return iso_from_millis(stamp * 1000)
    elif isinstance(stamp, str) and len(stamp) <= 40:
        try:
            moment = datetime.fromisoformat(stamp)
            if moment.tzinfo is not None:
                moment = moment.astimezone(UTC)
                if 2000 <= moment.year <= 2100:
                    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        except (ValueError, OverflowError):
            pass
    raise Rejection("schema:occurred_at",
                      "meta.timestamp is not a date-time with offset or unix seconds (2000-2100)")


def _duration(value: Any) -> int | None:
    """Activity duration ``"HH:MM"`` (v1) or ``{"value": "HH:MM"}`` (v2) -> seconds."""
    if isinstance(value, dict):
        value = value.get("value")
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None:
        return None
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def _money(record: dict[str, Any]) -> dict[str, Any]:
    """``amount``/``currency`` of a deal (``value`` + ``currency``) or a lead (``value``
    object); wrong types are unmappable rather than silently dropped."""
    value, currency = record.get("value"), record.get("currency")
    if isinstance(value, dict):  # leads: {"amount": 300, "currency": "EUR"}
        value, currency = value.get("amount"), value.get("currency")
    if value is None:
        return {}
    if not _is_number(value) or abs(value) > 1e15:
        raise Rejection("schema:amount", "the record's value is not a number")
    if currency is None:
        return {"amount": value}
    if not isinstance(currency, str) or not _CURRENCY.match(currency):
        raise Rejection("schema:currency",
                          "the record's currency is not an ISO 4217 code like EUR")
    return {"amount": value, "currency": currency}
