"""deploy/prometheus: promtool accepts the config and the rules, and each alert fires when it
should and stays quiet on a healthy system (``promtool test rules`` on synthetic series).

promtool is required, never skipped: Debian's ``prometheus`` package provides it (CI installs
it). Whether the rules' metrics exist on a real worker is
test_dashboards_query_real_prometheus.py's job.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(binary).is_file():
        pytest.fail("promtool is not installed: apt-get install -y --no-install-recommends "
                    "prometheus (CI installs it; these tests are never skipped)")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60,
                          check=False)


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"]
            for rule in group["rules"]]


def test_promtool_checks_the_alert_rules() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_checks_the_config_and_its_rule_files() -> None:
    result = promtool("check", "config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_the_config_scrapes_the_workers_and_loads_the_rules() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "crm-pulse")
    assert job["metrics_path"] == "/metrics"
    assert job["dns_sd_configs"] == [
        {"names": ["worker"], "type": "A", "port": 6066, "refresh_interval": "15s"}]


def test_every_rule_is_documented_and_routable() -> None:
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names)), f"duplicate alert names: {names}"
    for rule in rules():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule.get("for"), f"{rule['alert']}: no 'for': one bad scrape would page"


# -- promtool test rules -------------------------------------------------------------------
# promtool compares annotations verbatim, so the rules under test are alerts.yml without
# annotations (their templates are checked by `promtool check rules` above).

WARNING = {"severity": "warning"}


def case(series: dict[str, str], alert: str, at: str, fires: list[dict[str, str]] | None,
         ) -> dict[str, Any]:
    """One promtool test: ``series`` (selector -> values, 1m apart); at ``at`` the alert
    ``alert`` fires with exactly these label sets (``[]``: it does not fire)."""
    return {
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series.items()],
        "alert_rule_test": [{"eval_time": at, "alertname": alert,
                             "exp_alerts": [{"exp_labels": labels} for labels in fires or []]}],
    }


UP = 'up{job="crm-pulse", instance="worker-1:6066"}'
UP_2 = 'up{job="crm-pulse", instance="worker-2:6066"}'
LAG = 'crm_pulse_consumer_lag{instance="worker-1:6066", partition="%d"}'
DLQ = 'crm_pulse_dead_letters_total{instance="worker-1:6066", reason="%s"}'
LATENCY = 'crm_pulse_event_latency_seconds_bucket{instance="worker-1:6066", le="%s"}'
REDIS = 'crm_pulse_redis_up{instance="worker-1:6066"}'
PENDING = 'crm_pulse_serving_pending{instance="worker-1:6066"}'
EVENTS = 'crm_pulse_events_total{instance="worker-1:6066", type="call", source="generic"}'


def latency(counts: dict[str, str]) -> dict[str, str]:
    """Cumulative histogram buckets: ``counts`` per ``le``, in bucket order."""
    return {LATENCY % le: values for le, values in counts.items()}


CASES = [
    # A worker that stops answering for 2 minutes; the other one is fine.
    case({UP: "1 1 1 0x10", UP_2: "1x13"}, "CrmPulseWorkerDown", "6m",
         [{"severity": "critical", "job": "crm-pulse", "instance": "worker-1:6066"}]),
    case({UP: "1 1 1 0x10"}, "CrmPulseWorkerDown", "4m", []),  # not for 2 minutes yet
    # Lag summed over partitions (and workers) above 10000 for 10 minutes.
    case({LAG % 0: "6000x30", LAG % 1: "6000x30"}, "CrmPulseConsumerLagHigh", "15m",
         [WARNING]),
    case({LAG % 0: "3000x30", LAG % 1: "3000x30"}, "CrmPulseConsumerLagHigh", "15m", []),
    # 30 dead letters a minute of one reason; one a minute of another is normal.
    case({DLQ % "invalid_json": "0+30x40", DLQ % "late": "0+1x40"}, "CrmPulseDeadLettersHigh",
         "30m", [{"severity": "warning", "reason": "invalid_json"}]),
    case({DLQ % "late": "0+1x40"}, "CrmPulseDeadLettersHigh", "30m", []),
    # 100 events a minute, all later than 5 minutes / all within a minute.
    case(latency({"60": "0x40", "300": "0x40", "900": "0+100x40", "+Inf": "0+100x40"}),
         "CrmPulseEventLatencyHigh", "30m", [WARNING]),
    case(latency({"60": "0+100x40", "300": "0+100x40", "900": "0+100x40",
                  "+Inf": "0+100x40"}), "CrmPulseEventLatencyHigh", "30m", []),
    case({REDIS: "1 1 0x10"}, "CrmPulseRedisDown", "6m",
         [{"severity": "warning", "instance": "worker-1:6066"}]),
    case({REDIS: "1x10"}, "CrmPulseRedisDown", "6m", []),
    case({PENDING: "8000x30"}, "CrmPulseServingBacklog", "15m",
         [{"severity": "warning", "instance": "worker-1:6066"}]),
    case({PENDING: "10x30"}, "CrmPulseServingBacklog", "15m", []),
    # The evaluation clock starts at 1970-01-01 00:00 UTC, a Thursday (a working day).
    case({EVENTS: "5x700"}, "CrmPulseNoEventsInWorkingHours", "9h", [WARNING]),
    case({UP: "1x700"}, "CrmPulseNoEventsInWorkingHours", "9h", [WARNING]),  # never any
    case({EVENTS: "5x700"}, "CrmPulseNoEventsInWorkingHours", "7h", []),  # before 08:00
    case({EVENTS: "5x1200"}, "CrmPulseNoEventsInWorkingHours", "18h", []),  # after 17:00
    case({EVENTS: "0+10x700"}, "CrmPulseNoEventsInWorkingHours", "9h", []),  # counting
]


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    fired = {c["alert_rule_test"][0]["alertname"] for c in CASES
             if c["alert_rule_test"][0]["exp_alerts"]}
    quiet = {c["alert_rule_test"][0]["alertname"] for c in CASES
             if not c["alert_rule_test"][0]["exp_alerts"]}
    names = {rule["alert"] for rule in rules()}
    assert fired == names, f"alerts without a firing case: {names - fired}"
    assert quiet == names, f"alerts without a quiet case: {names - quiet}"


def test_alerts_fire_on_bad_signals_and_stay_quiet_on_healthy_ones(tmp_path: Path) -> None:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    rule_file = tmp_path / "alerts-without-annotations.yml"
    rule_file.write_text(yaml.safe_dump({"groups": groups}))
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(yaml.safe_dump({
        "rule_files": [str(rule_file)], "evaluation_interval": "1m", "tests": CASES}))
    result = promtool("test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr
