"""CRM webhooks through the real HTTP server to the real broker and the worker's KPIs.

The vendors' documented payloads (tests/adapters/fixtures, sources in each SOURCES.md) are
posted as they are, with their timestamps moved to now so that they count today; each is
signed or authenticated as that vendor does it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import orjson
import pytest
from factories import event
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from kafka_tools import read_topic

from app.edge import SIGNATURE_HEADER, sign
from app.embedded import free_port, start_broker, start_worker, wait_ready, wait_until
from app.kafka import ensure_topics
from app.roster import Profile, write_profiles
from app.settings import Settings

pytestmark = pytest.mark.integration
FIXTURES = Path(__file__).parents[1] / "adapters" / "fixtures"
DYNAMICS_KEY = "dataverse-webhook-key"
HUBSPOT_SECRET = "hubspot-client-secret"
GENERIC_SECRET = "generic-secret"
SALESFORCE_SECRET = "salesforce-token"
PIPEDRIVE_USER, PIPEDRIVE_PASSWORD = "pipedrive", "pipedrive-password"


@pytest.fixture(scope="module")
def hooks(broker, tmp_path_factory) -> Any:
    tmp: Path = tmp_path_factory.mktemp("webhooks")
    suffix = uuid4().hex[:8]
    settings = Settings(
        _env_file=None, kafka=broker.url, topic_prefix=f"hooks{suffix}.",
        app_id=f"hooks-{suffix}", web_port=free_port(), data_dir=tmp, partitions=4,
        session_timeout_s=6, generic_webhook_secret=GENERIC_SECRET,
        dynamics365_webhook_key=DYNAMICS_KEY, hubspot_client_secret=HUBSPOT_SECRET,
        salesforce_secret=SALESFORCE_SECRET, pipedrive_username=PIPEDRIVE_USER,
        pipedrive_password=PIPEDRIVE_PASSWORD,
    )
    ensure_topics(settings)
    write_profiles(settings, [
        # Dataverse sends lower-case GUIDs; the roster may hold them in any case.
        Profile(user_id="dora", team_id="north", role="sales_rep", timezone="UTC",
                dynamics365_id="75C2DD85-E89E-E711-8122-000D3AA2331C"),
        Profile(user_id="hugo", team_id="north", role="sales_rep", timezone="UTC",
                hubspot_user_id="9586504"),
        Profile(user_id="sara", team_id="south", role="sales_rep", timezone="UTC",
                salesforce_id="005RM000001vI4Q"),
        Profile(user_id="piet", team_id="south", role="sales_rep", timezone="UTC",
                pipedrive_user_id="12415231"),
    ])
    worker = start_worker(settings, tmp / "worker.log")
    try:
        wait_ready(settings, 120, process=worker)
        # Ready means the tables are recovered; the roster topic may still be being read
        # (a new deployment), and the adapters map vendor owners through the roster.
        for user_id in ("dora", "hugo", "sara", "piet"):
            wait_until(lambda user_id=user_id: known(settings, user_id), 60,
                       f"{user_id}'s roster entry", process=worker)
        yield settings
    finally:
        worker.stop()


def post(settings: Settings, path: str, body: bytes, headers: dict[str, str] | None = None,
         content_type: str = "application/json") -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(settings.web_url + path, data=body, method="POST")
    request.add_header("Content-Type", content_type)
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


def known(settings: Settings, user_id: str) -> bool:
    """Whether the worker's API knows ``user_id`` (a roster entry or data)."""
    try:
        with urllib.request.urlopen(f"{settings.web_url}/api/kpis/users/{user_id}",
                                    timeout=15) as response:
            return response.status == 200
    except urllib.error.HTTPError:
        return False


def kpis(settings: Settings, user_id: str) -> dict[str, float]:
    url = f"{settings.web_url}/api/kpis/users/{user_id}?period=day"
    try:
        with urllib.request.urlopen(url, timeout=15) as response:
            body = orjson.loads(response.read())
    except urllib.error.HTTPError:
        return {}
    return {name: kpi["value"] for name, kpi in body["kpis"].items()}


def dead_letters(settings: Settings, vendor: str) -> list[dict[str, Any]]:
    letters = [orjson.loads(r.value) for r in read_topic(settings, settings.topics.dlq)]
    return [letter for letter in letters if letter["source"] == vendor]


