"""The record ledger on a real broker: CRM deletes, reassignments, amount updates and
completions correct the KPIs in the periods where they were earned, exactly, through
duplicate deliveries and a SIGKILL; audit statements sum to the API's KPI values."""

from __future__ import annotations

import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from kafka_tools import all_committed, read_topic

from app.cli import main
from app.embedded import wait_until
from app.kafka import make_producer
from app.roster import Profile, write_profiles
from app.settings import Settings

pytestmark = pytest.mark.integration

CONFIG = """\
timezone: UTC
periods: [day, month]
ledger: {statements: true}
kpis:
  calls: {count: [call], count_on: completed}
  meetings: {count: [meeting]}
  won: {count: [opportunity_won]}
  won_amount: {sum: amount, types: [opportunity_won]}
"""
USERS = ("ann", "bob", "cat")


def get(settings: Settings, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(settings.web_url + path, timeout=15) as response:
            body = response.read()
            kind = response.headers.get("Content-Type", "")
            return response.status, body.decode() if "csv" in kind else orjson.loads(body)
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())


class Crm:
    """Sends canonical record events, each stamped by the broker as of its own time."""

    def __init__(self, settings: Settings) -> None:
        self.settings, self.sent = settings, []

    def send(self, user: str, event_id: str, type_: str, record: str, at: datetime,
             action: str = "created", **fields: Any) -> None:
        event = {"event_id": event_id, "user_id": user, "type": type_, "action": action,
                 "occurred_at": at.isoformat(), "record_type": type_.split("_")[0],
                 "record_id": record, **fields}
        self.sent.append((user, event, at))
        self._produce([(user, event, at)])

    def redeliver(self) -> None:
        self._produce(self.sent)

    def _produce(self, items: list[tuple[str, dict[str, Any], datetime]]) -> None:
        producer = make_producer(self.settings)
        try:
            for user, event, at in items:
                producer.send(self.settings.topics.activities, key=user.encode(),
                              value=orjson.dumps(event),
                              timestamp_ms=int((at.timestamp() + 60) * 1000))
            producer.flush(30)
        finally:
            producer.close()


def figures(settings: Settings, user: str, period: str, at: datetime) -> dict[str, float]:
    status, body = get(settings, f"/api/kpis/users/{user}?period={period}"
                                 f"&at={quote(at.isoformat())}")
    assert status == 200, body
    return {name: kpi["value"] for name, kpi in body["kpis"].items()}


def expected(earlier: datetime, today: datetime) -> dict[tuple[str, datetime], dict[str, float]]:
    zero = {"calls": 0, "meetings": 0, "won": 0, "won_amount": 0}
    return {
        ("ann", earlier): zero,  # meeting deleted; opportunity moved to cat
        ("cat", earlier): {**zero, "won": 1, "won_amount": 500},  # in the period it was won
        ("cat", today): zero,
        ("bob", today): {**zero, "calls": 1, "won": 1, "won_amount": 250},
        ("ann", today): zero,
    }


