"""The KPI model loads, and every problem is reported with its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import main
from app.config import ConfigError, parse_config, parse_duration
from app.settings import DEFAULT_CONFIG

GOOD = """\
kpis:
  calls: {count: [call]}
  won: {sum: amount, types: [opportunity_won]}
  closed: {count: [opportunity_won, opportunity_lost]}
  rate: {ratio: [won, closed]}
roles:
  rep:
    targets:
      calls: {day: 10}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "pulse.yaml")
    return caught.value.problems


def test_default_config_is_valid() -> None:
    assert main(["check-config", str(DEFAULT_CONFIG)]) == 0


def test_good_config_parses() -> None:
    config = parse_config(GOOD)
    assert config.kpis["won"].kind == "sum"
    assert config.kpis["calls"].source_types == frozenset({"call"})
    assert config.roles["rep"].targets["calls"]["day"] == 10


def test_errors_name_the_line_and_the_path() -> None:
    text = GOOD.replace("won: {sum: amount", "won: {sum: [amount]")
    assert problems(text) == ["pulse.yaml:3: kpis.won.sum: Input should be a valid string"]


def test_every_problem_is_listed() -> None:
    text = "timezone: Mars/Olympus\nweek_start: caturday\nkpis:\n  calls: {count: [call]}\n"
    found = problems(text)
    assert found[0].startswith("pulse.yaml:1: timezone:")
    assert "unknown IANA timezone" in found[0]
    assert found[1].startswith("pulse.yaml:2: week_start:")


def test_kpi_needs_exactly_one_kind() -> None:
    found = problems("kpis:\n  calls:\n    count: [call]\n    sum: amount\n")
    assert found == ["pulse.yaml:2: kpis.calls: Value error, a KPI needs exactly one of "
                     "count, sum, distinct, ratio"]


def test_targets_must_name_known_kpis() -> None:
    found = problems(GOOD.replace("      calls: {day: 10}", "      visits: {day: 10}"))
    assert "unknown KPI 'visits'" in found[0]


def test_yaml_syntax_errors_have_a_line() -> None:
    found = problems("kpis:\n  calls: {count: [call]\n  other: 1\n")
    assert found[0].startswith("pulse.yaml:3: YAML syntax")


def test_check_config_cli_reports_problems(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kpis:\n  calls: {count: call}\n")
    assert main(["check-config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:2: kpis.calls.count: Input should be a valid list" in err


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("15m", 900), ("1h", 3600),
                                               ("7d", 604800), ("2w", 1209600), (30, 30)])
def test_durations(text: object, seconds: int) -> None:
    assert parse_duration(text).total_seconds() == seconds


def test_bad_duration() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")