def refreshed(payload: Any, moments: Callable[[], int]) -> Any:
    """``payload`` with every documented timestamp moved to now (keeping the format)."""
    if isinstance(payload, list):
        return [refreshed(item, moments) for item in payload]
    if not isinstance(payload, dict):
        return payload
    fresh = {key: refreshed(value, moments) for key, value in payload.items()}
    if isinstance(fresh.get("occurredAt"), int):             # HubSpot, epoch ms
        fresh["occurredAt"] = moments()
    if isinstance(fresh.get("OperationCreatedOn"), str):     # Dataverse, /Date(ms)/
        fresh["OperationCreatedOn"] = f"/Date({moments()})/"
    if isinstance(fresh.get("timestamp_micro"), int):        # Pipedrive v1, epoch us
        fresh["timestamp_micro"] = moments() * 1000
    elif isinstance(fresh.get("timestamp"), str):            # Pipedrive v2, ISO 8601
        fresh["timestamp"] = iso(moments())
    return fresh


def iso(millis: int) -> str:
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="milliseconds")


def now_ms() -> Callable[[], int]:
    """Distinct, increasing epoch milliseconds a minute before now (same order as given)."""
    start = int(time.time() * 1000) - 60_000
    counter = iter(range(start, start + 60_000, 10))
    return lambda: next(counter)


def fixture_json(path: str) -> Any:
    return refreshed(orjson.loads((FIXTURES / path).read_bytes()), now_ms())


def hubspot_v3(settings: Settings, body: bytes) -> dict[str, str]:
    """HubSpot's v3 signature: base64 HMAC-SHA256 of method + URI + body + timestamp."""
    timestamp = str(int(time.time() * 1000))
    uri = f"{settings.web_url}/webhooks/hubspot"
    message = f"POST{uri}".encode() + body + timestamp.encode()
    digest = hmac.new(HUBSPOT_SECRET.encode(), message, hashlib.sha256).digest()
    return {"X-HubSpot-Signature-v3": base64.b64encode(digest).decode(),
            "X-HubSpot-Request-Timestamp": timestamp}


def test_dataverse_update_counts_once_for_the_mapped_owner(hooks: Settings) -> None:
    body = orjson.dumps(fixture_json("dynamics365/contact_update_learn.json"))
    path = f"/webhooks/dynamics365?code={DYNAMICS_KEY}"
    status, answer, _ = post(hooks, path, body)
    assert status == 202, answer
    assert orjson.loads(answer) == {"accepted": 1, "dead_lettered": 0, "ignored": 0}
    wait_until(lambda: kpis(hooks, "dora").get("records_fixed") == 1, 30, "dora's update")
    assert post(hooks, path, body)[0] == 202  # Dataverse retries the same context
    marker = orjson.dumps(fixture_json("dynamics365/contact_update_learn.json")).replace(
        b'"OperationId":"4af1', b'"OperationId":"5af1')  # another operation on the contact
    assert post(hooks, path, marker)[0] == 202
    wait_until(lambda: kpis(hooks, "dora").get("records_fixed") == 2, 30, "the second update")


def test_dataverse_key_is_required(hooks: Settings) -> None:
    body = orjson.dumps(fixture_json("dynamics365/contact_update_learn.json"))
    status, answer, _ = post(hooks, "/webhooks/dynamics365?code=wrong", body)
    assert (status, orjson.loads(answer)["error"]) == (401, "bad_credentials")


def test_hubspot_batch_maps_every_kpi_and_a_retry_counts_once(hooks: Settings) -> None:
    body = orjson.dumps(fixture_json("hubspot/constructed_events.json"))
    status, answer, _ = post(hooks, "/webhooks/hubspot", body, hubspot_v3(hooks, body))
    assert status == 202, answer
    expected = {"calls": 1, "meetings": 1, "emails": 1, "activities": 4, "opportunities": 1,
                "deals_won": 1, "deals_closed": 2, "cases_resolved": 1, "records_fixed": 1}

    def hugo_matches() -> bool:
        values = kpis(hooks, "hugo")
        return {name: values.get(name) for name in expected} == expected

    wait_until(hugo_matches, 30, f"hugo's KPIs {expected}")
    retry = orjson.dumps([dict(e, attemptNumber=1) for e in orjson.loads(body)])
    assert post(hooks, "/webhooks/hubspot", retry, hubspot_v3(hooks, retry))[0] == 202
    call = next(e for e in orjson.loads(body) if e.get("objectTypeId") == "0-48")
    marker = orjson.dumps([dict(call, objectId=8999, eventId=9999)])  # another call
    assert post(hooks, "/webhooks/hubspot", marker, hubspot_v3(hooks, marker))[0] == 202
    wait_until(lambda: kpis(hooks, "hugo").get("calls") == 2, 30, "the marker call")
    assert hugo_matches() is False and kpis(hooks, "hugo")["deals_won"] == 1