def test_record_changes_correct_the_kpis_exactly(make_settings, worker_factory, tmp_path,
                                                 capsys):
    config = tmp_path / "pulse.yaml"
    config.write_text(CONFIG)
    settings = make_settings(config=config, session_timeout_s=6)
    worker = worker_factory(settings)
    write_profiles(settings, [Profile(user_id=u, team_id="t") for u in USERS])
    today = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    earlier = today - timedelta(days=2)
    crm = Crm(settings)
    # Two days ago, on time: ann's meeting and her won opportunity.
    crm.send("ann", "mtg-1", "meeting", "m-1", earlier)
    crm.send("ann", "won-1", "opportunity_won", "o-1", earlier + timedelta(minutes=5),
             amount=500)
    # Today: bob wins o-2 for 100, later updated to 250; a call planned, then completed.
    crm.send("bob", "won-2", "opportunity_won", "o-2", today, amount=100)
    crm.send("bob", "call-1", "call", "c-1", today + timedelta(minutes=1))
    crm.send("bob", "call-1:completed", "call", "c-1", today + timedelta(minutes=9),
             action="completed")
    crm.send("bob", "upd-2", "opportunity_won", "o-2", today + timedelta(minutes=10),
             action="updated", amount=250)
    # Today the CRM deletes the meeting, reassigns o-1 to cat, deletes a record it never sent.
    crm.send("ann", "del-1", "meeting", "m-1", today + timedelta(minutes=20), action="deleted")
    crm.send("cat", "re-1", "opportunity_won", "o-1", today + timedelta(minutes=21),
             action="reassigned", previous_owner="ann")
    crm.send("bob", "del-9", "case", "x-9", today + timedelta(minutes=22), action="deleted")
    crm.redeliver()  # every delivery twice

    want = expected(earlier, today)

    def exact() -> bool:
        return all(figures(settings, user, "day", day) == values
                   for (user, day), values in want.items())

    def corrections() -> list[dict[str, Any]]:
        return [orjson.loads(r.value) for r in read_topic(settings, settings.topics.activities)
                if b'"correction"' in r.value]

    wait_until(corrections, 90, "the ledger's first correction", log=worker.log_path)
    worker.kill()  # SIGKILL while the ingest and the ledger are at work
    worker = worker_factory(settings)
    crm.redeliver()  # and the CRM sends everything a third time
    wait_until(exact, 90, "the corrected KPIs", log=worker.log_path)
    wait_until(lambda: all_committed(settings), 60, "every record committed",
               log=worker.log_path)
    assert exact(), {key: figures(settings, key[0], "day", key[1]) for key in want}
    again = corrections()
    reasons = sorted((c["user_id"], c["correction"]["reason"], c["correction"]["count"])
                     for c in {c["event_id"]: c for c in again}.values())
    assert reasons == [("ann", "deleted", -1), ("ann", "reassigned", -1),
                       ("bob", "updated", 0), ("cat", "reassigned", 1)]

    for user in USERS:  # statements sum exactly to the KPI values, month and day
        for period, at in (("month", earlier), ("month", today), ("day", earlier)):
            status, body = get(settings, f"/api/users/{user}/statement?period={period}"
                                         f"&at={quote(at.isoformat())}")
            assert status == 200, body
            values = figures(settings, user, period, at)
            assert {k: v["value"] for k, v in body["kpis"].items()} == values
            for name, kpi in body["kpis"].items():
                assert sum(line["value"] for line in kpi["lines"]) == values[name]
    status, body = get(settings, f"/api/users/cat/statement?period=day"
                                 f"&at={quote(earlier.isoformat())}")
    lines = body["kpis"]["won_amount"]["lines"]
    assert [(line["event_id"], line["value"], line["record_id"]) for line in lines] == [
        (next(c["event_id"] for c in again if c["user_id"] == "cat"), 500, "o-1")]
    fix = lines[0]["correction"]  # by: the reassignment, or the line if it came after it
    assert (fix["reason"], fix["of"], fix["by"] in ("re-1", "won-1")) == ("reassigned", "won-1",
                                                                          True)
    status, text = get(settings, f"/api/users/bob/statement?period=day&format=csv"
                                 f"&at={quote(today.isoformat())}")
    assert status == 200 and text.splitlines()[0].startswith("kpi,value,user_id,event_id")
    assert "won_amount,250,total" in text
    assert main(["statement", "bob", "--period", "day", "--at", today.isoformat(),
                 "--url", settings.web_url]) == 0  # the CLI: CSV from the worker's API
    assert capsys.readouterr().out == text
    status, body = get(settings, f"/api/teams/t/statement?period=month"
                                 f"&at={quote(today.isoformat())}")
    assert status == 200 and body["complete"] is True
    assert body["kpis"]["won_amount"]["value"] == sum(
        figures(settings, u, "month", today)["won_amount"] for u in USERS)
