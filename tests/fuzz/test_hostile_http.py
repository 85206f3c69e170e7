"""Hostile input, part 2: hostile HTTP requests against a real worker's webhook endpoints.

XML entity attacks on the Salesforce SOAP endpoint, deeply nested JSON, huge numbers, NaN and
invalid UTF-8 on every endpoint, oversized and chunked bodies, hostile credentials and
request lines. Every answer must be a 2xx or a 4xx with a JSON reason, never a 5xx, and come
fast; the worker must stay ready and keep counting afterwards.

Requests go over a raw socket (``http.client.HTTPResponse`` reads the answer), so that
bodies can be chunked, lengths can lie and headers can carry any bytes. Each delivery is
authenticated as its vendor does it (tests/integration/test_webhooks.py), so the body
reaches the adapter.

One worker serves the whole module (a worker per test would take minutes): it is built like
``make_settings`` + ``worker_factory`` in tests/conftest.py build theirs, from the session's
broker and redis-server, and stopped by PID.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import orjson
import pytest
from kafka_tools import produce, read_topic

from app.edge import SIGNATURE_HEADER, sign
from app.embedded import ManagedProcess, free_port, start_worker, wait_ready, wait_until
from app.kafka import ensure_topics
from app.settings import Settings

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parents[1] / "adapters" / "fixtures"
GENERIC_SECRET = "generic-secret"
DYNAMICS_KEY = "dataverse-webhook-key"
HUBSPOT_SECRET = "hubspot-client-secret"
SALESFORCE_SECRET = "salesforce-token"
PIPEDRIVE_USER, PIPEDRIVE_PASSWORD = "pipedrive", "pipedrive-password"
LIMIT = 524_288  # CRM_PULSE_MAX_BODY_BYTES (the default)
JSON_VENDORS = ("generic", "dynamics365", "hubspot", "pipedrive", "salesforce")
XML = "text/xml; charset=utf-8"
PASSWD_MARKERS = (b"root:x:0:0", b"root:*:0:0", b"/bin/bash", b"/usr/sbin/nologin")
FAST_S = 5.0


@dataclass
class Worker:
    settings: Settings
    process: ManagedProcess


@pytest.fixture(scope="module")
def worker(broker: Any, redis_server: Any, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Worker]:
    tmp = tmp_path_factory.mktemp("hostile-http")
    suffix = uuid4().hex[:8]
    settings = Settings(
        _env_file=None, kafka=broker.url, redis=redis_server.url,
        topic_prefix=f"hostile{suffix}.", app_id=f"crm-pulse-hostile-{suffix}",
        web_port=free_port(), data_dir=tmp / "data", partitions=2, session_timeout_s=6,
        max_body_bytes=LIMIT, generic_webhook_secret=GENERIC_SECRET,
        dynamics365_webhook_key=DYNAMICS_KEY, hubspot_client_secret=HUBSPOT_SECRET,
        salesforce_secret=SALESFORCE_SECRET, pipedrive_username=PIPEDRIVE_USER,
        pipedrive_password=PIPEDRIVE_PASSWORD,
    )
    ensure_topics(settings)
    process = start_worker(settings, tmp / "worker.log")
    try:
        wait_ready(settings, 120, process=process)
        yield Worker(settings, process)
    finally:
        process.stop()


# -- A raw HTTP client ------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]
    seconds: float

    def reason(self) -> str:
        """The JSON ``error`` of a 4xx (fails the test when there is none)."""
        try:
            document = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            raise AssertionError(f"{self.status} without a JSON reason: {self.body[:300]!r}"
                                 ) from None
        assert isinstance(document, dict) and document.get("error"), document
        return str(document["error"])

    def __repr__(self) -> str:
        return f"<{self.status} in {self.seconds:.2f}s: {self.body[:400]!r}>"


def exchange(worker: Worker, path: str, body: bytes | Iterable[bytes] = b"",
             headers: dict[str, str | bytes] | None = None, *, method: str = "POST",
             content_type: str | None = "application/json", length: int | None = None,
             timeout: float = 30) -> Answer:
    """One request over a fresh connection.

    ``body`` as bytes is sent with ``Content-Length`` (``length`` overrides the declared
    value); as an iterable, in chunks with ``Transfer-Encoding: chunked`` and no length.
    Header values may be bytes (sent as they are).
    """
    settings = worker.settings
    lines = [f"{method} {path} HTTP/1.1".encode(),
             f"Host: {settings.web_host}:{settings.web_port}".encode(), b"Connection: close"]
    all_headers: dict[str, str | bytes] = {}
    if content_type is not None:
        all_headers["Content-Type"] = content_type
    all_headers.update(headers or {})
    chunked = not isinstance(body, bytes)
    if chunked:
        all_headers["Transfer-Encoding"] = "chunked"
    else:
        assert isinstance(body, bytes)
        all_headers["Content-Length"] = str(len(body) if length is None else length)
    for name, value in all_headers.items():
        if name.lower() == "host":
            lines[1] = b"Host: " + (value if isinstance(value, bytes) else value.encode())
            continue
        lines.append(name.encode() + b": " + (value if isinstance(value, bytes)
                                              else value.encode("latin-1")))
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    started = time.monotonic()
    sock = socket.create_connection((settings.web_host, settings.web_port), timeout=timeout)
    try:
        try:
            sock.sendall(head)
            if chunked:
                for chunk in body:
                    sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sock.sendall(b"0\r\n\r\n")
            else:
                assert isinstance(body, bytes)
                sock.sendall(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early (413) and closed: read that answer
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        content = response.read()
        return Answer(response.status, content, dict(response.getheaders()),
                      time.monotonic() - started)
    finally:
        sock.close()


def authenticated(worker: Worker, vendor: str, body: bytes, content_type: str
                  ) -> tuple[str, dict[str, str | bytes]]:
    """The path and headers with which ``vendor`` would deliver ``body``."""
    path, headers = f"/webhooks/{vendor}", {}
    if vendor == "generic" or (vendor == "salesforce" and not content_type.startswith("text/")):
        secret = GENERIC_SECRET if vendor == "generic" else SALESFORCE_SECRET
        headers[SIGNATURE_HEADER] = sign(secret, body, int(time.time()))
    elif vendor == "salesforce":
        path += f"?token={SALESFORCE_SECRET}"
    elif vendor == "dynamics365":
        path += f"?code={DYNAMICS_KEY}"
    elif vendor == "hubspot":
        timestamp = str(int(time.time() * 1000))
        uri = f"{worker.settings.web_url}/webhooks/hubspot"
        message = f"POST{uri}".encode() + body + timestamp.encode()
        digest = hmac.new(HUBSPOT_SECRET.encode(), message, hashlib.sha256).digest()
        headers["X-HubSpot-Signature-v3"] = base64.b64encode(digest).decode()
        headers["X-HubSpot-Request-Timestamp"] = timestamp
    elif vendor == "pipedrive":
        auth = base64.b64encode(f"{PIPEDRIVE_USER}:{PIPEDRIVE_PASSWORD}".encode()).decode()
        headers["Authorization"] = f"Basic {auth}"
    return path, headers


def deliver(worker: Worker, vendor: str, body: bytes, content_type: str = "application/json"
            ) -> Answer:
    path, headers = authenticated(worker, vendor, body, content_type)
    return exchange(worker, path, body, headers, content_type=content_type)


def assert_handled(answer: Answer) -> None:
    """A 2xx, or a 4xx with a JSON reason; fast."""
    assert answer.status < 500, answer
    if answer.status >= 400:
        answer.reason()
    assert answer.seconds < FAST_S, answer


def assert_ready(worker: Worker) -> None:
    assert worker.process.alive(), worker.process.tail()
    answer = exchange(worker, "/readyz", method="GET", content_type=None)
    assert answer.status == 200, answer
    assert orjson.loads(answer.body)["status"] in ("ready", "degraded")


# -- XML entity attacks on the Salesforce SOAP endpoint ---------------------------------------


class Listener:
    """A TCP port that records whether anybody connected (external DTDs and entities)."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.server.accept()
            except OSError:
                continue
            self.connections += 1
            connection.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.server.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    try:
        yield server
    finally:
        server.close()


