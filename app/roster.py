"""The roster: who is who (team, office, role, timezone, opt-outs), kept in ``crm.roster``.

``crm.roster`` is compacted, keyed by ``user_id`` and holds one JSON :class:`Profile` per
user; an empty value (tombstone) removes a user. The worker reads it with
:func:`parse_profile`, the ``crm-pulse roster import`` command writes it with
:func:`import_csv`, and the simulator with :func:`write_profiles`.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from kafka.errors import KafkaError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.config import ConfigError, TimeZoneName
from app.kafka import ensure_topics, make_producer, send_all
from app.settings import Settings

if TYPE_CHECKING:
    from kafka import KafkaProducer

logger = logging.getLogger(__name__)

_ID = {"min_length": 1, "max_length": 200}
_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})


class RosterError(Exception):
    """Roster problems, each ``file:line: column: message``; nothing was written."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Profile(BaseModel):
    """One user of CRM Pulse, the value of ``crm.roster`` (key = ``user_id``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    user_id: str = Field(..., **_ID, description="CRM Pulse user id; the record key.")
    display_name: str | None = Field(None, max_length=200, description="Shown on walls/feeds.")
    email: str | None = Field(
        None, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$", description="For private notices."
    )
    team_id: str = Field(..., **_ID, description="Team whose figures include this user.")
    office_id: str | None = Field(None, **_ID, description="Office (office-vs-office views).")
    role: str | None = Field(None, **_ID, description="A role of the KPI config (its targets).")
    timezone: TimeZoneName | None = Field(
        None, description="IANA timezone of the user's periods; unset: the config default."
    )
    manager_id: str | None = Field(None, **_ID, description="Receives private below-target news.")
    active: bool = Field(True, description="Inactive users keep history but leave boards.")
    leaderboard_opt_out: bool = Field(False, description="Never shown by name on public boards.")
    dynamics365_id: str | None = Field(None, **_ID, description="Dynamics 365 systemuserid.")
    salesforce_id: str | None = Field(None, **_ID, description="Salesforce User Id (OwnerId).")
    hubspot_user_id: str | None = Field(
        None, **_ID, description="HubSpot user id (userId in the owners API; not the owner id).")
    pipedrive_user_id: str | None = Field(None, **_ID, description="Pipedrive user id.")


FIELDS: tuple[str, ...] = tuple(Profile.model_fields)
_BOOLEANS = frozenset(n for n, f in Profile.model_fields.items() if f.annotation is bool)
_REQUIRED = tuple(n for n, f in Profile.model_fields.items() if f.is_required())


def profile_json(profile: Profile) -> bytes:
    """The ``crm.roster`` value of ``profile``: compact JSON without unset (None) fields."""
    return orjson.dumps(profile.model_dump(exclude_none=True))


def parse_profile(raw: bytes | None) -> Profile | None:
    """Decode a ``crm.roster`` value; ``None`` for a tombstone or an invalid value.

    Never raises: a bad record must not stop the worker. Unknown fields (from a newer
    writer) are ignored rather than rejecting the whole profile.
    """
    if not raw:
        return None
    try:
        data = orjson.loads(raw)
        if not isinstance(data, dict):
            return None
        return Profile.model_validate({k: v for k, v in data.items() if k in Profile.model_fields})
    except (ValueError, TypeError):  # JSONDecodeError and ValidationError are ValueErrors
        return None


def roster_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a ``crm.roster`` value, as in the schemas folder."""
    raw = Profile.model_json_schema()
    properties: dict[str, Any] = {}
    for name, prop in raw["properties"].items():
        prop = {k: v for k, v in prop.items() if k != "title"}
        options = prop.pop("anyOf", None)
        if options is not None:  # Optional[X] -> X or null
            (inner,) = [o for o in options if o.get("type") != "null"]
            prop = {**inner, **prop, "type": [inner["type"], "null"]}
            prop.pop("default", None)
        if name == "timezone":
            prop["examples"] = ["Europe/Berlin", "Australia/Sydney"]
        first = {k: prop[k] for k in ("type", "description") if k in prop}
        properties[name] = {**first, **{k: v for k, v in prop.items() if k not in first}}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "crm-pulse/crm.roster.profile",
        "title": "CRM Pulse roster profile",
        "description": "Value of crm.roster (compacted, key = user_id); empty value = removed.",
        "type": "object",
        "required": list(_REQUIRED),
        "properties": properties,
        "additionalProperties": False,
    }


def write_profiles(
    settings: Settings, profiles: Iterable[Profile], producer: KafkaProducer | None = None
) -> int:
    """Write profiles to ``crm.roster`` keyed by user id; return how many were acknowledged.

    The caller ensures the topics exist (a broker auto-creating ``crm.roster`` would not
    make it compacted). Pass ``producer`` to reuse one; otherwise one is made and closed.
    """
    records = [(p.user_id.encode(), profile_json(p)) for p in profiles]
    own = producer is None
    active = make_producer(settings) if producer is None else producer
    try:
        sent = send_all(active, settings.topics.roster, records)
    finally:
        if own:
            active.close()
    logger.info("roster: %d profile(s) written to %s", sent, settings.topics.roster)
    return sent


