"""The HTTP API against a real worker on the real broker: webhook edge, KPI reads, DLQ."""

from __future__ import annotations

import base64
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import jsonschema
import orjson
import pytest
from factories import event
from kafka_tools import produce, read_topic

from app.edge import SIGNATURE_HEADER, sign
from app.embedded import free_port, start_worker, wait_ready, wait_until
from app.kafka import ensure_topics
from app.roster import Profile, write_profiles
from app.settings import Settings
from schemas.files import dlq_schema

pytestmark = pytest.mark.integration
SECRET = "test-secret"


@pytest.fixture(scope="module")
def api(broker, redis_server, tmp_path_factory) -> Any:
    tmp: Path = tmp_path_factory.mktemp("api")
    suffix = uuid4().hex[:8]
    settings = Settings(
        kafka=broker.url, redis=redis_server.url, topic_prefix=f"api{suffix}.",
        app_id=f"api-{suffix}", web_port=free_port(), data_dir=tmp, partitions=4,
        max_body_bytes=20_000, generic_webhook_secret=SECRET, session_timeout_s=6,
        close_interval_s=1,
    )
    ensure_topics(settings)
    write_profiles(settings, [
        Profile(user_id="ana", team_id="north", role="sales_rep", timezone="Europe/Berlin"),
        Profile(user_id="ben", team_id="north", role="sales_rep", timezone="Australia/Sydney"),
        Profile(user_id="cem", team_id="south", role="service_agent"),
    ])
    worker = start_worker(settings, tmp / "worker.log")
    try:
        wait_ready(settings, 120, process=worker)
        yield settings
    finally:
        worker.stop()


def call(settings: Settings, method: str, path: str, body: Any = None, *,
         content_type: str | None = "application/json", signed: bool = True,
         raw: bytes | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    data = raw if raw is not None else (None if body is None else orjson.dumps(body))
    request = urllib.request.Request(settings.web_url + path, data=data, method=method)
    if content_type and data is not None:
        request.add_header("Content-Type", content_type)
    if signed and data is not None:
        request.add_header(SIGNATURE_HEADER, sign(SECRET, data, int(time.time())))
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, orjson.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read()), dict(error.headers)


def now_iso(delta: timedelta = timedelta()) -> str:
    return (datetime.now(UTC) + delta).isoformat()


def kpi(settings: Settings, scope: str, ident: str, name: str, period: str = "day") -> Any:
    status, body, _ = call(settings, "GET", f"/api/kpis/{scope}/{ident}?period={period}")
    assert status == 200, body
    return body["kpis"][name]["value"]


def test_webhook_accepts_single_and_array_and_kpis_follow(api: Settings) -> None:
    status, body, _ = call(api, "POST", "/webhooks/generic",
                           event("ana", occurred_at=now_iso()))
    assert (status, body) == (202, {"accepted": 1, "dead_lettered": 0, "ignored": 0})
    batch = [event("ana", occurred_at=now_iso()), event("ben", occurred_at=now_iso()),
             event("ana", "meeting", occurred_at=now_iso())]
    status, body, _ = call(api, "POST", "/webhooks/generic", batch)
    assert (status, body) == (202, {"accepted": 3, "dead_lettered": 0, "ignored": 0})
    wait_until(lambda: kpi(api, "users", "ana", "calls") == 2, 30, "ana's 2 calls")
    # Members count on their own local day; the week holds both Berlin and Sydney "today".
    wait_until(lambda: kpi(api, "teams", "north", "calls", "week") == 3, 30, "team calls")
    assert kpi(api, "users", "ana", "meetings", "week") == 1


def test_progress_toward_achievements_and_targets(api: Settings) -> None:
    wait_until(lambda: kpi(api, "users", "ana", "calls") >= 2, 30, "ana's calls")
    status, body, _ = call(api, "GET", "/api/users/ana/progress")
    assert status == 200
    goals = {goal["rule"]: goal for goal in body["goals"]}
    assert goals["ten_calls_today"]["goal"] == 10
    assert goals["ten_calls_today"]["remaining"] == 10 - goals["ten_calls_today"]["value"]
    assert goals["daily_call_target"]["goal"] == 10  # sales_rep's daily target
    assert "missing" in goals["first_use"]
    assert call(api, "GET", "/api/users/nobody/progress")[0] == 404


def test_kpi_response_contract(api: Settings) -> None:
    status, body, _ = call(api, "GET", "/api/kpis/users/ana?period=day")
    assert status == 200
    assert set(body) >= {"period", "kpis"}
    assert set(body["period"]) >= {"start", "end", "tz"}
    assert body["period"]["tz"] == "Europe/Berlin"
    start = datetime.fromisoformat(body["period"]["start"])
    end = datetime.fromisoformat(body["period"]["end"])
    assert start <= datetime.now(UTC) < end
    assert body["kpis"]["calls"]["target"] == 10  # sales_rep daily target
    assert body["kpis"]["emails"]["target"] is None
    status, team, _ = call(api, "GET", "/api/kpis/teams/north?period=day")
    assert status == 200
    assert team["kpis"]["calls"]["target"] == 20  # two sales reps
    assert team["members"] == 2


def test_at_selects_another_period(api: Settings) -> None:
    last_year = "2025-06-01T12:00:00Z"
    status, body, _ = call(api, "GET", f"/api/kpis/users/ana?period=month&at={last_year}")
    assert status == 200
    assert body["period"]["start"].startswith("2025-06-01T00:00:00")
    assert body["kpis"]["calls"]["value"] == 0


