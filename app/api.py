"""The read API: KPIs of people, teams and offices, progress, leaderboards, the feed.

A person's figures live on the worker owning their partition. Team and office figures are
spread over every partition: a worker owning them all answers from its tables, otherwise
from the Redis serving layer, which every worker writes (``"complete": false`` when neither
can give the whole picture). Leaderboards and the feed come from Redis and follow the
privacy settings (``privacy`` in the KPI model): opted-out and inactive people are never
shown, names can be pseudonyms, and the figures of teams and offices smaller than
``privacy.min_group_size`` are refused unless the caller holds the API token (or access is
open, as in local development).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from faust.web import Request, Response, View

from agents.achievements import AchievementRules
from agents.ingest import flags_key, team_key, user_key
from agents.kpis import KpiFolder
from agents.periods import Calendar, Period, zone
from agents.statements import period_lines, statement, to_csv
from app.access import Access
from app.directory import Directory, pseudonym
from app.edge import EdgeError, error_response, parse_period
from app.kpi_targets import team_targets, user_targets
from app.serving import BOARD_PERIODS, FEED_MAX, ServingUnavailable

if TYPE_CHECKING:
    from app.faust_app import Pulse

Handler = Callable[..., Any]
MAX_LIMIT = 100


def register_api_views(pulse: Pulse, access: Access) -> None:
    app, settings = pulse.app, pulse.settings
    config = settings.pulse
    calendar = Calendar(config.calendar_periods, config.week_start)
    kpis = KpiFolder(config)
    rules = AchievementRules(config)
    board_periods = [kind for kind in BOARD_PERIODS if kind in config.periods]

    def kpi_body(values: dict[str, float], targets: dict[str, float]) -> dict[str, Any]:
        return {
            name: {"value": values[name], "target": targets.get(name),
                   "title": config.kpis[name].title or name, "kind": config.kpis[name].kind}
            for name in kpis.names
        }

    def shown_group(request: Request | None, members: list[dict[str, Any]]) -> None:
        """Small groups' figures would tell about individuals: API token holders only (never
        on a leaderboard: ``request`` None)."""
        trusted = request is not None and access.full(request)
        if len(members) < config.privacy.min_group_size and not trusted:
            raise EdgeError(403, "group_too_small", "fewer active members than "
                            "privacy.min_group_size: not shown")

    def directory() -> Directory:
        return Directory.build(config, list(pulse.roster_table.values()))

    def group_tz(team_id: str | None) -> Any:
        team = config.teams.get(team_id or "")
        return zone((team.timezone if team else None) or config.team_timezone)

    def shown_name(profile: dict[str, Any]) -> str | None:
        """How a person appears in public (None: not at all)."""
        if profile.get("leaderboard_opt_out") or not profile.get("active", True):
            return None
        if config.privacy.names == "pseudonyms":
            return pseudonym(settings.pseudonym_secret, profile["user_id"])
        return profile.get("display_name") or profile["user_id"]

    async def team_buckets(team_id: str, period: Period) -> tuple[list[Any], bool]:
        """The team's buckets of ``period`` and whether they cover every partition."""
        topic = pulse.activities.get_topic_name()
        owned = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic}
        local = [pulse.kpi_value(team_key(k, p, team_id))
                 for k in period.bucket_keys for p in range(settings.partitions)]
        if len(owned) == settings.partitions:
            return local, True
        try:
            return await pulse.serving.team_buckets(team_id, period.bucket_keys), True
        except ServingUnavailable:
            return local, False

    def guarded(personal: bool) -> Callable[[Handler], Handler]:
        """Check access (personal figures need the API token), then answer; errors as JSON."""
        def decorate(handler: Handler) -> Handler:
            async def answer(view: View, request: Request, *args: Any, **kwargs: Any
                             ) -> Response:
                try:
                    access.check(request, personal)
                    return await handler(view, request, *args, **kwargs)
                except EdgeError as exc:
                    return error_response(view, exc.status, exc.reason, exc.message)
                except ServingUnavailable:
                    return error_response(view, 503, "serving_unavailable",
                                          "Redis does not answer; the figures come back with it")
            return answer
        return decorate

    def user_period(request: Request, user_id: str) -> tuple[str, Any, Any, Period]:
        """The requested period kind, the person's profile (or None), timezone and period."""
        kind, at = parse_period(request, config.periods)
        profile = pulse.roster_table.get(user_id)
        tz = zone((profile or {}).get("timezone") or config.timezone)
        return kind, profile, tz, calendar.period(kind, at, tz)

    @app.page("/api/kpis/users/{user_id}")
    class UserKpis(View):
        @guarded(personal=True)
        async def get(self, request: Request, user_id: str) -> Response:
            kind, profile, _, period = user_period(request, user_id)
            buckets = [pulse.kpi_value(user_key(k, user_id)) for k in period.bucket_keys]
            if profile is None and not any(buckets):
                raise EdgeError(404, "unknown_user", "no roster entry and no data")
            return self.json({
                "user_id": user_id,
                "period": period.as_dict(),
                "kpis": kpi_body(kpis.read(buckets), user_targets(config, profile, kind)),
            })

    def statement_response(view: View, request: Request, body: dict[str, Any]) -> Response:
        """JSON, or CSV with ``format=csv`` (for payroll spreadsheets)."""
        if not config.ledger.statements:
            raise EdgeError(404, "statements_disabled", "ledger.statements is off in the KPI "
                            "model: no statement lines are kept")
        answer_format = request.query.get("format", "json")
        if answer_format == "csv":
            return view.text(to_csv(body["kpis"]), content_type="text/csv")
        if answer_format != "json":
            raise EdgeError(400, "bad_format", "format must be json or csv")
        return view.json(body)

    @app.page("/api/users/{user_id}/statement")
    class UserStatement(View):
        """Every event and ledger correction behind a person's KPI values in a period."""

        @guarded(personal=True)
        async def get(self, request: Request, user_id: str) -> Response:
            _, profile, tz, period = user_period(request, user_id)
            lines = period_lines(calendar, pulse.kpi_value, user_id, tz, period.start,
                                 period.end)
            if profile is None and not lines:
                raise EdgeError(404, "unknown_user", "no roster entry and no data")
            return statement_response(self, request, {
                "user_id": user_id, "period": period.as_dict(),
                "kpis": statement(kpis, lines)})

    @app.page("/api/teams/{team_id}/statement")
    class TeamStatement(View):
        """The statement lines of a team's active members in the team's period; complete
        when this worker owns every partition (else the members it holds)."""

        @guarded(personal=True)
        async def get(self, request: Request, team_id: str) -> Response:
            kind, at = parse_period(request, config.periods)
            members = directory().members.get(team_id, [])
            if team_id not in config.teams and not members:
                raise EdgeError(404, "unknown_team", "no config or roster members")
            period = calendar.period(kind, at, group_tz(team_id))
            topic = pulse.activities.get_topic_name()
            owned = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic}
            lines = []
            for member in members:
                tz = zone(member.get("timezone") or config.timezone)
                lines += period_lines(calendar, pulse.kpi_value, member["user_id"], tz,
                                      period.start, period.end)
            return statement_response(self, request, {
                "team_id": team_id, "members": len(members), "period": period.as_dict(),
                "complete": len(owned) == settings.partitions,
                "kpis": statement(kpis, sorted(lines, key=lambda line: (line["at"],
                                                                        line["id"])))})

    @app.page("/api/users/{user_id}/progress")
    class UserProgress(View):
        """Progress toward each achievement and target in the current periods."""

        @guarded(personal=True)
        async def get(self, request: Request, user_id: str) -> Response:
            profile = pulse.roster_table.get(user_id)
            flags = pulse.kpi_value(flags_key(user_id))
            tz = zone((profile or {}).get("timezone") or config.timezone)
            now = datetime.now(UTC)
            current = {kind: calendar.period(kind, now, tz).bucket_keys[0]
                       for kind in config.calendar_periods}
            if profile is None and flags is None and not any(
                    pulse.kpi_value(user_key(key, user_id)) for key in current.values()):
                raise EdgeError(404, "unknown_user", "no roster entry and no data")
            goals = rules.progress(
                (profile or {}).get("role"), current,
                lambda key, kpi: rules.value(pulse.kpi_value(user_key(key, user_id)), kpi),
                (flags or {}).get("r", {}))
            return self.json({"user_id": user_id, "goals": goals})

    @app.page("/api/kpis/teams/{team_id}")
    class TeamKpis(View):
        @guarded(personal=False)
        async def get(self, request: Request, team_id: str) -> Response:
            kind, at = parse_period(request, config.periods)
            period = calendar.period(kind, at, group_tz(team_id))
            buckets, complete = await team_buckets(team_id, period)
            members = directory().members.get(team_id, [])
            if team_id not in config.teams and not members and not any(buckets):
                raise EdgeError(404, "unknown_team", "no config, roster members or data")
            shown_group(request, members)
            return self.json({
                "team_id": team_id,
                "members": len(members),
                "period": period.as_dict(),
                "complete": complete,
                "kpis": kpi_body(kpis.read(buckets), team_targets(config, team_id, members, kind)),
            })

    @app.page("/api/kpis/offices/{office_id}")
    class OfficeKpis(View):
        """An office: the sum of its teams (each in its own timezone's period)."""

        @guarded(personal=False)
        async def get(self, request: Request, office_id: str) -> Response:
            kind, at = parse_period(request, config.periods)
            groups = directory()
            teams = groups.offices().get(office_id)
            if not teams:
                raise EdgeError(404, "unknown_office", "no team of the config or roster is in it")
            shown_group(request, groups.office_members(office_id))
            buckets, complete, targets = [], True, {}
            for team_id in teams:
                period = calendar.period(kind, at, group_tz(team_id))
                found, whole = await team_buckets(team_id, period)
                buckets += found
                complete = complete and whole
                for kpi, target in team_targets(config, team_id, groups.members[team_id],
                                                kind).items():
                    targets[kpi] = targets.get(kpi, 0) + target
            return self.json({
                "office_id": office_id,
                "teams": teams,
                "members": len(groups.office_members(office_id)),
                "period": calendar.period(kind, at, group_tz(None)).as_dict(),
                "complete": complete,
                "kpis": kpi_body(kpis.read(buckets), targets),
            })

    @app.page("/api/teams")
    class Teams(View):
        """Teams known from the config and the roster, with their active member counts."""

        @guarded(personal=False)
        async def get(self, request: Request) -> Response:
            groups = directory()
            least = config.privacy.min_group_size
            return self.json({"min_group_size": least, "teams": [{
                "team_id": team_id,
                "name": (config.teams[team_id].name if team_id in config.teams else None)
                or team_id,
                "office_id": groups.office_of.get(team_id),
                "members": len(groups.members[team_id]),
                "public": len(groups.members[team_id]) >= least,
            } for team_id in groups.teams]})

    @app.page("/api/leaderboard")
    class Leaderboard(View):
        """Top people of a KPI in the current (or ``at``) period, per team, office or all."""

        @guarded(personal=False)
        async def get(self, request: Request) -> Response:
            kpi = request.query.get("kpi", "")
            if kpi not in config.kpis:
                raise EdgeError(400, "bad_kpi", f"kpi must be one of {', '.join(config.kpis)}")
            kind, at = parse_period(request, board_periods)
            scope = request.query.get("scope", "all")
            limit = request.query.get("limit", "10")
            if not (limit.isdigit() and 1 <= int(limit) <= MAX_LIMIT):
                raise EdgeError(400, "bad_limit", f"limit must be 1..{MAX_LIMIT}")
            groups = directory()
            if scope == "all":
                members, team_id = [m for ms in groups.members.values() for m in ms], None
            elif scope.startswith("team:") and scope[5:] in groups.members:
                members, team_id = groups.members[scope[5:]], scope[5:]
            elif scope.startswith("office:") and scope[7:] in groups.offices():
                members, team_id = groups.office_members(scope[7:]), None
            else:
                raise EdgeError(404, "unknown_scope", "scope must be all, team:<id> or "
                                "office:<id> of a known team or office")
            shown_group(None, members)
            period = calendar.period(kind, at, group_tz(team_id))
            rows = await pulse.serving.board(kpi, period.bucket_keys[0], scope,
                                             int(limit) * 3 + 10)
            entries: list[dict[str, Any]] = []
            for user_id, value in rows:
                profile = pulse.roster_table.get(user_id)
                name = shown_name(profile) if profile else None
                if name is None or value <= 0:
                    continue
                entries.append({"rank": len(entries) + 1, "name": name,
                                "team_id": profile.get("team_id"), "value": value})
                if len(entries) == int(limit):
                    break
            return self.json({"kpi": kpi, "title": config.kpis[kpi].title or kpi,
                              "period": period.as_dict(), "scope": scope, "entries": entries})

    @app.page("/api/achievements")
    class Achievements(View):
        """The latest achievements, newest first (public recognition; names per privacy);
        ``kind=first_use,streak`` keeps those kinds (from the last FEED_MAX awards)."""

        @guarded(personal=False)
        async def get(self, request: Request) -> Response:
            limit = request.query.get("limit", "20")
            if not (limit.isdigit() and 1 <= int(limit) <= MAX_LIMIT):
                raise EdgeError(400, "bad_limit", f"limit must be 1..{MAX_LIMIT}")
            kinds = {k for k in request.query.get("kind", "").split(",") if k}
            feed = await pulse.serving.feed(FEED_MAX if kinds else int(limit))
            shown = []
            for award in [a for a in feed if not kinds or a["kind"] in kinds][:int(limit)]:
                profile = pulse.roster_table.get(award["user_id"]) or {
                    "user_id": award["user_id"]}
                name = shown_name(profile)
                if config.privacy.names == "pseudonyms" or name is None:
                    award.pop("user_id")
                shown.append({**award, "name": name})
            return self.json({"achievements": shown})
