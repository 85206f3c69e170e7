"""Roster: profile model, CSV import with line-precise problems, schema file, real topic."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from kafka_tools import read_topic

from app.roster import (
    Profile,
    RosterError,
    import_csv,
    parse_bool,
    parse_profile,
    profile_json,
    read_csv,
    roster_json_schema,
)
from app.settings import Settings
from app.simulator import build_office

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "roster.csv"
SCHEMA_FILE = ROOT / "schemas" / "crm.roster.schema.json"
ROLES = ("sales_rep", "account_manager", "service_agent")
HEADER = "user_id,display_name,email,team_id,role,timezone,active,leaderboard_opt_out\n"


def write(tmp_path: Path, text: str, name: str = "roster.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_profile_json_omits_unset_fields_and_round_trips() -> None:
    profile = Profile(user_id="u1", team_id="t1", timezone="Europe/Berlin")
    raw = profile_json(profile)
    assert json.loads(raw) == {
        "user_id": "u1",
        "team_id": "t1",
        "timezone": "Europe/Berlin",
        "active": True,
        "leaderboard_opt_out": False,
    }
    assert parse_profile(raw) == profile


@pytest.mark.parametrize(
    "raw",
    [None, b"", b"not json", b"[]", b'"u1"', b'{"team_id": "t1"}', b'{"user_id": "u1"}',
     b'{"user_id": "u1", "team_id": "t1", "timezone": "Mars/Olympus"}',
     b'{"user_id": "u1", "team_id": "t1", "active": "maybe"}'],
)  # fmt: skip
def test_parse_profile_returns_none_for_tombstones_and_invalid_values(raw: bytes | None) -> None:
    assert parse_profile(raw) is None


def test_parse_profile_ignores_fields_of_newer_writers() -> None:
    profile = parse_profile(b'{"user_id": "u1", "team_id": "t1", "pronouns": "they"}')
    assert profile == Profile(user_id="u1", team_id="t1")


def test_profile_is_frozen_and_strict() -> None:
    profile = Profile(user_id="u1", team_id="t1")
    with pytest.raises(ValueError):
        profile.team_id = "t2"  # type: ignore[misc]
    with pytest.raises(ValueError):
        Profile(user_id="u1", team_id="t1", nickname="x")  # type: ignore[call-arg]


def test_schema_file_is_what_the_model_says() -> None:
    committed = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert committed == roster_json_schema()
    jsonschema.Draft202012Validator.check_schema(committed)


def test_example_and_simulated_profiles_validate_against_the_schema() -> None:
    validator = jsonschema.Draft202012Validator(roster_json_schema())
    profiles = read_csv(EXAMPLE, ROLES) + build_office(7)
    for profile in profiles:
        validator.validate(json.loads(profile_json(profile)))
    # explicit nulls (another writer) are allowed too
    validator.validate({"user_id": "u1", "team_id": "t1", "email": None})
    bad_values = [
        {"user_id": "u1"},
        {"user_id": "u1", "team_id": "t1", "nickname": "x"},
        {"user_id": "", "team_id": "t1"},
        {"user_id": "u1", "team_id": "t1", "active": "yes"},
    ]
    for bad in bad_values:
        assert not validator.is_valid(bad), bad


def test_example_roster_imports_cleanly_with_the_default_config() -> None:
    profiles = read_csv(EXAMPLE, Settings().pulse.roles)
    assert len(profiles) == 6
    assert len({p.team_id for p in profiles}) == 2
    assert {p.role for p in profiles} <= set(Settings().pulse.roles)
    by_id = {p.user_id: p for p in profiles}
    assert by_id["u-1003"].leaderboard_opt_out is True
    assert by_id["u-2003"].active is False
    assert by_id["u-2003"].email is None


@pytest.mark.parametrize(
    ("cell", "expected"),
    [("true", True), ("TRUE", True), ("yes", True), ("Yes", True), ("1", True),
     ("false", False), ("no", False), ("NO", False), ("0", False), (" yes ", True)],
)  # fmt: skip
def test_booleans_accept_the_usual_spellings(cell: str, expected: bool) -> None:
    assert parse_bool(cell) is expected


def test_empty_boolean_cells_take_the_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "u1,,,t1,,,,\nu2,,,t1,,,no,yes\n")
    first, second = read_csv(path, ROLES)
    assert (first.active, first.leaderboard_opt_out) == (True, False)
    assert (second.active, second.leaderboard_opt_out) == (False, True)
    assert first.display_name is None and first.timezone is None


def test_every_problem_is_reported_with_its_csv_line(tmp_path: Path) -> None:
    text = (
        HEADER  # line 1
        + "u1,Ann A.,ann@example.com,t1,sales_rep,Europe/Berlin,true,false\n"  # 2: fine
        + "u2,Ben B.,,t1,astronaut,Europe/Berlin,true,false\n"  # 3: unknown role
        + "u3,Cem C.,,t1,sales_rep,Europe/Berlyn,true,false\n"  # 4: unknown timezone
        + '"u4","Dora\nD.",,t1,sales_rep,,perhaps,false\n'  # 5-6: bad boolean
        + "u5,Eve E.,,,sales_rep,,true,false\n"  # 7: missing team_id
        + "\n"  # 8: blank lines are skipped
        + "u1,Ann again,,t2,,,,\n"  # 9: duplicate user_id
        + "u6,Finn F.,not-an-email,t1,,,,\n"  # 10: bad e-mail
        + ",Gus G.,,t1,,,,\n"  # 11: missing user_id
        + "u7,Hal H.,,t1,,,,,extra\n"  # 12: too many cells
    )
    path = write(tmp_path, text)
    with pytest.raises(RosterError) as caught:
        read_csv(path, ROLES)
    problems = caught.value.problems
    expected_prefixes = [
        f"{path}:3: role: unknown role 'astronaut'",
        f"{path}:4: timezone: ",
        f"{path}:5: active: expected true/false/yes/no/1/0",
        f"{path}:7: team_id: ",
        f"{path}:9: user_id: duplicate of line 2",
        f"{path}:10: email: ",
        f"{path}:11: user_id: ",
        f"{path}:12: (row): ",
    ]
    assert len(problems) == len(expected_prefixes), problems
    for problem, prefix in zip(problems, expected_prefixes, strict=True):
        assert problem.startswith(prefix), (problem, prefix)
    assert "Europe/Berlyn" in problems[1]
    assert "sales_rep" in problems[0]  # names the configured roles
    assert "not-an-email" not in "\n".join(problems)  # personal data is not echoed


def test_header_problems_stop_before_the_rows(tmp_path: Path) -> None:
    path = write(tmp_path, "user_id,name,team\nu1,Ann,t1\n")
    with pytest.raises(RosterError) as caught:
        read_csv(path, ROLES)
    assert caught.value.problems == [
        f"{path}:1: name: unknown column; known: " + ", ".join(Profile.model_fields),
        f"{path}:1: team: unknown column; known: " + ", ".join(Profile.model_fields),
        f"{path}:1: team_id: required column missing",
    ]


def test_unreadable_and_empty_files_are_roster_errors(tmp_path: Path) -> None:
    with pytest.raises(RosterError, match="cannot read"):
        read_csv(tmp_path / "missing.csv", ROLES)
    with pytest.raises(RosterError, match="header row"):
        read_csv(write(tmp_path, ""), ROLES)
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(b"user_id,team_id,display_name\nu1,t1,J\xf6rg\n")
    with pytest.raises(RosterError, match="UTF-8"):
        read_csv(latin1, ROLES)


def test_import_uses_the_roles_of_the_kpi_config(tmp_path: Path) -> None:
    config = write(tmp_path, "kpis: {calls: {count: [call]}}\nroles: {closer: {}}\n", "k.yaml")
    settings = Settings(config=config, kafka="kafka://127.0.0.1:1")  # never reached
    path = write(tmp_path, "user_id,team_id,role\nu1,t1,sales_rep\n")
    with pytest.raises(RosterError) as caught:
        import_csv(path, settings)
    assert caught.value.problems == [
        f"{path}:2: role: unknown role 'sales_rep'; the KPI config has: closer"
    ]


def test_a_broken_kpi_config_is_reported_as_roster_problems(tmp_path: Path) -> None:
    config = write(tmp_path, "kpis: {calls: {count: call}}\n", "k.yaml")
    settings = Settings(config=config, kafka="kafka://127.0.0.1:1")
    with pytest.raises(RosterError) as caught:
        import_csv(EXAMPLE, settings)
    assert caught.value.problems[0].startswith(f"{config}:1: kpis.calls.count")


@pytest.mark.integration
def test_import_writes_every_profile_keyed_by_user_id(make_settings) -> None:
    settings = make_settings()
    assert import_csv(EXAMPLE, settings) == 6
    records = read_topic(settings, settings.topics.roster)
    expected = {p.user_id: p for p in read_csv(EXAMPLE, ROLES)}
    assert len(records) == 6
    assert {r.key.decode(): parse_profile(r.value) for r in records} == expected
