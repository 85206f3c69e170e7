"""HTTP API on Faust web: CRM webhooks, KPI reads, health and readiness."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from faust.web import Request, Response, View

from agents.achievements import AchievementRules
from agents.ingest import flags_key, team_key, user_key
from agents.kpis import KpiFolder
from agents.periods import Calendar, zone
from app.adapters import adapters
from app.adapters.base import Counts, Delivery
from app.edge import EdgeError, read_body
from app.kpi_targets import team_targets, user_targets
from app.webhooks import OwnerDirectory, Routed, body_digest, edge_dead_letter, route

if TYPE_CHECKING:
    from app.faust_app import Pulse

logger = logging.getLogger(__name__)
WALL_PAGE = Path(__file__).parent / "static" / "wall.html"


def register_views(pulse: Pulse) -> None:
    app, settings = pulse.app, pulse.settings
    config = settings.pulse
    calendar = Calendar(config.calendar_periods, config.week_start)
    kpis = KpiFolder(config)
    rules = AchievementRules(config)

    def error(view: View, status: int, reason: str, message: str, **extra: Any) -> Response:
        return view.json({"error": reason, "message": message, **extra}, status=status)

    def parse_period(request: Request) -> tuple[str, datetime]:
        kind = request.query.get("period", "day")
        if kind not in config.periods:
            raise EdgeError(400, "bad_period",
                            f"period must be one of {', '.join(config.periods)}")
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

    def kpi_body(values: dict[str, float], targets: dict[str, float]) -> dict[str, Any]:
        return {
            name: {"value": values[name], "target": targets.get(name),
                   "title": config.kpis[name].title or name}
            for name in kpis.names
        }

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
            adapter = vendors.get(vendor)
            if adapter is None:
                return error(self, 404, "unknown_vendor",
                             f"no adapter {vendor!r}; use one of {', '.join(sorted(vendors))}")
            if not (adapter.configured() or settings.webhooks_unsigned):
                return error(self, 403, "not_configured",
                             f"{vendor} webhooks are off until their credentials are set "
                             "(docs/webhooks/); CRM_PULSE_WEBHOOKS_UNSIGNED=true for local dev")
            try:
                body = await read_body(request, settings.max_body_bytes, adapter.content_types)
                delivery = Delivery(request.method, str(request.url), request.headers,
                                    request.query, body)
                if adapter.configured():
                    adapter.authenticate(delivery, time.time())
            except EdgeError as exc:
                return error(self, exc.status, exc.reason, exc.message)
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
                return error(self, exc.status, exc.reason, exc.message)
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
            response = error(view, 503, "broker_unavailable",
                             "the broker did not acknowledge; retry later")
            response.headers["Retry-After"] = "5"
            return response
        for reason in routed.reasons:
            pulse.metrics.dead_letters.labels(reason).inc()
        return None

    @app.page("/api/kpis/users/{user_id}")
    class UserKpis(View):
        async def get(self, request: Request, user_id: str) -> Response:
            try:
                kind, at = parse_period(request)
            except EdgeError as exc:
                return error(self, exc.status, exc.reason, exc.message)
            profile = pulse.roster_table.get(user_id)
            tz = zone((profile or {}).get("timezone") or config.timezone)
            period = calendar.period(kind, at, tz)
            buckets = [pulse.kpi_table.get(user_key(k, user_id)) for k in period.bucket_keys]
            if profile is None and not any(buckets):
                return error(self, 404, "unknown_user", "no roster entry and no data")
            return self.json({
                "user_id": user_id,
                "period": period.as_dict(),
                "kpis": kpi_body(kpis.read(buckets), user_targets(config, profile, kind)),
            })

    @app.page("/api/users/{user_id}/progress")
    class UserProgress(View):
        """Progress toward each achievement and target in the current periods."""

        async def get(self, request: Request, user_id: str) -> Response:
            profile = pulse.roster_table.get(user_id)
            flags = pulse.kpi_table.get(flags_key(user_id))
            tz = zone((profile or {}).get("timezone") or config.timezone)
            now = datetime.now(UTC)
            current = {kind: calendar.period(kind, now, tz).bucket_keys[0]
                       for kind in config.calendar_periods}
            if profile is None and flags is None and not any(
                    pulse.kpi_table.get(user_key(key, user_id)) for key in current.values()):
                return error(self, 404, "unknown_user", "no roster entry and no data")
            goals = rules.progress(
                (profile or {}).get("role"), current,
                lambda key, kpi: rules.value(pulse.kpi_table.get(user_key(key, user_id)), kpi),
                (flags or {}).get("r", {}))
            return self.json({"user_id": user_id, "goals": goals})

    @app.page("/api/kpis/teams/{team_id}")
    class TeamKpis(View):
        async def get(self, request: Request, team_id: str) -> Response:
            try:
                kind, at = parse_period(request)
            except EdgeError as exc:
                return error(self, exc.status, exc.reason, exc.message)
            team = config.teams.get(team_id)
            tz = zone((team.timezone if team else None) or config.team_timezone)
            period = calendar.period(kind, at, tz)
            buckets = [
                pulse.kpi_table.get(team_key(k, partition, team_id))
                for k in period.bucket_keys
                for partition in range(settings.partitions)
            ]
            members = [p for p in pulse.roster_table.values() if p.get("team_id") == team_id]
            if team is None and not members and not any(buckets):
                return error(self, 404, "unknown_team", "no config, roster members or data")
            return self.json({
                "team_id": team_id,
                "members": len(members),
                "period": period.as_dict(),
                "kpis": kpi_body(kpis.read(buckets), team_targets(config, team_id, members, kind)),
            })

    @app.page("/api/teams")
    class Teams(View):
        """Teams known from the config and the roster, with their active member counts."""

        async def get(self, request: Request) -> Response:
            members: dict[str, int] = {}
            offices: dict[str, str] = {}
            for profile in pulse.roster_table.values():
                if profile.get("active", True) and profile.get("team_id"):
                    members[profile["team_id"]] = members.get(profile["team_id"], 0) + 1
                    if profile.get("office_id"):
                        offices.setdefault(profile["team_id"], profile["office_id"])
            teams = []
            for team_id in sorted(set(members) | set(config.teams)):
                team = config.teams.get(team_id)
                teams.append({
                    "team_id": team_id,
                    "name": (team.name if team else None) or team_id,
                    "office_id": (team.office_id if team else None) or offices.get(team_id),
                    "members": members.get(team_id, 0),
                })
            return self.json({"teams": teams})

    @app.page("/wall")
    class Wall(View):
        """The built-in TV page (polls the API; team figures only)."""

        async def get(self, request: Request) -> Response:
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
        """200 once tables are recovered and partitions assigned; 503 before."""

        async def get(self, request: Request) -> Response:
            recovered = app.tables.recovery.completed.is_set()
            ready = recovered and not app.rebalancing
            body = {"status": "ready" if ready else "starting", "recovered": recovered,
                    "rebalancing": bool(app.rebalancing)}
            return self.json(body, status=200 if ready else 503)


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
