"""Every PromQL expression of the dashboards and alert rules returns data from a real stack.

A real CRM Pulse worker (session broker and Redis) gets a roster and two waves of events
(simulated office, crafted events with CRM functions, a duplicate, a poison record, signed
and invalid webhooks); a real Prometheus (``/usr/bin/prometheus``) scrapes its ``/metrics``
every second with the deploy job name and loads ``deploy/prometheus/alerts.yml``. Then:

- each dashboard target, with its template variables substituted (every option of a custom
  variable; the resolved values of a query variable, as Grafana's multi-value regex), returns
  at least one sample that is a number (not NaN);
- each metric selector inside those expressions matches series (catches a misnamed metric or
  label value even inside ``or vector(0)``);
- each dashboard variable query (``label_values``) resolves to values;
- each alert rule: the whole expression is valid PromQL, and its signal (the expression
  without its threshold comparison, see the convention in alerts.yml) returns data; the rules
  evaluate without error in the real Prometheus.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from factories import event
from kafka_tools import produce

from app.edge import SIGNATURE_HEADER, sign
from app.embedded import ManagedProcess, free_port, wait_until
from app.kafka import ensure_topics
from app.roster import write_profiles
from app.settings import DEFAULT_CONFIG, Settings
from app.simulator import build_office, run_simulator

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
SECRET = "deploy-test-secret"
SEED = 7
# Grafana's built-in interval variables. The test runs for less than 5 minutes, so a 5m
# window holds both waves of events.
BUILTINS = {"$__rate_interval": "5m", "$__interval": "15s", "$__range": "1h"}
COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")
SELECTOR = re.compile(r"\b(crm_pulse_\w+|up)\b\s*(\{[^}]*\})?")
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")


@dataclass(frozen=True)
class Query:
    """One expression and where it comes from (for failure messages)."""

    where: str
    expr: str


# -- reading the deploy files ------------------------------------------------------------


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows


def dashboard_queries(name: str, board: dict[str, Any]) -> list[Query]:
    return [Query(f"{name} panel {panel['id']} {panel['title']!r} {target['refId']}",
                  target["expr"])
            for panel in panels(board) for target in panel.get("targets", [])]


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def deploy_job_name() -> str:
    """The scrape job of the workers in deploy/prometheus/prometheus.yml."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = [job["job_name"] for job in config["scrape_configs"]
            if job.get("metrics_path") == "/metrics" and "dns_sd_configs" in job]
    assert jobs == ["crm-pulse"], f"one worker job expected in {PROMETHEUS_CONFIG}: {jobs}"
    return jobs[0]


# -- PromQL text helpers -----------------------------------------------------------------


def signal_of(expr: str) -> str:
    """``expr`` without its threshold: the left operand of its first top-level comparison.

    Top level = outside (), {}, [] and string literals, so label matchers (``=``, ``!=``)
    and nested comparisons such as ``(hour() >= 8 < 17)`` are skipped.
    """
    depth, quote, i = 0, "", 0
    while i < len(expr):
        char = expr[i]
        if quote:
            if char == "\\":
                i += 1
            elif char == quote:
                quote = ""
        elif char in "\"'`":
            quote = char
        elif char in "({[":
            depth += 1
        elif char in ")}]":
            depth -= 1
        elif depth == 0:
            for op in COMPARISONS:
                if expr.startswith(op, i):
                    return expr[:i].strip()
        i += 1
    raise AssertionError(f"no top-level comparison in alert expression {expr!r}")


def test_signal_of_strips_only_the_top_level_threshold() -> None:
    assert signal_of('up{job="crm-pulse"} == 0') == 'up{job="crm-pulse"}'
    assert signal_of('sum by (reason) (rate(x{a!="b"}[10m])) > 0.2') == (
        'sum by (reason) (rate(x{a!="b"}[10m]))')
    assert signal_of("(sum(x) or on() vector(0)) == 0 and on() (hour() >= 8 < 17)") == (
        "(sum(x) or on() vector(0))")


def variables_in(expr: str) -> set[str]:
    return {name for name in re.findall(r"\$(\w+)", expr) if not name.startswith("__")}


def substitute(expr: str, values: dict[str, str]) -> str:
    for builtin, value in BUILTINS.items():
        expr = expr.replace(builtin, value)
    # Longest names first, so $team does not eat into a $teams.
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(f"${{{name}}}", values[name]).replace(f"${name}", values[name])
    assert "$" not in expr, f"unsubstituted variable left in {expr!r}"
    return expr


# -- Prometheus --------------------------------------------------------------------------