def _outbound(inner_id: str = "00T000000000001", doctype: str = "") -> bytes:
    """A Salesforce Outbound Message with ``inner_id`` as the Notification Id (may be an
    entity reference) after an optional DOCTYPE."""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>{doctype}'
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
        '<notifications xmlns="http://soap.sforce.com/2005/09/outbound">'
        f"<OrganizationId>00D000000000001</OrganizationId><Notification><Id>{inner_id}</Id>"
        '<sObject xmlns:sf="urn:sobject.enterprise.soap.sforce.com" xsi:type="sf:Task">'
        f"<sf:Id>{inner_id}</sf:Id><sf:Subject>{inner_id}</sf:Subject>"
        "<sf:CreatedDate>2026-11-23T10:00:00.000Z</sf:CreatedDate>"
        "<sf:LastModifiedDate>2026-11-23T10:00:00.000Z</sf:LastModifiedDate>"
        "</sObject></Notification></notifications></soapenv:Body></soapenv:Envelope>"
    ).encode()


LAUGHS = "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))
XML_ATTACKS: dict[str, str] = {
    "billion-laughs": f'<!DOCTYPE soapenv:Envelope [<!ENTITY lol0 "lol">{LAUGHS}]>|&lol9;',
    "quadratic-blowup": '<!DOCTYPE soapenv:Envelope [<!ENTITY a "' + "x" * 50_000
    + '">]>|' + "&a;" * 4_000,
    "xxe-file": '<!DOCTYPE soapenv:Envelope [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>|&xxe;',
    "xxe-file-netdoc": '<!DOCTYPE soapenv:Envelope [<!ENTITY xxe SYSTEM '
    '"netdoc:///etc/passwd">]>|&xxe;',
    "xxe-http": '<!DOCTYPE soapenv:Envelope [<!ENTITY xxe SYSTEM '
    '"http://127.0.0.1:{port}/secret">]>|&xxe;',
    "parameter-entity": '<!DOCTYPE soapenv:Envelope [<!ENTITY % dtd SYSTEM '
    '"http://127.0.0.1:{port}/evil.dtd"> %dtd;]>|&exfil;',
    "parameter-entity-file": '<!DOCTYPE soapenv:Envelope [<!ENTITY % file SYSTEM '
    '"file:///etc/passwd"><!ENTITY % wrap "<!ENTITY exfil \'%file;\'>"> %wrap;]>|&exfil;',
    "external-dtd": '<!DOCTYPE soapenv:Envelope SYSTEM "http://127.0.0.1:{port}/x.dtd">|x',
    "external-dtd-file": '<!DOCTYPE soapenv:Envelope SYSTEM "file:///etc/passwd">|x',
}