def test_hubspot_example_naming_no_user_is_dead_lettered(hooks: Settings) -> None:
    body = orjson.dumps(fixture_json("hubspot/webhooks_api_example.json"))
    status, answer, _ = post(hooks, "/webhooks/hubspot", body, hubspot_v3(hooks, body))
    assert (status, orjson.loads(answer)["dead_lettered"]) == (202, 2)
    wait_until(lambda: len(dead_letters(hooks, "hubspot")) >= 2, 30, "2 hubspot dead letters")
    letters = dead_letters(hooks, "hubspot")
    assert {letter["reason"] for letter in letters} == {"unknown_user"}
    assert all(re.fullmatch(r"webhook:hubspot:[0-9a-f]{24}:\d", letter["dlq_id"])
               for letter in letters)


def test_hubspot_signature_is_checked(hooks: Settings) -> None:
    body = orjson.dumps(fixture_json("hubspot/constructed_events.json"))
    headers = hubspot_v3(hooks, body)
    status, answer, _ = post(hooks, "/webhooks/hubspot", body + b" ", headers)
    assert (status, orjson.loads(answer)["error"]) == (401, "bad_signature")


def test_authenticated_body_of_the_wrong_shape_is_400_and_dead_lettered(hooks: Settings) -> None:
    body = b'{"not": "a hubspot array"}'
    status, answer, _ = post(hooks, "/webhooks/hubspot", body, hubspot_v3(hooks, body))
    assert (status, orjson.loads(answer)["error"]) == (400, "unmappable")
    wait_until(lambda: any(letter["index"] is None for letter in dead_letters(hooks, "hubspot")),
               30, "the refused body in the DLQ")


def outbound_message(path: str) -> bytes:
    """A Salesforce Outbound Message fixture with its dates moved to now (equal dates stay
    equal: CreatedDate = LastModifiedDate marks a new record)."""
    moments, moved = now_ms(), {}

    def now_for(match: re.Match[bytes]) -> bytes:
        if match[0] not in moved:
            moved[match[0]] = iso(moments()).replace("+00:00", "Z").encode()
        return moved[match[0]]

    return re.sub(rb"20\d\d-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", now_for,
                  (FIXTURES / path).read_bytes())


def test_salesforce_outbound_message_gets_the_soap_ack_and_counts(hooks: Settings) -> None:
    body = outbound_message("salesforce/outbound_tasks.xml")
    path = f"/webhooks/salesforce?token={SALESFORCE_SECRET}"
    status, answer, headers = post(hooks, path, body, content_type="text/xml")
    assert status == 200, answer
    assert headers["Content-Type"].startswith("text/xml")
    assert b"<Ack>true</Ack>" in answer
    expected = {"calls": 1, "emails": 1, "activities": 2}  # completions do not count again

    def sara_matches() -> bool:
        values = kpis(hooks, "sara")  # roster: the 15-character form of the OwnerId
        return {name: values.get(name) for name in expected} == expected

    wait_until(sara_matches, 30, f"sara's KPIs {expected}")
    assert post(hooks, path, outbound_message("salesforce/outbound_tasks.xml"),
                content_type="text/xml")[0] == 200  # Salesforce resends until acked
    unsigned = post(hooks, "/webhooks/salesforce?token=guess", body, content_type="text/xml")
    assert (unsigned[0], orjson.loads(unsigned[1])["error"]) == (401, "bad_credentials")
    marker = orjson.dumps(event("sara", occurred_at=datetime.now(UTC).isoformat()))
    signature = sign(GENERIC_SECRET, marker, int(time.time()))
    assert post(hooks, "/webhooks/generic", marker, {SIGNATURE_HEADER: signature})[0] == 202
    wait_until(lambda: kpis(hooks, "sara").get("calls") == 2, 30, "the marker call")
    assert kpis(hooks, "sara")["emails"] == 1


