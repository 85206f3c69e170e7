"""The canonical activity event: field rules, a fast validator and its JSON Schema.

One table (:data:`FIELDS`) drives both the validator and the JSON Schema file
(``schemas/crm.activities.schema.json``), so the two cannot drift apart. Decoding is
orjson into a dict plus hand-checked fields: unknown fields are kept as they are, and
each rejection names the first failing field (``schema:<field>``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

ACTIONS = ("created", "updated", "completed", "deleted", "reassigned")
MAX_NESTING = 32  # levels inside a field; orjson reads 1024 but writes only 254
_IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_RFC3339 = re.compile(
    r"^(20[0-9]{2}|2100)-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})$"
)


class Rejection(Exception):
    """An event that cannot be accepted; ``reason`` is machine-readable."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Field:
    """One canonical field: its JSON Schema and the Python check that mirrors it."""

    name: str
    schema: dict[str, Any]
    required: bool = False


def _text(max_length: int = 200, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_length, **extra}


FIELDS: tuple[Field, ...] = (
    Field("event_id", _text(200, description="Source-unique id; the dedup key."), True),
    Field(
        "occurred_at",
        {
            "type": "string",
            "format": "date-time",
            "pattern": _RFC3339.pattern,
            "description": "RFC 3339 with an offset (Z or +hh:mm), years 2000-2100.",
        },
        True,
    ),
    Field("user_id", _text(200, description="CRM Pulse user id; the partition key."), True),
    Field("type", _text(64, description="call, meeting, email, ... (aliases normalised)."), True),
    Field("team_id", _text(200)),
    Field("feature", _text(100, description="CRM function used (first-use flags).")),
    Field("source", _text(64, description="dynamics365, salesforce, hubspot, pipedrive, ...")),
    Field("amount", {"type": "number", "minimum": -1e15, "maximum": 1e15}),
    Field("currency", {"type": "string", "pattern": _CURRENCY.pattern}),
    Field("duration_s", {"type": "number", "minimum": 0, "maximum": 31_536_000}),
    Field("quality", {"type": "number", "minimum": 0, "maximum": 1}),
    Field("attributes", {"type": "object"}),
    Field("record_type", _text(100)),
    Field("record_id", _text(200)),
    Field("action", {"type": "string", "enum": list(ACTIONS), "default": "created"}),
    Field("previous_owner", _text(200, description="On reassigned: the user it came from.")),
    Field("correction", {
        "type": "object",
        "description": "Internal: a record-ledger correction (source 'ledger'); refused at "
                       "the webhook edge.",
        "required": ["count", "sums", "reason"],
        "properties": {"count": {"enum": [-1, 0, 1]}, "sums": {"type": "object"},
                       "reason": {"enum": ["deleted", "reassigned", "updated"]},
                       "of": {"type": "string"}, "by": {"type": "string"}},
    }),
)
_BY_NAME = {f.name: f for f in FIELDS}
REQUIRED = tuple(f.name for f in FIELDS if f.required)


def _nullable(field: Field) -> dict[str, Any]:
    """Optional fields may be null, which means absent."""
    if field.required:
        return field.schema
    return {"anyOf": [field.schema, {"type": "null"}]}