def read_csv(path: Path, roles: Iterable[str] | None = None) -> list[Profile]:
    """Parse and validate a roster CSV; raise :class:`RosterError` listing every problem.

    The header names :class:`Profile` fields; an empty cell means unset; booleans accept
    true/false/yes/no/1/0. ``roles``, when given, are the only roles allowed. Problems read
    ``file:line: column: message`` with the CSV line number (the header is line 1).
    """
    allowed = None if roles is None else frozenset(roles)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return _read_rows(csv.reader(handle), str(path), allowed)
    except OSError as exc:
        raise RosterError([f"{path}: cannot read: {exc.strerror}"]) from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise RosterError([f"{path}: not a UTF-8 CSV file: {exc}"]) from exc


def import_csv(path: Path, settings: Settings) -> int:
    """Validate a roster CSV against the KPI config's roles and write it to ``crm.roster``.

    Nothing is written unless every row is valid; returns the number of profiles written.
    Broker failures are reported as a :class:`RosterError` too.
    """
    try:
        roles = settings.pulse.roles
    except ConfigError as exc:
        raise RosterError(exc.problems) from exc
    profiles = read_csv(Path(path), roles)
    try:
        ensure_topics(settings)
        return write_profiles(settings, profiles)
    except KafkaError as exc:
        raise RosterError([f"{settings.kafka}: cannot write the roster: {exc}"]) from exc


def _read_rows(reader: Any, origin: str, roles: frozenset[str] | None) -> list[Profile]:
    """Validate every row of a ``csv.reader``; collect all problems before raising."""
    header = next(reader, None)
    columns = [cell.strip() for cell in header or []]
    if not any(columns):
        raise RosterError([f"{origin}:1: the file needs a header row naming the columns"])
    problems = _check_header(columns, origin, reader.line_num)
    if problems:
        raise RosterError(problems)
    profiles: list[Profile] = []
    first_line: dict[str, int] = {}
    end = reader.line_num
    for cells in reader:
        line, end = end + 1, reader.line_num  # a quoted cell may span several lines
        if not any(cell.strip() for cell in cells):
            continue
        row_problems, profile = _parse_row(columns, cells, roles)
        problems.extend(f"{origin}:{line}: {problem}" for problem in row_problems)
        if profile is None:
            continue
        if profile.user_id in first_line:
            problems.append(
                f"{origin}:{line}: user_id: duplicate of line {first_line[profile.user_id]}"
            )
            continue
        first_line[profile.user_id] = line
        profiles.append(profile)
    if problems:
        raise RosterError(problems)
    return profiles


def _check_header(columns: list[str], origin: str, line: int) -> list[str]:
    problems = []
    seen: set[str] = set()
    for column in columns:
        if column not in Profile.model_fields:
            problems.append(
                f"{origin}:{line}: {column or '(empty)'}: unknown column; "
                f"known: {', '.join(FIELDS)}"
            )
        elif column in seen:
            problems.append(f"{origin}:{line}: {column}: column given twice")
        seen.add(column)
    problems.extend(
        f"{origin}:{line}: {name}: required column missing"
        for name in _REQUIRED
        if name not in seen
    )
    return problems


def parse_bool(text: str) -> bool:
    """``true/false/yes/no/1/0`` (any case) -> bool; ValueError otherwise."""
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError("expected true/false/yes/no/1/0")


def _parse_row(
    columns: list[str], cells: list[str], roles: frozenset[str] | None
) -> tuple[list[str], Profile | None]:
    """One CSV row -> (problems as ``column: message``, profile or None)."""
    problems: list[str] = []
    if len(cells) > len(columns):
        problems.append(f"(row): {len(cells)} cells but {len(columns)} columns")
    data: dict[str, Any] = {}
    for column, cell in zip(columns, cells, strict=False):
        text = cell.strip()
        if not text:
            continue  # empty cell: unset, the model default applies
        if column in _BOOLEANS:
            try:
                data[column] = parse_bool(text)
            except ValueError as exc:
                problems.append(f"{column}: {exc}")
            continue
        data[column] = text
    role = data.get("role")
    if roles is not None and role is not None and role not in roles:
        known = ", ".join(sorted(roles)) or "none configured"
        problems.append(f"role: unknown role {role!r}; the KPI config has: {known}")
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors(include_url=False, include_input=False):
            where = ".".join(str(part) for part in error["loc"]) or "(row)"
            problems.append(f"{where}: {error['msg']}")
        return problems, None
    return problems, (profile if not problems else None)