def _attack(name: str, port: int) -> bytes:
    doctype, reference = XML_ATTACKS[name].replace("{port}", str(port)).split("|", 1)
    return _outbound(reference, doctype)


@pytest.mark.parametrize("name", sorted(XML_ATTACKS))
@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_xml_entity_attacks_are_refused_fast(worker: Worker, listener: Listener, name: str,
                                             encoding: str) -> None:
    body = _attack(name, listener.port)
    if encoding != "utf-8":
        body = body.decode().replace('encoding="UTF-8"', f'encoding="{encoding.upper()}"'
                                     ).encode(encoding)
    answer = deliver(worker, "salesforce", body, XML)
    assert answer.status == 400 and answer.reason() == "unmappable", answer
    assert answer.seconds < 2, answer
    assert not any(marker in answer.body for marker in PASSWD_MARKERS), answer
    time.sleep(0.2)
    assert listener.connections == 0, "the worker fetched an external DTD or entity"


def test_xinclude_and_processing_instructions_are_not_followed(worker: Worker) -> None:
    body = _outbound().replace(
        b"<sf:Subject>", b'<sf:Subject><xi:include xmlns:xi="http://www.w3.org/2001/XInclude" '
        b'href="file:///etc/passwd" parse="text"/>').replace(
        b"<soapenv:Envelope", b'<?xml-stylesheet href="file:///etc/passwd"?><soapenv:Envelope')
    answer = deliver(worker, "salesforce", body, XML)
    assert_handled(answer)
    assert not any(marker in answer.body for marker in PASSWD_MARKERS), answer


