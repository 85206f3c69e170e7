"""The JSON Schema file of every topic's value, generated from the models.

``crm-pulse schemas`` rewrites them; a test fails when a committed file is stale.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from schemas.activity import json_schema

HERE = Path(__file__).parent
_DRAFT = "https://json-schema.org/draft/2020-12/schema"


def activities_schema() -> dict[str, Any]:
    """``crm.activities``: one canonical event, or an array of them (one partition)."""
    event = json_schema()
    return {
        "$schema": _DRAFT,
        "$id": "crm-pulse/crm.activities",
        "title": "crm.activities record value (key: user_id)",
        "$defs": {"event": {k: v for k, v in event.items() if k not in ("$schema", "$id")}},
        "oneOf": [
            {"$ref": "#/$defs/event"},
            {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/event"}},
        ],
    }


def dlq_schema() -> dict[str, Any]:
    """``crm.activities.dlq``: a rejected record or array element, with the reason."""
    text = {"type": "string"}
    return {
        "$schema": _DRAFT,
        "$id": "crm-pulse/crm.activities.dlq",
        "title": "crm.activities.dlq record value (key: source)",
        "type": "object",
        "required": ["dlq_id", "reason", "message", "source", "received_at", "topic",
                     "partition", "offset", "index", "original_b64"],
        "properties": {
            "dlq_id": {**text, "description": "topic:partition:offset[:index] in the stream, "
                       "webhook:<vendor>:<body hash>[:index] at the edge; the dedup key"},
            "reason": {
                **text,
                "pattern": r"^(invalid_json|too_large|unknown_user|late|internal_error"
                           r"|unmappable|schema:[a-z_]+)$",
                "description": "machine-readable: invalid_json, schema:<field>, unknown_user, "
                               "late, too_large, internal_error, unmappable (a vendor body "
                               "or element the webhook adapter cannot map)",
            },
            "message": {**text, "description": "for people: what is wrong"},
            "source": text,
            "received_at": {**text, "format": "date-time"},
            "topic": {**text, "description": "the record's topic, or webhook:<vendor>"},
            "partition": {"type": ["integer", "null"], "minimum": 0,
                          "description": "null for an edge (webhook) dead letter"},
            "offset": {"type": ["integer", "null"], "minimum": 0,
                       "description": "null for an edge (webhook) dead letter"},
            "index": {"type": ["integer", "null"], "minimum": 0,
                      "description": "position in an array record; null for the whole record"},
            "original_b64": {**text, "contentEncoding": "base64",
                             "description": "the original bytes (an array element re-encoded)"},
        },
        "additionalProperties": False,
    }


def achievements_schema() -> dict[str, Any]:
    """``crm.achievements``: one award; consumers deduplicate by ``achievement_id``."""
    text = {"type": "string"}
    return {
        "$schema": _DRAFT,
        "$id": "crm-pulse/crm.achievements",
        "title": "crm.achievements record value (key: user_id)",
        "type": "object",
        "required": ["achievement_id", "rule", "kind", "user_id", "team_id", "period", "value",
                     "target", "occurred_at", "emitted_at", "title", "message"],
        "properties": {
            "achievement_id": {**text, "pattern": "^[0-9a-f]{32}$",
                               "description": "hash of rule, user and period; the dedup key"},
            "rule": {**text, "description": "the rule's id in the KPI config"},
            "kind": {"enum": ["first_use", "threshold", "target_hit", "streak",
                              "personal_best", "team_goal", "rank", "data_quality_hero",
                              "achievement_revoked"],
                     "description": "achievement_revoked (ledger.revoke_on_retraction): the "
                                    "award with this achievement_id is withdrawn"},
            "user_id": text,
            "team_id": {"type": ["string", "null"]},
            "period": {**text, "description": "bucket key (d:2026-11-23, w:…, m:…) or "
                                              "flag:<function> / flag:* for first use"},
            "value": {"type": "number", "description": "the KPI value that earned it"},
            "target": {"type": ["number", "null"],
                       "description": "the goal that was reached (rank: the place)"},
            "occurred_at": {**text, "description": "event time of the event that earned it"},
            "emitted_at": {**text, "format": "date-time"},
            "title": text,
            "message": text,
        },
        "additionalProperties": False,
    }


def alerts_schema() -> dict[str, Any]:
    """``crm.kpi.alerts``: private below-target news for the person and their manager."""
    text = {"type": "string"}
    nullable = {"type": ["string", "null"]}
    return {
        "$schema": _DRAFT,
        "$id": "crm-pulse/crm.kpi.alerts",
        "title": "crm.kpi.alerts record value (key: user_id); private, never on walls",
        "type": "object",
        "required": ["alert_id", "kind", "user_id", "team_id", "manager_id", "kpi", "period",
                     "value", "target", "expected_by_now", "emitted_at"],
        "properties": {
            "alert_id": {**text, "pattern": "^[0-9a-f]{32}$",
                         "description": "hash of kind, user, KPI and period; the dedup key"},
            "kind": {"enum": ["below_target", "at_risk", "streak_at_risk"],
                     "description": "below_target at period close; at_risk behind pace; "
                                    "streak_at_risk: late in the period, a running streak "
                                    "is not yet on target"},
            "user_id": text,
            "team_id": nullable,
            "manager_id": {**nullable, "description": "for routing to the manager"},
            "kpi": text,
            "period": {
                "type": "object",
                "required": ["kind", "start", "end", "tz", "key"],
                "properties": {"kind": text, "start": text, "end": text, "tz": text,
                               "key": text},
            },
            "value": {"type": "number"},
            "target": {"type": "number"},
            "expected_by_now": {"type": "number"},
            "emitted_at": {**text, "format": "date-time"},
        },
        "additionalProperties": False,
    }


def schema_documents() -> dict[str, dict[str, Any]]:
    from app.roster import roster_json_schema

    return {
        "crm.activities.schema.json": activities_schema(),
        "crm.activities.dlq.schema.json": dlq_schema(),
        "crm.roster.schema.json": roster_json_schema(),
        "crm.achievements.schema.json": achievements_schema(),
        "crm.kpi.alerts.schema.json": alerts_schema(),
    }


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=False) + "\n"


def write_schema_files(out: Path | None = None) -> list[Path]:
    folder = out or HERE
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, document in schema_documents().items():
        path = folder / name
        path.write_text(render(document), encoding="utf-8")
        written.append(path)
    return written