def test_pipedrive_v1_and_v2_with_basic_auth(hooks: Settings) -> None:
    auth = base64.b64encode(f"{PIPEDRIVE_USER}:{PIPEDRIVE_PASSWORD}".encode()).decode()
    headers = {"Authorization": f"Basic {auth}"}
    for name in ("v2_activity_create.json", "v1_deal_added.json", "v1_deal_updated_won.json"):
        body = orjson.dumps(fixture_json(f"pipedrive/{name}"))
        status, answer, _ = post(hooks, "/webhooks/pipedrive", body, headers)
        assert (status, orjson.loads(answer)["accepted"]) == (202, 1), name
    expected = {"meetings": 1, "opportunities": 1, "deals_won": 1, "won_amount": 100}
    wait_until(lambda: {n: kpis(hooks, "piet").get(n) for n in expected} == expected, 30,
               f"piet's KPIs {expected}")
    wrong = {"Authorization": "Basic " + base64.b64encode(b"pipedrive:nope").decode()}
    status, answer, _ = post(hooks, "/webhooks/pipedrive", b"{}", wrong)
    assert (status, orjson.loads(answer)["error"]) == (401, "bad_credentials")


def test_unknown_vendor_is_404(hooks: Settings) -> None:
    status, answer, _ = post(hooks, "/webhooks/zoho", b"{}")
    assert (status, orjson.loads(answer)["error"]) == (404, "unknown_vendor")


def test_unconfigured_vendor_is_refused(broker, tmp_path: Path) -> None:
    """Without credentials a vendor endpoint is off (403), unless explicitly unsigned."""
    settings = Settings(_env_file=None, kafka=broker.url, topic_prefix=f"off{uuid4().hex[:8]}.",
                        web_port=free_port(), data_dir=tmp_path, partitions=1,
                        session_timeout_s=6)
    ensure_topics(settings)
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        wait_ready(settings, 120, process=worker)
        status, answer, _ = post(settings, "/webhooks/hubspot", b"[]")
        assert (status, orjson.loads(answer)["error"]) == (403, "not_configured")
    finally:
        worker.stop()


def test_broker_outage_answers_503_and_the_retry_counts_once(redis_server, tmp_path: Path
                                                             ) -> None:
    """A paused broker cannot acknowledge: 503 + Retry-After; the CRM's retry counts once."""
    broker = start_broker(tmp_path / "broker")
    settings = Settings(_env_file=None, kafka=broker.url, redis=redis_server.url,
                        web_port=free_port(), data_dir=tmp_path, partitions=2,
                        session_timeout_s=6, send_timeout_s=2,
                        generic_webhook_secret=GENERIC_SECRET)
    worker = None
    try:
        ensure_topics(settings)
        write_profiles(settings, [Profile(user_id=u, team_id="t", timezone="UTC")
                                  for u in ("ana", "ben")])
        worker = start_worker(settings, tmp_path / "worker.log")
        wait_ready(settings, 120, process=worker)
        now = datetime.now(UTC).isoformat()
        batch = orjson.dumps([event(user, occurred_at=now) for user in ("ana", "ben", "ana")])

        def send() -> int:
            signature = sign(GENERIC_SECRET, batch, int(time.time()))
            return post(settings, "/webhooks/generic", batch, {SIGNATURE_HEADER: signature})[0]

        os.kill(broker.process.pid, signal.SIGSTOP)
        try:
            status, answer, headers = post(
                settings, "/webhooks/generic", batch,
                {SIGNATURE_HEADER: sign(GENERIC_SECRET, batch, int(time.time()))})
        finally:
            os.kill(broker.process.pid, signal.SIGCONT)
        assert (status, orjson.loads(answer)["error"]) == (503, "broker_unavailable")
        assert headers["Retry-After"] == "5"
        wait_until(lambda: send() == 202, 60, "the retry accepted once the broker is back")
        wait_until(lambda: (kpis(settings, "ana").get("calls"), kpis(settings, "ben").get(
            "calls")) == (2, 1), 60, "the batch counted")
        assert send() == 202  # a late duplicate delivery changes nothing
        probe = orjson.dumps(event("ben", occurred_at=now))
        assert post(settings, "/webhooks/generic", probe, {
            SIGNATURE_HEADER: sign(GENERIC_SECRET, probe, int(time.time()))})[0] == 202
        wait_until(lambda: kpis(settings, "ben").get("calls") == 2, 60, "the probe")
        assert kpis(settings, "ana")["calls"] == 2
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()