@dataclass
class Prometheus:
    url: str
    process: ManagedProcess

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:
            body = json.loads(error.read())
            raise AssertionError(f"{path} {params}: {error.code} {body.get('error')}") from error
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", f"{expr!r} gives a {data['resultType']}"
        return data["result"]

    def label_values(self, selector: str, label: str) -> list[str]:
        return sorted(self.api(f"/api/v1/label/{label}/values", **{"match[]": selector}))


def start_prometheus(tmp_path: Path, worker_port: int) -> Prometheus:
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(binary).is_file():
        pytest.fail("prometheus is not installed: apt-get install -y --no-install-recommends "
                    "prometheus (CI installs it; this test is never skipped)")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                   "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{
            "job_name": deploy_job_name(),
            "metrics_path": "/metrics",
            "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}],
        }],
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    process = ManagedProcess("prometheus", [
        binary,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ], tmp_path / "prometheus.log")
    prometheus = Prometheus(f"http://127.0.0.1:{port}", process)
    try:
        wait_until(lambda: urllib.request.urlopen(f"{prometheus.url}/-/ready", timeout=2),
                   30, f"prometheus ready on 127.0.0.1:{port}", process=process)
    except BaseException:
        process.stop()
        raise
    return prometheus


# -- the data ----------------------------------------------------------------------------