def json_schema() -> dict[str, Any]:
    """The JSON Schema of one canonical activity event (unknown fields allowed)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "crm-pulse/crm.activities.event",
        "title": "Canonical CRM activity event",
        "type": "object",
        "required": list(REQUIRED),
        "properties": {f.name: _nullable(f) for f in FIELDS},
        "additionalProperties": True,
    }


def parse_timestamp(value: Any, field: str = "occurred_at") -> float:
    """RFC 3339 with an offset -> POSIX seconds; raise :class:`Rejection` otherwise."""
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise Rejection(f"schema:{field}",
                        f"{field} must be RFC 3339 with an offset, e.g. 2026-11-23T09:30:00+01:00")
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise Rejection(f"schema:{field}", f"{field} is not a calendar date-time") from None


def _field_check(field: Field) -> tuple[Callable[[Any], bool], str]:
    """The check of one field, compiled once from its schema, and what it expects."""
    schema = field.schema
    kind = schema["type"]
    if kind == "string":
        low, high = schema.get("minLength", 0), schema.get("maxLength", 10_000)
        if "enum" in schema:
            allowed = frozenset(schema["enum"])
            return (lambda value: isinstance(value, str) and value in allowed,
                    "one of " + ", ".join(schema["enum"]))
        if field.name == "currency":
            match = _CURRENCY.match
            return (lambda value: isinstance(value, str) and match(value) is not None,
                    "a string")
        return lambda value: isinstance(value, str) and low <= len(value) <= high, "a string"
    if kind == "number":
        low, high = schema["minimum"], schema["maximum"]
        isfinite = math.isfinite
        return (lambda value: isinstance(value, (int, float)) and not isinstance(value, bool)
                and isfinite(value) and low <= value <= high,
                f"a number in [{low:g}, {high:g}]")
    if "required" in schema:
        return _object_check(schema)
    return lambda value: isinstance(value, dict), "an object"


def _object_check(schema: dict[str, Any]) -> tuple[Callable[[Any], bool], str]:
    """An object with required members (``correction``): the members' own rules too."""
    required, members = schema["required"], schema["properties"]

    def member_ok(rule: dict[str, Any], value: Any) -> bool:
        if "enum" in rule:
            return not isinstance(value, bool) and value in rule["enum"]
        return isinstance(value, dict if rule["type"] == "object" else str)

    def check(value: Any) -> bool:
        return (isinstance(value, dict) and all(name in value for name in required)
                and all(member_ok(rule, value[name]) for name, rule in members.items()
                        if name in value))

    rules = ", ".join(f"{name} ({'/'.join(map(str, rule['enum']))})" if "enum" in rule
                      else f"{name} ({rule['type']})" for name, rule in members.items())
    return check, f"an object with {', '.join(required)}: {rules}"


_CHECKS = {f.name: _field_check(f) for f in FIELDS}


def validate_event(event: Any) -> dict[str, Any]:
    """Check one decoded event against :data:`FIELDS`; return it with defaults filled in."""
    return checked_event(event)[0]


def checked_event(event: Any) -> tuple[dict[str, Any], float]:
    """:func:`validate_event`, and the event's ``occurred_at`` in POSIX seconds."""
    if not isinstance(event, dict):
        raise Rejection("schema:event", "an event must be a JSON object")
    for name in REQUIRED:
        if name not in event or event[name] is None:
            raise Rejection(f"schema:{name}", f"missing required field {name}")
    absent = []
    for name, value in event.items():
        field = _BY_NAME.get(name)
        if isinstance(value, (dict, list)) and _nested_deeper(value, MAX_NESTING):
            reason = f"schema:{name}" if field is not None else "schema:event"
            raise Rejection(reason, f"{name} nests deeper than {MAX_NESTING} levels")
        if field is None:
            continue
        if value is None:
            absent.append(name)
            continue
        check, expected = _CHECKS[name]
        if not check(value):
            raise Rejection(f"schema:{name}", f"{name} must be {expected}")
    for name in absent:
        del event[name]
    occurred = parse_timestamp(event["occurred_at"])
    event.setdefault("action", "created")
    event.setdefault("source", "generic")
    return event, occurred


def _nested_deeper(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return False


def element_bytes(element: Any, whole: bytes) -> bytes:
    """One element as JSON for the DLQ, or ``whole`` (its record or body) when it cannot be
    re-encoded (nested deeper than orjson writes)."""
    try:
        return orjson.dumps(element)
    except TypeError:
        return whole


def decode_events(raw: bytes) -> list[Any]:
    """Decode a record: one event object or a JSON array of them (elements unchecked)."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Rejection("invalid_json", f"not valid JSON: {exc}") from None
    if isinstance(payload, list):
        if not payload:
            raise Rejection("schema:event", "an empty array carries no event")
        return payload
    return [payload]


def normalise_type(raw_type: str, aliases: dict[str, str]) -> str:
    """Lower-case, map aliases, and insist on an identifier (``call``, ``case_resolved``)."""
    name = raw_type.strip().lower().replace("-", "_").replace(" ", "_")
    name = aliases.get(raw_type.strip().lower(), aliases.get(name, name))
    if not _IDENTIFIER.match(name):
        raise Rejection("schema:type", "type must be a lower-case identifier like 'call'")
    return name
