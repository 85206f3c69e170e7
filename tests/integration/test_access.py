"""Access control on a real worker: the API token, screen keys, webhook rate limits, and
logs that carry neither secrets nor personal data."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from factories import event
from kafka_tools import produce, read_topic

from app.edge import SIGNATURE_HEADER, sign
from app.embedded import free_port, start_worker, wait_ready, wait_until
from app.kafka import ensure_topics
from app.roster import Profile, write_profiles
from app.settings import Settings

pytestmark = pytest.mark.integration
TOKEN, SCREEN, OTHER_SCREEN = "api-token-5f1c", "screen-key-lobby", "screen-key-kitchen"
WEBHOOK_SECRET, HUBSPOT_SECRET = "generic-secret-9a7b", "hubspot-secret-77c1"
PERSONAL = ("ana.schmidt@example.com", "Ana Schmidt")


@pytest.fixture(scope="module")
def guarded(broker, redis_server, tmp_path_factory) -> Any:
    tmp: Path = tmp_path_factory.mktemp("access")
    settings = Settings(
        _env_file=None, kafka=broker.url, redis=redis_server.url, web_port=free_port(),
        topic_prefix=f"acc{int(time.time() * 1000)}.", data_dir=tmp, partitions=2,
        session_timeout_s=6, api_token=TOKEN, screen_keys=f"{SCREEN}, {OTHER_SCREEN}",
        generic_webhook_secret=WEBHOOK_SECRET, hubspot_client_secret=HUBSPOT_SECRET,
        webhook_rate_per_s=0.5, webhook_burst=5, log_level="debug")
    ensure_topics(settings)
    write_profiles(settings, [Profile(user_id="ana", display_name=PERSONAL[1],
                                      email=PERSONAL[0], team_id="north")])
    log = tmp / "worker.log"
    worker = start_worker(settings, log)
    try:
        wait_ready(settings, 120, process=worker)
        # Ready means the tables are recovered; the roster topic may still be being read
        # (a new deployment): the API knows ana only once her profile is in.
        wait_until(lambda: call(settings, "/api/kpis/users/ana", BEARER)[0] == 200, 60,
                   "ana's roster entry", log=log)
        yield settings, log
    finally:
        worker.stop()


def call(settings: Settings, path: str, headers: dict[str, str] | None = None,
         body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(settings.web_url + path, data=body, headers=headers or {},
                                     method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize(("path", "headers", "status"), [
    ("/api/kpis/users/ana", {}, 401),
    ("/api/kpis/users/ana", {"X-CRM-Pulse-Key": SCREEN}, 401),   # screens: no personal data
    ("/api/kpis/users/ana", {"Authorization": "Bearer wrong"}, 401),
    ("/api/kpis/users/ana", BEARER, 200),
    ("/api/users/ana/progress", {"X-CRM-Pulse-Key": SCREEN}, 401),
    ("/api/teams", {}, 401),
    ("/api/teams", {"X-CRM-Pulse-Key": "guess"}, 401),
    ("/api/teams", {"X-CRM-Pulse-Key": OTHER_SCREEN}, 200),
    ("/api/teams", BEARER, 200),
    ("/api/kpis/teams/north", {"X-CRM-Pulse-Key": SCREEN}, 403),  # one member: too small
    ("/api/kpis/teams/north", BEARER, 200),
    ("/wall", {}, 401),
    (f"/wall?key={SCREEN}", {}, 200),
    ("/healthz", {}, 200),
])
def test_who_may_read_what(guarded, path: str, headers: dict[str, str], status: int) -> None:
    settings, _ = guarded
    found, _, body = call(settings, path, headers)
    assert found == status, body[:200]
    if status == 401:
        assert orjson.loads(body)["error"] == "unauthorized"


def test_webhook_bursts_beyond_the_limit_get_429(guarded) -> None:
    settings, _ = guarded
    statuses = []
    for _ in range(8):  # burst 5, then 0.5/s: the rest of a quick burst is refused
        body = orjson.dumps(event("ana", occurred_at=datetime.now(UTC).isoformat()))
        signature = sign(WEBHOOK_SECRET, body, int(time.time()))
        status, headers, _ = call(settings, "/webhooks/generic", {
            "Content-Type": "application/json", SIGNATURE_HEADER: signature}, body)
        statuses.append((status, headers.get("Retry-After")))
    assert statuses[:5] == [(202, None)] * 5
    assert (429, "2") in statuses[5:]


def test_logs_carry_no_secrets_or_personal_data(guarded) -> None:
    """Errors of every kind, at debug level: the log names neither credentials nor people."""
    settings, log = guarded
    for path, headers in (("/webhooks/hubspot", {"X-HubSpot-Signature-v3": HUBSPOT_SECRET}),
                          ("/api/kpis/users/ana", {"Authorization": f"Bearer {SCREEN}"}),
                          (f"/wall?key={TOKEN}x", {})):
        call(settings, path, {"Content-Type": "application/json", **headers}, b"[]"
             if path.startswith("/webhooks") else None)
    poison = orjson.dumps({**event("ana"), "occurred_at": "not a date",
                           "attributes": {"contact": PERSONAL[0]}})
    produce(settings, [(b"ana", poison)])
    wait_until(lambda: any(orjson.loads(r.value)["reason"] == "schema:occurred_at"
                           for r in read_topic(settings, settings.topics.dlq)), 30,
               "the poison record in the DLQ")
    text = log.read_text(errors="replace")
    for secret in (TOKEN, SCREEN, OTHER_SCREEN, WEBHOOK_SECRET, HUBSPOT_SECRET, *PERSONAL):
        assert secret not in text, f"{secret!r} found in the worker log"
