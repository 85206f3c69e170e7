"""HTTP API on Faust web: generic webhook, KPI reads, health and readiness."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from faust.web import Request, Response, View

from agents.achievements import AchievementRules
from agents.ingest import flags_key, team_key, user_key
from agents.kpis import KpiFolder
from agents.periods import Calendar, zone
from app.edge import EdgeError, read_body, verify_generic_signature
from app.kpi_targets import team_targets, user_targets
from schemas.activity import Rejection, decode_events, validate_event

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

    @app.page("/webhooks/generic")
    class GenericWebhook(View):
        """Accept canonical events (one object or an array); 202 once the broker has them."""

        async def post(self, request: Request) -> Response:
            try:
                body = await read_body(request, settings.max_body_bytes)
                verify_generic_signature(request, body, settings.generic_webhook_secret)
                events = [validate_event(e) for e in decode_events(body)]
            except EdgeError as exc:
                return error(self, exc.status, exc.reason, exc.message)
            except Rejection as exc:
                return error(self, 400, exc.reason, exc.message)
            by_user: dict[str, list[dict[str, Any]]] = {}
            for event in events:
                by_user.setdefault(event["user_id"], []).append(event)
            try:
                await asyncio.wait_for(_send_all(pulse, by_user), settings.send_timeout_s)
            except Exception as exc:  # any broker failure: the sender must retry
                logger.warning("webhook: broker did not acknowledge (%s)", type(exc).__name__)
                response = error(self, 503, "broker_unavailable",
                                 "the broker did not acknowledge; retry later")
                response.headers["Retry-After"] = "5"
                return response
            return self.json({"accepted": len(events)}, status=202)

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


async def _send_all(pulse: Pulse, by_user: dict[str, list[dict[str, Any]]]) -> None:
    """Produce one record per user (an array when several) and wait for every ack."""
    pending = []
    for user_id, events in by_user.items():
        value = orjson.dumps(events[0] if len(events) == 1 else events)
        pending.append(await pulse.activities.send(key=user_id.encode(), value=value))
    await asyncio.gather(*pending)