@pytest.mark.parametrize("body", [
    pytest.param(b"<a>" * 60_000 + b"</a>" * 60_000, id="deep-60k"),
    pytest.param(_outbound().replace(b"<sf:Subject>", b"<sf:Subject>" + b"<x>" * 50_000
                                     + b"</x>" * 50_000), id="deep-in-a-field"),
    pytest.param(b'<?xml version="1.0"?><a ' + b" ".join(b"a%d='x'" % i for i in range(40_000))
                 + b"/>", id="many-attributes"),
    pytest.param(_outbound().replace(b"<Notification>", b"<Notification>" * 2, 1), id="nested"),
    pytest.param(_outbound().replace(b"</sf:Id>", b"\xff\xfe</sf:Id>"), id="invalid-utf8"),
    pytest.param(_outbound().replace(b"</sf:Id>", b"&#0;</sf:Id>"), id="nul-reference"),
    pytest.param(_outbound()[: len(_outbound()) // 2], id="truncated"),
    pytest.param(b"", id="empty"),
])
def test_malformed_soap_is_handled(worker: Worker, body: bytes) -> None:
    assert_handled(deliver(worker, "salesforce", body, XML))


def test_the_dead_letters_never_carry_etc_passwd(worker: Worker) -> None:
    """Refused XML bodies are dead-lettered as they came: with the entity declarations,
    never with what they would have expanded to."""
    for name in ("xxe-file", "parameter-entity-file", "external-dtd-file"):
        assert deliver(worker, "salesforce", _attack(name, 9), XML).status == 400
    letters = [orjson.loads(record.value)
               for record in read_topic(worker.settings, worker.settings.topics.dlq)]
    salesforce = [letter for letter in letters if letter["source"] == "salesforce"]
    assert salesforce, "the refused XML bodies are dead-lettered"
    for letter in salesforce:
        original = base64.b64decode(letter["original_b64"])
        assert not any(m in original or m in letter["message"].encode() for m in PASSWD_MARKERS)


# -- Hostile JSON on every endpoint -----------------------------------------------------------


def _deep(levels: int, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return opener * levels + closer * levels


NOT_JSON: dict[str, bytes] = {
    "deep-100k-arrays": _deep(100_000),
    "deep-60k-objects": b'{"a":' * 60_000 + b"1" + b"}" * 60_000,
    "nan": b'{"x": NaN}',
    "nan-bare": b"NaN",
    "infinity": b"[Infinity, -Infinity]",
    "huge-number": b"[1" + b"0" * 400 + b"]",
    "exponent": b"[1e999]",
    "invalid-utf8": b'{"x": "\xff\xfe\xfd"}',
    "overlong-utf8": b'{"x": "\xc0\xaf"}',
    "surrogate-utf8": b'{"x": "\xed\xa0\x80"}',
    "lone-surrogate-escape": b'{"x": "\\ud800"}',
    "bom": b"\xef\xbb\xbf[]",
    "empty": b"",
    "truncated": b'[{"a": 1',
}


@pytest.mark.parametrize("name", sorted(NOT_JSON))
@pytest.mark.parametrize("vendor", JSON_VENDORS)
def test_bodies_that_are_not_json_are_400_with_a_reason(worker: Worker, vendor: str,
                                                        name: str) -> None:
    answer = deliver(worker, vendor, NOT_JSON[name])
    if vendor == "dynamics365" and name == "bom":
        assert_handled(answer)  # Dataverse may send a BOM: it is stripped
        return
    assert answer.status == 400, answer
    assert answer.reason() in ("invalid_json", "unmappable"), answer
    assert answer.seconds < FAST_S, answer


def _event(**fields: Any) -> dict[str, Any]:
    return {"event_id": f"hostile-{uuid4().hex}", "user_id": "hostile-user", "type": "call",
            "occurred_at": datetime.now(UTC).isoformat(), **fields}


SHAPES: dict[str, bytes] = {  # a body each vendor accepts, with %s where hostile values go
    "generic": orjson.dumps(_event(attributes={"x": "%s"}, amount=1)).replace(b'"%s"', b"%s"),
    "dynamics365": b'{"MessageName":"Create","PrimaryEntityName":"phonecall","PrimaryEntityId":'
                   b'"9f3b1a2c-0000-4000-8000-000000000001","OperationId":%s,'
                   b'"OperationCreatedOn":"/Date(1795435200000)/","InputParameters":[{"key":'
                   b'"Target","value":{"Attributes":[{"key":"ownerid","value":%s}]}}]}',
    "hubspot": b'[{"subscriptionType":"contact.creation","portalId":1,"eventId":%s,"objectId":'
               b'7,"occurredAt":1795435200000,"sourceId":"userId:1"},%s]',
    "pipedrive": b'{"meta":{"version":"2.0","entity":"deal","action":%s,"id":%s,"entity_id":1,'
                 b'"company_id":2,"timestamp":"2026-11-23T10:00:00Z"},"data":{"value":%s}}',
    "salesforce": b'[{"ChangeEventHeader":{"entityName":"Task","changeType":"CREATE",'
                  b'"commitTimestamp":%s,"transactionKey":"t-1","sequenceNumber":%s,'
                  b'"recordIds":["00T000000000001"]}},%s]',
}
HOSTILE_VALUES: dict[str, bytes] = {
    "deep-300": _deep(300),
    "deep-1000": _deep(1000),
    "deep-objects-300": b'{"a":' * 300 + b"1" + b"}" * 300,
    "uint64-max": b"18446744073709551615",
    "beyond-uint64": b"18446744073709551616",
    "beyond-int64": b"-9223372036854775809",
    "1e308": b"1e308",
    "negative-zero": b"-0.0",
    "nul": b'"\\u0000"',
    "long-string": b'"' + b"x" * 100_000 + b'"',
}


@pytest.mark.parametrize("value", sorted(HOSTILE_VALUES))
@pytest.mark.parametrize("vendor", JSON_VENDORS)
def test_hostile_values_inside_a_vendor_body_never_5xx(worker: Worker, vendor: str,
                                                       value: str) -> None:
    """A well-formed vendor body with a hostile value in each slot: 2xx (the element is
    counted or dead-lettered) or a 4xx with a reason, never a 5xx."""
    body = SHAPES[vendor].replace(b"%s", HOSTILE_VALUES[value])
    answer = deliver(worker, vendor, body)
    assert_handled(answer)


# -- Oversized bodies -------------------------------------------------------------------------

ENDPOINTS = [(vendor, "application/json") for vendor in JSON_VENDORS] + [("salesforce", XML)]


def _padded(content_type: str, size: int) -> bytes:
    """A syntactically plausible body of ``size`` bytes."""
    if content_type == XML:
        head, tail = b"<a>", b"</a>"
    else:
        head, tail = b'["', b'"]'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def _chunks(total: int, size: int = 65_536) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        chunk = b"x" * min(size, total - sent)
        sent += len(chunk)
        yield chunk


@pytest.mark.parametrize(("vendor", "content_type"), ENDPOINTS)
def test_a_body_over_the_limit_is_413(worker: Worker, vendor: str, content_type: str) -> None:
    body = _padded(content_type, LIMIT + 1)
    path, headers = authenticated(worker, vendor, body, content_type)
    answer = exchange(worker, path, body, headers, content_type=content_type)
    assert (answer.status, answer.reason()) == (413, "too_large"), answer


@pytest.mark.parametrize(("vendor", "content_type"), ENDPOINTS)
def test_a_declared_length_over_the_limit_is_413_without_reading(
        worker: Worker, vendor: str, content_type: str) -> None:
    """``Content-Length: 10^12`` and no body at all: refused at once, not awaited."""
    path, headers = authenticated(worker, vendor, b"", content_type)
    answer = exchange(worker, path, b"", headers, content_type=content_type,
                      length=10**12, timeout=10)
    assert (answer.status, answer.reason()) == (413, "too_large"), answer
    assert answer.seconds < 2, answer


@pytest.mark.parametrize("total", [LIMIT + 1, 3 * LIMIT, 16 * LIMIT],
                         ids=["just-over", "between-limit-and-1mib", "8mib"])
@pytest.mark.parametrize(("vendor", "content_type"), ENDPOINTS)
def test_a_chunked_body_without_length_over_the_limit_is_413(
        worker: Worker, vendor: str, content_type: str, total: int) -> None:
    path, headers = authenticated(worker, vendor, b"", content_type)
    answer = exchange(worker, path, _chunks(total), headers, content_type=content_type)
    assert (answer.status, answer.reason()) == (413, "too_large"), answer
    assert answer.seconds < 15, answer


def test_a_chunked_body_within_the_limit_is_accepted(worker: Worker) -> None:
    body = orjson.dumps(_event())
    path, headers = authenticated(worker, "generic", body, "application/json")
    answer = exchange(worker, path, iter([body[:10], body[10:]]), headers)
    assert answer.status == 202, answer


# -- Hostile credentials, headers and request lines ------------------------------------------


@pytest.mark.parametrize(("path", "headers", "content_type"), [
    pytest.param("/webhooks/dynamics365?code=%ff%fe", {}, "application/json",
                 id="dynamics-key-invalid-utf8-query"),
    pytest.param("/webhooks/dynamics365", {"X-CRM-Pulse-Key": b"\xff\xfe"}, "application/json",
                 id="dynamics-key-invalid-utf8-header"),
    pytest.param("/webhooks/dynamics365?code=%C3%A4", {}, "application/json",
                 id="dynamics-key-non-ascii"),
    pytest.param("/webhooks/salesforce?token=%ff%fe", {}, XML,
                 id="salesforce-token-invalid-utf8"),
    pytest.param("/webhooks/salesforce?token=%C3%A4", {}, XML, id="salesforce-token-non-ascii"),
    pytest.param("/webhooks/salesforce", {SIGNATURE_HEADER: b"t=\xff,v1=\xfe"},
                 "application/json", id="salesforce-signature-bytes"),
    pytest.param("/webhooks/generic", {SIGNATURE_HEADER: "t=" + "9" * 5000 + ",v1=" + "a" * 64},
                 "application/json", id="generic-signature-huge-timestamp"),
    pytest.param("/webhooks/generic", {SIGNATURE_HEADER: b"t=1,v1=\xff" * 10},
                 "application/json", id="generic-signature-bytes"),
    pytest.param("/webhooks/hubspot", {"X-HubSpot-Signature-v3": b"\xff\xfe",
                                       "X-HubSpot-Request-Timestamp": b"\xff"},
                 "application/json", id="hubspot-signature-bytes"),
    pytest.param("/webhooks/hubspot", {"X-HubSpot-Signature-v3": "a",
                                       "X-HubSpot-Request-Timestamp": "9" * 15},
                 "application/json", id="hubspot-timestamp-huge"),
    pytest.param("/webhooks/hubspot", {"X-HubSpot-Signature": b"\xff",
                                       "X-HubSpot-Signature-Version": b"v\xff"},
                 "application/json", id="hubspot-legacy-bytes"),
    pytest.param("/webhooks/pipedrive", {"Authorization": b"Basic \xff\xfe"},
                 "application/json", id="pipedrive-auth-bytes"),
    pytest.param("/webhooks/pipedrive", {"Authorization": "Basic "
                                         + base64.b64encode(b"\xff:\xfe").decode()},
                 "application/json", id="pipedrive-auth-invalid-utf8"),
    pytest.param("/webhooks/pipedrive", {"Authorization": "Basic " + "A" * 8000},
                 "application/json", id="pipedrive-auth-huge"),
    pytest.param("/webhooks/%ff%fe", {}, "application/json", id="vendor-invalid-utf8"),
    pytest.param("/webhooks/..%2f..%2fetc%2fpasswd", {}, "application/json",
                 id="vendor-traversal"),
    pytest.param("/webhooks/generic", {"Host": b"exa mple\xff"}, "application/json",
                 id="host-garbage"),
    pytest.param("/webhooks/hubspot", {"Host": "[::1"}, "application/json", id="host-bad-ipv6"),
    pytest.param("/webhooks/hubspot", {"Host": "a:b:c"}, "application/json", id="host-colons"),
    pytest.param("/webhooks/generic", {}, "application/json; charset=utf-16; x=\xff",
                 id="content-type-params"),
    pytest.param("/webhooks/generic", {}, "application/x-www-form-urlencoded",
                 id="content-type-form"),
])
def test_hostile_request_metadata_never_5xx(worker: Worker, path: str,
                                            headers: dict[str, str | bytes],
                                            content_type: str) -> None:
    body = b'[{"x": 1}]' if content_type != XML else _outbound()
    answer = exchange(worker, path, body, headers, content_type=content_type)
    assert_handled(answer)
    assert answer.status != 202, answer  # none of these is authentic


# -- Afterwards -------------------------------------------------------------------------------


def test_zz_the_worker_is_still_healthy_and_counting(worker: Worker) -> None:
    """After everything above: ready, and a signed canonical event still counts."""
    assert_ready(worker)
    marker = _event(user_id="hostile-survivor")
    answer = deliver(worker, "generic", orjson.dumps(marker))
    assert answer.status == 202, answer

    def counted() -> bool:
        answer = exchange(worker, "/api/kpis/users/hostile-survivor?period=day", method="GET",
                          content_type=None)
        return answer.status == 200 and orjson.loads(answer.body)["kpis"]["calls"]["value"] == 1

    wait_until(counted, 30, "the marker event counted")
    assert_ready(worker)


def test_a_poison_record_on_the_topic_does_not_stop_a_worker(make_settings: Any,
                                                             worker_factory: Any) -> None:
    """FINDING (the worst one): ``crm.activities`` takes records from any producer. An array
    record whose rejected element nests deeper than orjson re-encodes (255 levels) makes
    ``Ingestor.fold`` raise (``_park`` -> ``orjson.dumps``) outside the pipeline's guards:
    the ingest agent crashes, Faust restarts it, and the whole batch holding the record is
    lost (not counted, not dead-lettered) while its offsets end up committed; afterwards the
    worker ignores SIGTERM. The element must be dead-lettered (``schema:event``, index 0),
    the rest of the record and the batch must count."""
    settings = make_settings(partitions=2)
    process = worker_factory(settings)
    now = datetime.now(UTC).isoformat()
    poison = b"[" + _deep(300) + b"," + orjson.dumps(_event(user_id="poisoned", occurred_at=now)
                                                     ) + b"]"
    produce(settings, [(b"poisoned", poison)])
    produce(settings, [(b"after-poison", orjson.dumps(_event(user_id="after-poison",
                                                             occurred_at=now)))])

    def calls(user_id: str) -> int | None:
        answer = exchange(Worker(settings, process), f"/api/kpis/users/{user_id}?period=day",
                          method="GET", content_type=None)
        return orjson.loads(answer.body)["kpis"]["calls"]["value"] if answer.status == 200 \
            else None

    wait_until(lambda: calls("after-poison") == 1 and calls("poisoned") == 1, 30,
               "the records after the poison record counted", process=process)
    letters = [orjson.loads(r.value) for r in read_topic(settings, settings.topics.dlq)]
    assert [(letter["reason"], letter["index"]) for letter in letters] == [("schema:event", 0)]
    assert_ready(Worker(settings, process))
