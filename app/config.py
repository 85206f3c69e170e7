"""The KPI model (YAML): KPIs, periods, targets per role, teams, calendar, ingest rules.

``load_config`` validates the file and reports every problem with its line number, which
is what ``crm-pulse check-config`` prints.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

PeriodKind = Literal["hour", "day", "week", "month", "quarter", "year", "rolling_7d", "rolling_30d"]
CALENDAR_PERIODS: tuple[str, ...] = ("hour", "day", "week", "month", "quarter", "year")
ROLLING_DAYS: dict[str, int] = {"rolling_7d": 7, "rolling_30d": 30}
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_NAME = r"^[a-z][a-z0-9_]*$"
_LONGEST_DURATION_S = 100 * 365 * 86400
MAX_CONFIG_NESTING = 16
MAX_CONFIG_BYTES = 256 * 1024  # a KPI model is a few KB; bigger is a mistake or an attack
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available


def parse_duration(value: Any) -> timedelta:
    """Accept ``90s``, ``15m``, ``1h``, ``7d``, ``2w`` or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 15m, 1h, 7d, 2w)")
        seconds = float(match[1]) * _DURATION_UNITS[match[2]]
    if not 0 <= seconds <= _LONGEST_DURATION_S:
        raise ValueError(f"duration out of range: {value!r} (0 to 100 years)")
    return timedelta(seconds=seconds)


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def _check_timezone(name: Any) -> str:
    if not isinstance(name, str):
        raise ValueError(f"a timezone is an IANA name like Europe/Berlin, not {name!r}")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # OSError: 'America'
        raise ValueError(f"unknown IANA timezone {name!r}") from exc
    return name