def post_webhook(settings: Settings, body: Any) -> int:
    raw = orjson.dumps(body)
    request = urllib.request.Request(f"{settings.web_url}/webhooks/generic", data=raw,
                                     method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header(SIGNATURE_HEADER, sign(SECRET, raw, int(time.time())))
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def feed(settings: Settings, wave: int) -> None:
    """Events that give every metric of docs/metrics.md a sample (and a rate, in wave 2)."""
    assert run_simulator(settings, rate=0, count=150, backfill=False, seed=SEED,
                         write_roster=False) == 0
    office = build_office(SEED)
    now = datetime.now(UTC).isoformat()
    rep = [p for p in office if p.role == "sales_rep"][wave]
    agent = next(p for p in office if p.role == "service_agent")
    # Ten calls: the ten_calls_today threshold and the daily call target of a sales rep.
    crafted = [event(rep.user_id, "call", occurred_at=now, source="salesforce")
               for _ in range(10)]
    crafted += [event(p.user_id, kind, occurred_at=now, source="hubspot", feature=feature)
                for p, (kind, feature) in zip(office, itertools.cycle(
                    [("login", "accounts"), ("feature_used", "reports"),
                     ("meeting", "appointments"), ("email", "email_tracking")]), strict=False)]
    crafted += [event(rep.user_id, "opportunity_won", occurred_at=now, amount=1000,
                      currency="EUR"),
                event(agent.user_id, "case_resolved", occurred_at=now, source="dynamics365")]
    # A meeting the CRM deletes again: the record ledger's correction (its metric).
    meeting = {"record_type": "appointment", "record_id": f"m-{wave}"}
    crafted += [event(rep.user_id, "meeting", occurred_at=now, **meeting),
                event(rep.user_id, "meeting", occurred_at=now, action="deleted", **meeting)]
    records = [(e["user_id"].encode(), orjson.dumps(e)) for e in crafted]
    records += records[:2]  # two duplicate deliveries
    records.append((rep.user_id.encode(), b"{not json"))  # a poison record for the DLQ
    produce(settings, records)
    good = event(agent.user_id, "call", occurred_at=now, source="generic")
    assert post_webhook(settings, good) == 202
    assert post_webhook(settings, [{"event_id": f"bad-{wave}", "type": "call"}]) == 400


# -- the test ----------------------------------------------------------------------------


@dataclass
class Check:
    where: str
    expr: str
    kind: str  # "data": a number (not NaN) expected; "series": any sample; "valid": no error


def evaluate(prometheus: Prometheus, check: Check) -> str | None:
    """``None`` when the check passes, else what is wrong."""
    try:
        result = prometheus.query(check.expr)
    except AssertionError as error:
        return f"query error: {error}"
    if check.kind == "valid":
        return None
    if not result:
        return "returned no data"
    if check.kind == "data" and all(sample["value"][1] == "NaN" for sample in result):
        return f"returned only NaN ({len(result)} series)"
    return None


def build_checks(prometheus: Prometheus, boards: dict[str, dict[str, Any]],
                 rules: list[dict[str, Any]]) -> list[Check]:
    checks: list[Check] = []
    for name, board in boards.items():
        options: dict[str, list[str]] = {}
        for variable in board.get("templating", {}).get("list", []):
            if variable["type"] == "custom":
                options[variable["name"]] = [o["value"] for o in variable["options"]]
            elif variable["type"] == "query":
                match = LABEL_VALUES.match(variable["definition"])
                assert match, f"{name}: ${variable['name']} is not label_values(...)"
                values = prometheus.label_values(match["selector"], match["label"])
                assert values, f"{name}: variable ${variable['name']} resolves to nothing"
                assert all(re.fullmatch(r"[\w.:-]+", v) for v in values), values
                options[variable["name"]] = ["(" + "|".join(values) + ")"]
            else:
                raise AssertionError(f"{name}: unexpected variable type {variable['type']}")
        for query in dashboard_queries(name, board):
            used = sorted(variables_in(query.expr))
            for combination in itertools.product(*(options[v] for v in used)):
                values = dict(zip(used, combination, strict=True))
                expr = substitute(query.expr, values)
                label = f"{query.where} {values}" if values else query.where
                checks.append(Check(label, expr, "data"))
                checks += [Check(f"{label} selector", selector.group(0), "series")
                           for selector in SELECTOR.finditer(expr)]
    for rule in rules:
        where = f"alerts.yml {rule['alert']}"
        checks.append(Check(f"{where} (whole rule)", rule["expr"], "valid"))
        checks.append(Check(f"{where} signal", signal_of(rule["expr"]), "data"))
        checks += [Check(f"{where} selector", selector.group(0), "series")
                   for selector in SELECTOR.finditer(rule["expr"])]
    return checks


def failures(prometheus: Prometheus, checks: list[Check]) -> list[str]:
    problems = []
    for check in checks:
        problem = evaluate(prometheus, check)
        if problem:
            problems.append(f"{check.where}: {problem}\n    {check.expr}")
    return problems


def rule_problems(prometheus: Prometheus, wanted: set[str]) -> list[str]:
    """Rules the real Prometheus could not evaluate (or has not evaluated yet)."""
    groups = prometheus.api("/api/v1/rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    loaded = {r["name"] for r in rules}
    if loaded != wanted:
        return [f"alerts.yml: Prometheus loaded rules {sorted(loaded)}, not {sorted(wanted)}"]
    return [f"alerts.yml {r['name']}: health {r['health']} {r.get('lastError', '')}"
            for r in rules if r["health"] != "ok"]


def test_every_dashboard_and_alert_expression_returns_data(
    make_settings, worker_factory, tmp_path: Path
) -> None:
    boards, rules = load_dashboards(), alert_rules()  # a broken file fails here, at once
    assert len(boards) == 3, f"three dashboards expected in {DASHBOARDS}: {sorted(boards)}"
    # catch_up 8d: some working day has closed whatever today is, so alerts are sent
    model = tmp_path / "pulse.yaml"
    model.write_text(DEFAULT_CONFIG.read_text().replace("catch_up: 2d", "catch_up: 8d"))
    settings = make_settings(config=model, generic_webhook_secret=SECRET, close_interval_s=1,
                             session_timeout_s=6)
    ensure_topics(settings)
    write_profiles(settings, build_office(SEED))  # 3 teams, 2 offices, roles with targets
    worker = worker_factory(settings)
    prometheus = start_prometheus(tmp_path, settings.web_port)
    try:
        feed(settings, wave=0)
        # Wave 2 once Prometheus holds wave 1: the counters then have a rate above zero.
        wait_until(lambda: prometheus.query(
            'sum(crm_pulse_events_total) > 0 and sum(crm_pulse_dead_letters_total) > 0'),
            60, "wave 1 counted and scraped", process=worker)
        feed(settings, wave=1)

        checks: list[Check] = []
        problems: list[str] = ["not evaluated yet"]

        def all_pass() -> bool:
            nonlocal checks, problems
            checks = checks or build_checks(prometheus, boards, rules)
            problems = failures(prometheus, checks) + rule_problems(
                prometheus, {rule["alert"] for rule in rules})
            return not problems

        try:
            wait_until(all_pass, 60, "every dashboard and alert expression to return data",
                       process=worker, interval=1.0)
        except TimeoutError:
            if not checks:
                build_checks(prometheus, boards, rules)  # raises: why it could not be built
            # else: the assertion below lists each failing expression
        assert not problems, (
            f"{len(problems)} of {len(checks)} checks failed against the real Prometheus "
            f"(its log: {prometheus.process.log_path}):\n" + "\n".join(problems))
        assert len(checks) > 100, f"only {len(checks)} checks: did the dashboards load?"
    finally:
        prometheus.process.stop()