def authenticated(settings: Settings, vendor: str, body: bytes, content_type: str
                  ) -> tuple[str, dict[str, str]]:
    """The path and headers with which ``vendor`` would deliver ``body``."""
    path, headers = f"/webhooks/{vendor}", {}
    if vendor == "generic":
        headers[SIGNATURE_HEADER] = sign(GENERIC_SECRET, body, int(time.time()))
    elif vendor == "salesforce" and content_type == "application/json":
        headers[SIGNATURE_HEADER] = sign(SALESFORCE_SECRET, body, int(time.time()))
    elif vendor == "salesforce":
        path += f"?token={SALESFORCE_SECRET}"
    elif vendor == "dynamics365":
        path += f"?code={DYNAMICS_KEY}"
    elif vendor == "hubspot":
        headers.update(hubspot_v3(settings, body))
    elif vendor == "pipedrive":
        auth = base64.b64encode(f"{PIPEDRIVE_USER}:{PIPEDRIVE_PASSWORD}".encode()).decode()
        headers["Authorization"] = f"Basic {auth}"
    return path, headers


SEEDS = [(vendor, path.read_bytes(), "text/xml" if path.suffix == ".xml" else "application/json")
         for vendor in ("dynamics365", "hubspot", "salesforce", "pipedrive")
         for path in sorted((FIXTURES / vendor).glob("*.[jx][sm][ol]*"))]


@st.composite
def mutated_deliveries(draw: st.DrawFn) -> tuple[str, bytes, str]:
    vendor, seed, content_type = draw(st.sampled_from(
        [*SEEDS, ("generic", orjson.dumps(event("ana")), "application/json")]))
    body = bytearray(seed)
    for _ in range(draw(st.integers(0, 6))):
        where = draw(st.integers(0, max(len(body) - 1, 0)))
        operation = draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
        if operation == "flip" and body:
            body[where] ^= 1 << draw(st.integers(0, 7))
        elif operation == "cut":
            del body[where:where + draw(st.integers(1, 64))]
        elif operation == "insert":
            body[where:where] = draw(st.sampled_from(
                [b"\xff\xfe", b"[[[[[[[[", b"1e999999", b"NaN", b"null", b'"', b"{}", b"-0",
                 b"<!ENTITY x SYSTEM 'file:///etc/passwd'>", b"99999999999999999999999"]))
        elif operation == "truncate":
            del body[where:]
    return vendor, bytes(body), content_type


@hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(delivery=st.one_of(
    mutated_deliveries(),
    st.tuples(st.sampled_from(["generic", "dynamics365", "hubspot", "salesforce",
                               "pipedrive"]), st.binary(max_size=2048),
              st.sampled_from(["application/json", "text/xml"]))))
def test_fuzzed_deliveries_never_get_a_5xx(hooks: Settings,
                                           delivery: tuple[str, bytes, str]) -> None:
    """Authenticated random and mutated bodies: a 2xx or a 4xx with a reason, never a 5xx."""
    vendor, body, content_type = delivery
    path, headers = authenticated(hooks, vendor, body, content_type)
    status, answer, _ = post(hooks, path, body, headers, content_type)
    assert status < 500, (status, answer[:300])
    if status >= 400:
        assert orjson.loads(answer)["error"]


def test_the_worker_survived_the_fuzzing(hooks: Settings) -> None:
    with urllib.request.urlopen(hooks.web_url + "/readyz", timeout=15) as response:
        assert response.status == 200
    marker = orjson.dumps(event("fuzz-survivor", occurred_at=datetime.now(UTC).isoformat()))
    path, headers = authenticated(hooks, "generic", marker, "application/json")
    assert post(hooks, path, marker, headers)[0] == 202
    wait_until(lambda: kpis(hooks, "fuzz-survivor").get("calls") == 1, 30, "the marker")
