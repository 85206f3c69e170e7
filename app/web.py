"""HTTP on Faust web: CRM webhooks, the read API (app/api.py), wall, metrics, health."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from faust.web import Request, Response, View

from app.access import Access, RateLimiter
from app.adapters import adapters
from app.adapters.base import Counts, Delivery
from app.api import register_api_views
from app.edge import EdgeError, error_response, read_body
from app.webhooks import OwnerDirectory, Routed, body_digest, edge_dead_letter, route

if TYPE_CHECKING:
    from app.faust_app import Pulse

logger = logging.getLogger(__name__)
WALL_PAGE = Path(__file__).parent / "static" / "wall.html"


def register_views(pulse: Pulse) -> None:
    app, settings = pulse.app, pulse.settings
    config = settings.pulse
    access = Access(settings)
    register_api_views(pulse, access)
    limiter = RateLimiter(settings.webhook_rate_per_s, settings.webhook_burst)

    vendors = adapters(settings)
    owners = OwnerDirectory(lambda: list(pulse.roster_table.values()), vendors.values())

    @app.page("/webhooks/{vendor}")
    class Webhook(View):
        """A CRM's webhook: 2xx only once the broker has every event and dead letter."""

        async def post(self, request: Request, vendor: str) -> Response:
            response = await self.receive(request, vendor)
            shown = vendor if vendor in vendors else "unknown"
            pulse.metrics.webhooks.labels(shown, str(response.status)).inc()
            return response

        async def receive(self, request: Request, vendor: str) -> Response:
            if not limiter.allow((vendor, request.remote or "")):
                response = error_response(self, 429, "rate_limited", "too many deliveries "
                                          "from this source; retry after a few seconds")
                response.headers["Retry-After"] = "2"
                return response
            adapter = vendors.get(vendor)
            if adapter is None:
                return error_response(
                    self, 404, "unknown_vendor",
                    f"no adapter {vendor!r}; use one of {', '.join(sorted(vendors))}")
            if not (adapter.configured() or settings.webhooks_unsigned):
                return error_response(
                    self, 403, "not_configured",
                    f"{vendor} webhooks are off until their credentials are set "
                    "(docs/webhooks/); CRM_PULSE_WEBHOOKS_UNSIGNED=true for local dev")
            try:
                body = await read_body(request, settings.max_body_bytes, adapter.content_types)
                delivery = Delivery(request.method, _called_url(request), request.headers,
                                    request.query, body)
                if adapter.configured():
                    adapter.authenticate(delivery, time.time())
            except EdgeError as exc:
                return error_response(self, exc.status, exc.reason, exc.message)
            received_at = time.time()
            try:
                parsed = adapter.parse(delivery)
            except EdgeError as exc:  # authenticated, but not this vendor's format
                refused = Routed(dead_letters=[edge_dead_letter(
                    vendor, body_digest(body), None, exc.reason, exc.message, body,
                    received_at)], reasons=[exc.reason])
                failure = await deliver(self, refused)
                if failure is not None:
                    return failure
                return error_response(self, exc.status, exc.reason, exc.message)
            routed = route(adapter, parsed, body, owners, config.roster.strict, received_at)
            failure = await deliver(self, routed)
            if failure is not None:
                return failure
            answer = adapter.acknowledge(delivery, Counts(
                routed.accepted, len(routed.dead_letters), parsed.ignored))
            return self.bytes(answer.body, content_type=answer.content_type,
                              status=answer.status)

    async def deliver(view: View, routed: Routed) -> Response | None:
        """Produce everything and wait for the broker; a 503 response when it did not ack."""
        try:
            await asyncio.wait_for(_send_all(pulse, routed), settings.send_timeout_s)
        except Exception as exc:  # any broker failure: the sender must retry
            logger.warning("webhook: broker did not acknowledge (%s)", type(exc).__name__)
            response = error_response(view, 503, "broker_unavailable",
                                      "the broker did not acknowledge; retry later")
            response.headers["Retry-After"] = "5"
            return response
        for reason in routed.reasons:
            pulse.metrics.dead_letters.labels(reason).inc()
        return None

    @app.page("/wall")
    class Wall(View):
        """The built-in TV page (polls the API; team figures only)."""

        async def get(self, request: Request) -> Response:
            try:
                access.check(request, personal=False)
            except EdgeError as exc:
                return error_response(self, exc.status, exc.reason, exc.message)
            return self.html(WALL_PAGE.read_text(encoding="utf-8"))

    @app.page("/metrics")
    class Metrics(View):
        """Prometheus exposition of this worker (docs/metrics.md)."""

        async def get(self, request: Request) -> Response:
            return self.bytes(pulse.metrics.exposition(),
                              content_type="text/plain; version=0.0.4")

    @app.page("/healthz")
    class Health(View):
        async def get(self, request: Request) -> Response:
            return self.json({"status": "ok"})

    @app.page("/readyz")
    class Ready(View):
        """200 once tables are recovered and partitions assigned (``degraded`` while Redis is
        away: processing goes on); 503 before."""

        async def get(self, request: Request) -> Response:
            recovered = app.tables.recovery.completed.is_set()
            ready = recovered and not app.rebalancing
            status = "starting" if not ready else "ready" if pulse.serving.healthy else "degraded"
            body = {"status": status, "recovered": recovered,
                    "rebalancing": bool(app.rebalancing), "redis": pulse.serving.healthy}
            return self.json(body, status=200 if ready else 503)


def _called_url(request: Request) -> str:
    """The URL as the CRM called it (signatures cover it); 400 for a malformed Host."""
    try:
        return str(request.url)
    except (ValueError, UnicodeError):
        raise EdgeError(400, "bad_request", "malformed Host header") from None


async def _send_all(pulse: Pulse, routed: Routed) -> None:
    """Produce one record per user (an array when several) and every dead letter, and wait
    for all acks."""
    pending = []
    for user_id, events in routed.by_user.items():
        value = orjson.dumps(events[0] if len(events) == 1 else events)
        pending.append(await pulse.activities.send(key=user_id.encode(), value=value))
    for key, value in routed.dead_letters:
        pending.append(await pulse.dlq.send(key=key, value=value))
    await asyncio.gather(*pending)