TimeZoneName = Annotated[str, BeforeValidator(_check_timezone)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KpiDef(_Strict):
    """One KPI. Exactly one of ``count``, ``sum``, ``distinct`` or ``ratio``.

    - ``count: [call, meeting]`` counts events of those types;
    - ``sum: amount`` with ``types: [opportunity_won]`` sums a numeric field;
    - ``distinct: feature`` counts distinct values of a field;
    - ``ratio: [won_deals, closed_deals]`` divides two other KPIs (computed on read).

    ``count_on: completed`` is short for ``actions: [completed]``: a record counts once it
    is done (a call logged as planned counts when it is completed), not when created.
    """

    title: str | None = None
    count: list[str] | None = None
    sum: str | None = None
    distinct: str | None = None
    ratio: tuple[str, str] | None = None
    types: list[str] | None = Field(None, description="Event types that feed sum/distinct.")
    actions: list[Literal["created", "updated", "completed", "deleted", "reassigned"]] = Field(
        ["created"], description="Record actions that count (corrections come from the ledger)."
    )
    count_on: Literal["created", "completed"] | None = Field(
        None, description="Shorthand for actions: [created] or [completed].")

    @model_validator(mode="before")
    @classmethod
    def _count_on(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("count_on") is not None:
            if "actions" in data:
                raise ValueError("give either count_on or actions, not both")
            data = {**data, "actions": [data["count_on"]]}
        return data

    @model_validator(mode="after")
    def _one_kind(self) -> KpiDef:
        kinds = [k for k in ("count", "sum", "distinct", "ratio") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("a KPI needs exactly one of count, sum, distinct, ratio")
        if self.count is not None and self.types is not None:
            raise ValueError("count lists its types itself; drop 'types'")
        return self

    @property
    def kind(self) -> str:
        for kind in ("count", "sum", "distinct", "ratio"):
            if getattr(self, kind) is not None:
                return kind
        raise AssertionError("validated")  # pragma: no cover

    @property
    def source_types(self) -> frozenset[str] | None:
        """Event types this KPI reads; ``None`` means every type."""
        wanted = self.count if self.count is not None else self.types
        return frozenset(wanted) if wanted is not None else None


Targets = dict[str, dict[PeriodKind, int | float]]


class RoleDef(_Strict):
    title: str | None = None
    targets: Targets = Field(default_factory=dict, description="kpi -> period -> target")


class TeamDef(_Strict):
    name: str | None = None
    office_id: str | None = None
    timezone: TimeZoneName | None = None
    targets: Targets = Field(default_factory=dict)


class Calendar(_Strict):
    working_days: list[Literal[WEEKDAYS]] = list(WEEKDAYS[:5])  # type: ignore[valid-type]
    holidays: list[date] = Field(default_factory=list)


class RosterRules(_Strict):
    strict: bool = Field(False, description="Reject events of users not in the roster.")


class MetricsRules(_Strict):
    """What ``/metrics`` shows about individual people (docs/metrics.md)."""

    per_user: bool = Field(False, description="Export per-user KPI series.")
    pseudonymous: bool = Field(True, description="Per-user series carry pseudonyms, not ids.")


class LedgerRules(_Strict):
    """The record ledger: corrections from CRM record changes, audit statements."""

    enabled: bool = Field(True, description="Events naming a CRM record feed the ledger; "
                          "deletions, reassignments and amount updates correct the KPIs.")
    statements: bool = Field(False, description="Keep a line per counted event for audit "
                             "statements (kept as long as day buckets: retention.day); "
                             "off by default: it about halves single-event throughput "
                             "(docs/ledger.md).")
    revoke_on_retraction: bool = Field(
        False, description="A correction that takes a threshold or target award back below its "
        "goal emits achievement_revoked with the award's id (default: awards stand).")


class PrivacyRules(_Strict):
    """What the wall, the leaderboards and the feed show (recognition is public)."""

    names: Literal["names", "pseudonyms"] = Field(
        "names", description="Show people by display name, or by a stable pseudonym.")
    min_group_size: int = Field(
        3, ge=1, description="Teams and offices with fewer active members are not shown.")


class AlertRules(_Strict):
    """Private pace warnings during a period (``at_risk``)."""

    at_risk_after: float = Field(0.5, gt=0, lt=1, description="Share of the period passed.")
    at_risk_margin: float = Field(0.25, ge=0, lt=1, description="Tolerated shortfall vs pace.")
    work_hours: tuple[int, int] = Field((8, 18), description="A day's pace window, local.")

    @model_validator(mode="after")
    def _hours(self) -> AlertRules:
        start, end = self.work_hours
        if not 0 <= start < end <= 24:
            raise ValueError("work_hours must be [start, end] with 0 <= start < end <= 24")
        return self


class Retention(_Strict):
    """How long buckets of each period kind are kept (relative to now)."""

    hour: Duration = timedelta(days=3)
    day: Duration = timedelta(days=40)
    week: Duration = timedelta(days=120)
    month: Duration = timedelta(days=400)
    quarter: Duration = timedelta(days=800)
    year: Duration = timedelta(days=800)


class FirstUseRule(_Strict):
    """One achievement per CRM function ("flag") on its first real use, plus all collected."""

    id: Annotated[str, Field(pattern=_NAME)]
    kind: Literal["first_use"]
    flags: list[str] = Field(min_length=1)
    title: str = "First use: {flag}"
    all_title: str | None = "All CRM flags collected"


class _KpiRule(_Strict):
    """Fields every KPI-based rule has; ``period`` is narrowed by each kind."""

    id: Annotated[str, Field(pattern=_NAME)]
    kpi: str
    period: Literal[CALENDAR_PERIODS]  # type: ignore[valid-type]
    title: str


class ThresholdRule(_KpiRule):
    """The KPI reaches ``value`` within one ``period`` ("10 calls today")."""

    kind: Literal["threshold"]
    value: float = Field(gt=0)


class TargetHitRule(_KpiRule):
    """The KPI reaches the person's role target for the period."""

    kind: Literal["target_hit"]


class StreakRule(_KpiRule):
    """The role target hit in ``length`` consecutive working periods (weekends don't break it)."""

    kind: Literal["streak"]
    period: Literal["day", "week", "month"]
    length: int = Field(ge=2)


class PersonalBestRule(_KpiRule):
    """A closed period beats every earlier period of the same kind."""

    kind: Literal["personal_best"]
    period: Literal["day", "week", "month"]


class TeamGoalRule(_KpiRule):
    """The team's total reaches ``value`` (else the team target); every member gets it."""

    kind: Literal["team_goal"]
    value: float | None = Field(None, gt=0)


class RankRule(_KpiRule):
    """At period close, the ``top`` people of each team (or office) by the KPI.

    ``data_quality_hero`` is the same over a data-quality KPI with ``top: 1``. People who
    opted out of leaderboards are not ranked; nobody is ranked with a value of 0.
    """

    kind: Literal["rank", "data_quality_hero"]
    period: Literal["day", "week", "month"]
    scope: Literal["team", "office"] = "team"
    top: int = Field(3, ge=1)


KpiRule = (ThresholdRule | TargetHitRule | StreakRule | PersonalBestRule | TeamGoalRule
           | RankRule)
AchievementRule = Annotated[FirstUseRule | KpiRule, Field(discriminator="kind")]


class PulseConfig(_Strict):
    """The whole KPI model file."""

    timezone: TimeZoneName = Field("UTC", description="For users without one in the roster.")
    team_timezone: TimeZoneName = Field("UTC", description="Default timezone of team periods.")
    week_start: Literal[WEEKDAYS] = "monday"  # type: ignore[valid-type]
    periods: list[PeriodKind] = ["hour", "day", "week", "month", "rolling_7d", "rolling_30d"]
    grace: Duration = Field(timedelta(hours=1), description="Lateness allowed after a day ends.")
    dedup_horizon: Duration = Field(timedelta(days=7), description="Duplicate event_id window.")
    catch_up: Duration = Field(
        timedelta(days=2), description="How far back closed periods are still reviewed (alerts, "
        "streaks, bests) when no worker ran at their close.")
    retention: Retention = Retention()
    roster: RosterRules = RosterRules()
    alerts: AlertRules = AlertRules()
    metrics: MetricsRules = MetricsRules()
    privacy: PrivacyRules = PrivacyRules()
    ledger: LedgerRules = LedgerRules()
    type_aliases: dict[str, str] = Field(default_factory=dict)
    kpis: dict[Annotated[str, Field(pattern=_NAME)], KpiDef]
    roles: dict[str, RoleDef] = Field(default_factory=dict)
    teams: dict[str, TeamDef] = Field(default_factory=dict)
    calendar: Calendar = Calendar()
    achievements: list[AchievementRule] = Field(default_factory=list)

    @field_validator("periods")
    @classmethod
    def _days_for_rolling(cls, periods: list[str]) -> list[str]:
        if any(p in ROLLING_DAYS for p in periods) and "day" not in periods:
            raise ValueError("rolling periods are built from days: add 'day'")
        return periods

    @model_validator(mode="after")
    def _references(self) -> PulseConfig:
        for name, kpi in self.kpis.items():
            if kpi.ratio is not None:
                for part in kpi.ratio:
                    if part not in self.kpis or self.kpis[part].ratio is not None:
                        raise ValueError(f"kpis.{name}.ratio: {part!r} is not a count/sum KPI")
        for owner, targets in [(f"roles.{r}", d.targets) for r, d in self.roles.items()] + [
            (f"teams.{t}", d.targets) for t, d in self.teams.items()
        ]:
            for kpi_name, per_period in targets.items():
                if kpi_name not in self.kpis:
                    raise ValueError(f"{owner}.targets: unknown KPI {kpi_name!r}")
                for period in per_period:
                    if period not in self.periods:
                        raise ValueError(f"{owner}.targets.{kpi_name}: period {period!r} unused")
        seen: set[str] = set()
        for rule in self.achievements:
            if rule.id in seen:
                raise ValueError(f"achievements: duplicate id {rule.id!r}")
            seen.add(rule.id)
            if isinstance(rule, FirstUseRule):
                continue
            kpi = self.kpis.get(rule.kpi)
            if kpi is None or kpi.ratio is not None:
                raise ValueError(f"achievements.{rule.id}: {rule.kpi!r} is not a count, sum "
                                 "or distinct KPI")
            if rule.period not in self.periods:
                raise ValueError(f"achievements.{rule.id}: period {rule.period!r} unused")
        return self

    @property
    def calendar_periods(self) -> tuple[str, ...]:
        return tuple(p for p in CALENDAR_PERIODS if p in self.periods)


class ConfigError(ValueError):
    """A config file problem list, each line ``file:line: path: message``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def load_config(path: Path | str) -> PulseConfig:
    """Load and validate a KPI model file; raise :class:`ConfigError` with line numbers."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError([f"{path}: over {MAX_CONFIG_BYTES // 1024} KiB; a KPI model is "
                               "a few KB: is it the right file?"])
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8"]
                          ) from exc
    return parse_config(text, str(path))


def parse_config(text: str, origin: str = "<config>") -> PulseConfig:
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{origin}: over {MAX_CONFIG_BYTES // 1024} KiB; a KPI model is "
                           "a few KB"])
    try:
        _refuse_hostile_yaml(text, origin)
        node = yaml.compose(text, Loader=_YAML_LOADER)
        data = yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 (a safe loader)
    except ConfigError:
        raise
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"{mark.line + 1}" if mark else "?"
        raise ConfigError([f"{origin}:{line}: YAML syntax: {exc}"]) from exc
    except (RecursionError, ValueError, OverflowError, TypeError) as exc:
        # PyYAML's own limits and value constructors (2026-02-30, a 5000-digit integer)
        raise ConfigError([f"{origin}: cannot read the YAML: {exc}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{origin}:1: the file must be a mapping with at least 'kpis'"])
    try:
        return PulseConfig.model_validate(data)
    except ValidationError as exc:
        lines = _line_index(node)
        problems = []
        for error in exc.errors():
            loc = tuple(str(part) for part in error["loc"])
            line = _nearest_line(lines, loc)
            where = ".".join(loc) or "(top level)"
            problems.append(f"{origin}:{line}: {where}: {error['msg']}")
        raise ConfigError(problems) from exc


def _refuse_hostile_yaml(text: str, origin: str) -> None:
    """Refuse anchors and aliases (``&a``, ``*a``: a KPI model needs none, and nested
    aliases are the "billion laughs" attack) and nesting deeper than any model needs."""
    depth = 0
    for event in yaml.parse(text, Loader=_YAML_LOADER):
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise ConfigError([f"{origin}:{line}: YAML anchors and aliases (& and *) are "
                               "not supported; write the values out"])
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_CONFIG_NESTING:
                raise ConfigError([f"{origin}:{line}: nested deeper than "
                                   f"{MAX_CONFIG_NESTING} levels"])
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _line_index(node: yaml.Node | None, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], int]:
    """Map each YAML path (keys and list indexes as strings) to its 1-based line."""
    index: dict[tuple[str, ...], int] = {}
    if node is None:
        return index
    index[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*path, str(key_node.value))
            index.update(_line_index(value_node, child))
            index[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            index.update(_line_index(item, (*path, str(i))))
    return index


def _nearest_line(lines: dict[tuple[str, ...], int], loc: tuple[str, ...]) -> int:
    """Line of the deepest existing prefix of ``loc`` (pydantic adds model-level parts)."""
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return 1
