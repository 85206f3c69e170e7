"""The HTTP edge's checks: body size and content type, and the generic HMAC signature.

Signature header (when ``CRM_PULSE_GENERIC_WEBHOOK_SECRET`` is set)::

    X-CRM-Pulse-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">

The timestamp must be within :data:`SIGNATURE_TOLERANCE_S` of now (replay protection).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from aiohttp import web as aiohttp_web
from faust.web import Request, Response, View
from pydantic import SecretStr

SIGNATURE_HEADER = "X-CRM-Pulse-Signature"
SIGNATURE_TOLERANCE_S = 300
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
JSON_TYPES = ("application/json", "text/json")


class EdgeError(Exception):
    """A request refused at the edge, with its HTTP status and machine-readable reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


def error_response(view: View, status: int, reason: str, message: str,
                   **extra: Any) -> Response:
    """The JSON error answer: ``{"error": <reason>, "message": <for people>}``."""
    return view.json({"error": reason, "message": message, **extra}, status=status)


def parse_period(request: Request, allowed: Sequence[str]) -> tuple[str, datetime]:
    """``period`` (default ``day``) and ``at`` (default now) of a read request."""
    kind = request.query.get("period", "day")
    if kind not in allowed:
        raise EdgeError(400, "bad_period", f"period must be one of {', '.join(allowed)}")
    at_text = request.query.get("at")
    if at_text is None:
        return kind, datetime.now(UTC)
    try:
        at = datetime.fromisoformat(at_text)
    except ValueError:
        raise EdgeError(400, "bad_at", "at must be an ISO 8601 date-time") from None
    if at.tzinfo is None:
        raise EdgeError(400, "bad_at", "at needs an offset, e.g. Z or +01:00")
    return kind, at


async def read_body(request: Request, limit: int,
                    content_types: tuple[str, ...] = JSON_TYPES) -> bytes:
    """The body, refusing other content types (415) and bodies over ``limit`` (413)."""
    content_type = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if content_type not in content_types:
        raise EdgeError(415, "unsupported_media_type",
                        f"send Content-Type: {' or '.join(content_types)}")
    declared = request.content_length
    if declared is not None and declared > limit:
        raise EdgeError(413, "too_large", f"body over {limit} bytes; split the batch")
    try:
        body = await request.read()
    except aiohttp_web.HTTPRequestEntityTooLarge:
        raise EdgeError(413, "too_large", f"body over {limit} bytes; split the batch") from None
    if len(body) > limit:
        raise EdgeError(413, "too_large", f"body over {limit} bytes; split the batch")
    return body


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The header value a sender puts in :data:`SIGNATURE_HEADER`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_generic_signature(headers: Mapping[str, str], body: bytes, secret: SecretStr | None,
                             now: float | None = None) -> None:
    """Raise 401 unless the signature matches (no secret configured: nothing to check)."""
    if secret is None:
        return
    header = headers.get(SIGNATURE_HEADER, "")
    parts = dict(p.strip().split("=", 1) for p in header.split(",") if "=" in p)
    timestamp_text, given = parts.get("t", ""), parts.get("v1", "")
    if not (timestamp_text.isdigit() and len(timestamp_text) <= 12 and _HEX64.match(given)):
        raise EdgeError(401, "bad_signature", f"missing or malformed {SIGNATURE_HEADER}")
    timestamp = int(timestamp_text)
    if abs((now or time.time()) - timestamp) > SIGNATURE_TOLERANCE_S:
        raise EdgeError(401, "bad_signature", "signature timestamp outside 5 minutes")
    expected = sign(secret.get_secret_value(), body, timestamp).rsplit("v1=", 1)[1]
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise EdgeError(401, "bad_signature", "signature does not match the body")