@pytest.mark.parametrize(("path", "reason"), [
    ("/api/kpis/users/ana?period=fortnight", "bad_period"),
    ("/api/kpis/users/ana?at=tomorrow", "bad_at"),
    ("/api/kpis/users/ana?at=2026-11-23T10:00:00", "bad_at"),
])
def test_bad_queries_are_400_with_a_reason(api: Settings, path: str, reason: str) -> None:
    status, body, _ = call(api, "GET", path)
    assert (status, body["error"]) == (400, reason)


def test_unknown_user_and_team_are_404(api: Settings) -> None:
    assert call(api, "GET", "/api/kpis/users/nobody")[0] == 404
    assert call(api, "GET", "/api/kpis/teams/nowhere")[0] == 404


@pytest.mark.parametrize(("payload", "reason"), [
    ({"user_id": "ana", "type": "call"}, "schema:event_id"),
    ([event("ana"), {**event("ana"), "amount": "lots"}], "schema:amount"),
    ("just a string", "schema:event"),
])
def test_invalid_events_are_refused_whole(api: Settings, payload: Any, reason: str) -> None:
    status, body, _ = call(api, "POST", "/webhooks/generic", payload)
    assert (status, body["error"]) == (400, reason)
    assert body["message"]


def test_edge_refusals(api: Settings) -> None:
    assert call(api, "POST", "/webhooks/generic", raw=b"{not json")[1]["error"] == "invalid_json"
    status, body, _ = call(api, "POST", "/webhooks/generic", event("ana"),
                           content_type="text/plain")
    assert (status, body["error"]) == (415, "unsupported_media_type")
    huge = [event("ana", attributes={"pad": "x" * 1000}) for _ in range(30)]
    status, body, _ = call(api, "POST", "/webhooks/generic", huge)
    assert (status, body["error"]) == (413, "too_large")
    status, body, _ = call(api, "POST", "/webhooks/generic", event("ana"), signed=False)
    assert (status, body["error"]) == (401, "bad_signature")
    forged = orjson.dumps(event("ana"))
    request = urllib.request.Request(api.web_url + "/webhooks/generic", data=forged,
                                     method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header(SIGNATURE_HEADER, sign("wrong", forged, int(time.time())))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=15)
    assert refused.value.code == 401


def test_redelivered_webhook_counts_once(api: Settings) -> None:
    meeting = event("cem", "case_resolved", occurred_at=now_iso())
    for _ in range(3):
        assert call(api, "POST", "/webhooks/generic", meeting)[0] == 202
    marker = event("cem", "case_resolved", occurred_at=now_iso())
    assert call(api, "POST", "/webhooks/generic", marker)[0] == 202
    wait_until(lambda: kpi(api, "users", "cem", "cases_resolved") >= 2, 30, "cem's cases")
    assert kpi(api, "users", "cem", "cases_resolved") == 2


def test_poison_and_late_records_reach_the_dlq_and_the_worker_goes_on(api: Settings) -> None:
    late = event("ana", occurred_at=now_iso(-timedelta(days=3)))
    produce(api, [(b"ana", b"\xff\xfe not json"), (b"ana", orjson.dumps(late))])
    alive = event("ana", "email", occurred_at=now_iso())
    assert call(api, "POST", "/webhooks/generic", alive)[0] == 202
    wait_until(lambda: kpi(api, "users", "ana", "emails") == 1, 30, "processing after poison")

    def dead_letters() -> list[dict[str, Any]]:
        return [orjson.loads(r.value) for r in read_topic(api, api.topics.dlq)]

    wait_until(lambda: len(dead_letters()) >= 2, 30, "two DLQ records")
    letters = {letter["reason"]: letter for letter in dead_letters()}
    assert set(letters) >= {"invalid_json", "late"}
    for letter in letters.values():
        jsonschema.validate(letter, dlq_schema())
    assert base64.b64decode(letters["invalid_json"]["original_b64"]) == b"\xff\xfe not json"
    assert orjson.loads(base64.b64decode(letters["late"]["original_b64"])) == late


def test_health_endpoints(api: Settings) -> None:
    assert call(api, "GET", "/healthz")[:2] == (200, {"status": "ok"})
    status, body, _ = call(api, "GET", "/readyz")
    assert (status, body["status"]) == (200, "ready")


def test_teams_list_comes_from_the_roster(api: Settings) -> None:
    status, body, _ = call(api, "GET", "/api/teams")
    assert status == 200
    teams = {team["team_id"]: team for team in body["teams"]}
    assert set(teams) == {"north", "south"}
    assert teams["north"]["members"] == 2


def test_wall_page_is_served(api: Settings) -> None:
    with urllib.request.urlopen(api.web_url + "/wall", timeout=15) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/html")
        page = response.read().decode()
    assert "<title>CRM Pulse" in page  # what it shows: tests/integration/test_wall_page.py


def test_team_goal_awards_every_member(api: Settings) -> None:
    """north (two sales reps, 3 meetings a week each) reaches its weekly meeting goal."""
    meetings = [event(user, "meeting", occurred_at=now_iso()) for user in ["ana", "ben"] * 3]
    assert call(api, "POST", "/webhooks/generic", meetings)[0] == 202

    def team_awards() -> set[str]:
        found = [orjson.loads(r.value) for r in read_topic(api, api.topics.achievements)]
        return {a["user_id"] for a in found if a["rule"] == "team_meetings_week"}

    wait_until(lambda: team_awards() == {"ana", "ben"}, 30, "team goal awards for ana and ben")
