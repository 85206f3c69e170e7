"""Who may read what: the API token, per-screen keys, and webhook rate limits.

- ``CRM_PULSE_API_TOKEN`` (``Authorization: Bearer <token>``) opens the whole read API.
- ``CRM_PULSE_SCREEN_KEYS`` (``X-CRM-Pulse-Key: <key>`` or ``?key=<key>``, one key per TV)
  opens ``/wall`` and the public endpoints it reads: teams, offices, leaderboards and the
  achievements feed, never a person's own figures.
- With neither set, reading is open (local development).

Comparisons are constant-time; credentials are never logged.
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict

from faust.web import Request

from app.edge import EdgeError
from app.settings import Settings

KEY_HEADER = "X-CRM-Pulse-Key"


class Access:
    def __init__(self, settings: Settings) -> None:
        token = settings.api_token
        self.token = token.get_secret_value().encode() if token else None
        keys = settings.screen_keys.get_secret_value() if settings.screen_keys else ""
        self.screen_keys = [key.strip().encode() for key in keys.split(",") if key.strip()]
        self.open = self.token is None and not self.screen_keys

    def full(self, request: Request) -> bool:
        """Whether ``request`` may read everything (open access, or the API token)."""
        if self.open:
            return True
        authorization = request.headers.get("Authorization", "")
        bearer = authorization[7:].strip().encode() if authorization.startswith(
            "Bearer ") else b""
        return self.token is not None and hmac.compare_digest(bearer, self.token)

    def check(self, request: Request, personal: bool) -> None:
        """Raise 401 unless ``request`` may read a personal (or else public) endpoint."""
        if self.full(request):
            return
        if personal:
            raise EdgeError(401, "unauthorized", "personal figures need the API token: "
                            "Authorization: Bearer <CRM_PULSE_API_TOKEN>")
        key = (request.headers.get(KEY_HEADER) or request.query.get("key") or "").encode()
        if not any(hmac.compare_digest(key, known) for known in self.screen_keys):
            raise EdgeError(401, "unauthorized", f"send Authorization: Bearer <token> or "
                            f"{KEY_HEADER}: <screen key> (or ?key= on /wall)")


class RateLimiter:
    """Token buckets per source (vendor and client address), least recently used dropped."""

    def __init__(self, rate_per_s: float, burst: int, max_sources: int = 10_000) -> None:
        self.rate, self.burst, self.max_sources = rate_per_s, float(burst), max_sources
        self._buckets: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()

    def allow(self, source: tuple[str, str], now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1
        self._buckets[source] = (tokens - 1 if allowed else tokens, now)
        if len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
        return allowed
