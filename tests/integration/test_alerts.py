"""Below-target alerts at period close from a real worker: zero activity included, once."""

from __future__ import annotations

from datetime import UTC, datetime

import jsonschema
import orjson
import pytest
from kafka_tools import read_topic

from agents.period_close import PeriodCloser
from app.config import load_config
from app.embedded import wait_until
from app.kafka import ensure_topics
from app.roster import Profile, write_profiles
from schemas.files import alerts_schema

pytestmark = pytest.mark.integration

CONFIG = """\
timezone: UTC
periods: [day]
kpis:
  calls: {count: [call]}
roles:
  rep: {targets: {calls: {day: 3}}}
calendar:
  working_days: [monday, tuesday, wednesday, thursday, friday, saturday, sunday]
"""


def test_closed_days_alert_zero_activity_members_once(make_settings, worker_factory, tmp_path):
    config_path = tmp_path / "pulse.yaml"
    config_path.write_text(CONFIG)
    settings = make_settings(config=config_path, close_interval_s=1, session_timeout_s=6)
    ensure_topics(settings)
    write_profiles(settings, [
        Profile(user_id="zero", team_id="t", role="rep", manager_id="boss"),
        Profile(user_id="also", team_id="t", role="rep"),
        Profile(user_id="gone", team_id="t", role="rep", active=False),
        Profile(user_id="free", team_id="t"),
    ])
    closer = PeriodCloser(load_config(config_path))
    expected_days = {p.bucket_keys[0] for p in
                     closer.periods_to_close({"role": "rep"}, datetime.now(UTC))}

    def alerts() -> list[dict]:
        """The below_target alerts sent (at_risk pace warnings are covered by unit tests)."""
        sent = [orjson.loads(r.value) for r in read_topic(settings, settings.topics.alerts)]
        return [alert for alert in sent if alert["kind"] == "below_target"]

    worker = worker_factory(settings)
    wanted = 2 * len(expected_days)  # zero and also; not the inactive or target-less ones
    wait_until(lambda: len(alerts()) >= wanted, 60, f"{wanted} below-target alerts")
    markers = f"{settings.app_id}-kpi-changelog"
    wait_until(lambda: sum(orjson.loads(r.key).startswith("c|")
                           for r in read_topic(settings, markers)) >= wanted, 30,
               "close markers stored")
    worker.kill()
    worker_factory(settings)  # restarted: the markers say these periods are closed already
    write_profiles(settings, [Profile(user_id="newcomer", team_id="t", role="rep")])
    wait_until(lambda: any(a["user_id"] == "newcomer" for a in alerts()), 60,
               "the restarted worker's alert for a new member")

    found = alerts()
    for alert in found:
        jsonschema.validate(alert, alerts_schema())
    assert {(a["user_id"], a["kpi"], a["value"], a["target"]) for a in found} == {
        ("zero", "calls", 0, 3), ("also", "calls", 0, 3), ("newcomer", "calls", 0, 3)}
    assert {a["period"]["key"] for a in found} <= expected_days | {
        p.bucket_keys[0] for p in closer.periods_to_close({"role": "rep"}, datetime.now(UTC))}
    old_deliveries = [a["alert_id"] for a in found if a["user_id"] != "newcomer"]
    assert len(old_deliveries) == len(set(old_deliveries)) == wanted  # not re-sent on restart
    assert next(a for a in found if a["user_id"] == "zero")["manager_id"] == "boss"
