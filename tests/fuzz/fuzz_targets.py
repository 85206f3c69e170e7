"""Coverage-guided fuzz targets (atheris) for everything that reads hostile input.

Each target takes the raw bytes libFuzzer made and asserts the component's contract: only the
documented exceptions may escape (``Rejection`` from the decoder, ``EdgeError`` from an
adapter's ``parse``, ``ConfigError`` from the config loader, nothing at all from
``Ingestor.fold``); anything else is a crash, and libFuzzer saves the input as
``crash-<sha1>``.

By hand (from the repository root)::

    python tests/fuzz/fuzz_targets.py <target> -max_total_time=60 [CORPUS_DIR ...]

Targets: see :data:`TARGETS` (``python tests/fuzz/fuzz_targets.py --list``). Without a corpus
directory a temporary one is created and filled with :func:`seeds` (the vendor fixtures of
tests/adapters/fixtures, canonical events and configs, and known hostile inputs). Useful
libFuzzer flags: ``-timeout=10`` (an input running longer is a hang), ``-rss_limit_mb=2048``,
``-runs=N``, ``-artifact_prefix=DIR/``. ``tests/fuzz/test_fuzz_targets.py`` runs every target
for a bounded time in CI.

The targets are plain functions, so the pytest suite calls them directly too (without
atheris and without coverage instrumentation).
"""

from __future__ import annotations

import contextlib
import copy
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "adapters" / "fixtures"
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))
INSTRUMENTED = ("app", "agents", "schemas", "yaml", "defusedxml")
"""Packages whose code gives libFuzzer coverage feedback when run under atheris."""


def _instrumentation() -> contextlib.AbstractContextManager[Any]:
    """Instrument the project's modules when this file runs as the fuzzer (not in pytest)."""
    if __name__ != "__main__":
        return contextlib.nullcontext()
    # Heavy dependencies first, uninstrumented: only our code (and the YAML and XML readers
    # it relies on) needs coverage feedback, and instrumenting Faust would be slow.
    import aiohttp  # noqa: F401
    import atheris
    import faust  # noqa: F401
    import multidict  # noqa: F401
    import orjson  # noqa: F401
    import pydantic  # noqa: F401
    import pydantic_settings  # noqa: F401

    return atheris.instrument_imports(include=list(INSTRUMENTED))


with _instrumentation():
    import orjson
    from multidict import CIMultiDict

    from agents.ingest import Ingestor, Record, UserInfo, partition_of
    from app.adapters import adapters
    from app.adapters.base import Adapter, Counts, Delivery, Parsed
    from app.config import ConfigError, PulseConfig, load_config, parse_config
    from app.edge import EdgeError
    from app.settings import DEFAULT_CONFIG, Settings
    from app.webhooks import OwnerDirectory, route
    from schemas.activity import ACTIONS, REQUIRED, Rejection, decode_events, validate_event

PARTITIONS = 4
ARRIVAL = 1_795_435_200.0  # 2026-11-23T12:00:00Z, the broker timestamp of every fuzzed record
ARRIVAL_SHIFTS = (0.0, 3600.0, 86_400.0, 8 * 86_400.0, -86_400.0, 40 * 86_400.0,
                  4_102_444_800.0 - ARRIVAL, 946_684_799.0 - ARRIVAL)
"""Same day, an hour and a day later (late), past the dedup horizon, a day early (future
events), 40 days, the last accepted second (2100), before 2000 (``bad_timestamp``)."""
RECEIVED_AT = ARRIVAL
MAX_EVENT_BYTES = 65_536
ROSTER = [  # the owners of the vendor fixtures, so that mapped events reach a user
    {"user_id": "alice", "team_id": "north", "role": "sales_rep", "timezone": "Europe/Berlin",
     "dynamics365_id": "75C2DD85-E89E-E711-8122-000D3AA2331C", "hubspot_user_id": "9586504",
     "salesforce_id": "005RM000001vI4Q", "pipedrive_user_id": "12415231"},
    {"user_id": "bruno", "team_id": "south", "role": "service_agent",
     "timezone": "Australia/Sydney"},
]


# -- The canonical decoder and validator -------------------------------------------------------


def fuzz_decoder(data: bytes) -> None:
    """``decode_events`` + ``validate_event``: a list of events or a :class:`Rejection`."""
    try:
        elements = decode_events(data)
    except Rejection as rejection:
        _check_rejection(rejection)
        return
    assert isinstance(elements, list) and elements, "decode_events returned no element"
    for element in elements:
        try:
            event = validate_event(element)
        except Rejection as rejection:
            _check_rejection(rejection)
            continue
        for name in REQUIRED:
            assert isinstance(event[name], str) and event[name], f"{name} passed unchecked"
        assert event["action"] in ACTIONS and isinstance(event["source"], str)


def _check_rejection(rejection: Rejection) -> None:
    assert isinstance(rejection.reason, str) and rejection.reason, "a Rejection without reason"
    assert isinstance(rejection.message, str), "a Rejection without message"


# -- The ingest fold ----------------------------------------------------------------------------

_ingestors: dict[str, Ingestor] = {}


def _ingestor() -> Ingestor:
    if not _ingestors:
        profiles = {p["user_id"]: UserInfo(p["team_id"], p["timezone"], p["role"])
                    for p in ROSTER}
        _ingestors["default"] = Ingestor(load_config(DEFAULT_CONFIG), MAX_EVENT_BYTES,
                                         PARTITIONS, profiles.get)
    return _ingestors["default"]


def _record_key(value: bytes, misrouted: bool) -> bytes | None:
    """The key a producer would give the record (its first event's user), or a wrong one."""
    if misrouted:
        return b"misrouted"
    try:
        payload = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    first = payload[0] if isinstance(payload, list) and payload else payload
    user_id = first.get("user_id") if isinstance(first, dict) else None
    if isinstance(user_id, str):
        with contextlib.suppress(UnicodeEncodeError):
            return user_id.encode()
    return None


def fuzz_ingest(data: bytes) -> None:
    """``Ingestor.fold`` on one record, then its replay and a redelivery: never raises.

    The first byte chooses the record's key (bit 0: keyed by another user, which is re-sent
    keyed by the user) and its broker timestamp (bits 1-3: :data:`ARRIVAL_SHIFTS`); the rest
    is the record value. Table state is a dict. A dead letter with reason ``internal_error``
    counts as a crash too: it is the guard in ``fold`` hiding a bug that bad input reached.
    """
    flags, value = (data[0], data[1:]) if data else (0, b"")
    key = _record_key(value, misrouted=bool(flags & 1))
    partition = partition_of(key, PARTITIONS) if key else 0
    arrival = ARRIVAL + ARRIVAL_SHIFTS[(flags >> 1) & 7]
    store: dict[str, dict[str, Any]] = {}
    ingestor = _ingestor()
    for offset in (7, 7, 8):  # first delivery, replay after a crash, duplicate delivery
        record = Record("crm.activities", partition, offset, arrival, key, value)
        result = ingestor.fold([record], store.get)
        for dlq_key, dlq_value in result.dead_letters:
            letter = orjson.loads(dlq_value)
            assert isinstance(dlq_key, bytes) and letter["reason"], letter
            assert letter["reason"] != "internal_error", (
                f"bad input reached a bug in fold: {letter['message']}")
        for forward_key, forward_value, _ in result.forwards:
            assert isinstance(forward_key, bytes)
            assert isinstance(orjson.loads(forward_value), dict)
        orjson.dumps(result.writes)  # table values must serialise
        store.update(orjson.loads(orjson.dumps(result.writes)))


# -- Webhook adapters -----------------------------------------------------------------------

_adapters: dict[str, Adapter] = {}
_directory: list[OwnerDirectory] = []


def _adapter(vendor: str) -> Adapter:
    if not _adapters:
        settings = Settings(_env_file=None, salesforce_secret="s", generic_webhook_secret="g",
                            hubspot_client_secret="h", dynamics365_webhook_key="d",
                            pipedrive_username="p", pipedrive_password="p")
        _adapters.update(adapters(settings))
        _directory.append(OwnerDirectory(lambda: ROSTER, _adapters.values()))
    return _adapters[vendor]


def _edge(vendor: str, data: bytes, content_type: str = "application/json") -> None:
    """What the edge does with an authenticated body: parse, route, encode the records.

    ``parse`` may raise only ``EdgeError(400, ...)`` (the body is then dead-lettered whole);
    routing and encoding every record that ``app/web.py`` would produce must not fail.
    """
    adapter = _adapter(vendor)
    url = f"https://pulse.example.com/webhooks/{vendor}"
    delivery = Delivery("POST", url, CIMultiDict({"Content-Type": content_type}), {}, data)
    try:
        parsed = adapter.parse(delivery)
    except EdgeError as exc:
        assert exc.status == 400 and exc.reason and isinstance(exc.message, str), exc
        return
    assert isinstance(parsed, Parsed)
    routed = route(adapter, parsed, data, _directory[0], False, RECEIVED_AT)
    for user_id, events in routed.by_user.items():
        assert isinstance(user_id, str) and user_id
        user_id.encode()  # the record key
        for event in events:
            validate_event(dict(event))
        orjson.dumps(events[0] if len(events) == 1 else events)  # as app.web._send_all
    for dlq_key, dlq_value in routed.dead_letters:
        assert dlq_key == vendor.encode() and orjson.loads(dlq_value)["reason"]
    adapter.acknowledge(delivery, Counts(routed.accepted, len(routed.dead_letters),
                                         parsed.ignored))


def fuzz_dynamics365(data: bytes) -> None:
    _edge("dynamics365", data)


def fuzz_salesforce(data: bytes) -> None:
    """Change Data Capture events relayed as JSON."""
    _edge("salesforce", data)


def fuzz_salesforce_soap(data: bytes) -> None:
    """Outbound Messages (SOAP XML, read with defusedxml, DTDs refused)."""
    _edge("salesforce", data, "text/xml; charset=utf-8")


def fuzz_hubspot(data: bytes) -> None:
    _edge("hubspot", data)


def fuzz_pipedrive(data: bytes) -> None:
    _edge("pipedrive", data)


def fuzz_generic(data: bytes) -> None:
    _edge("generic", data)


# -- The KPI model loader ------------------------------------------------------------------


def fuzz_config(data: bytes) -> None:
    """``parse_config`` on arbitrary text: a :class:`PulseConfig` or a :class:`ConfigError`
    whose problems each start with the origin."""
    text = data.decode("utf-8", "replace")
    try:
        config = parse_config(text, "<fuzz>")
    except ConfigError as exc:
        assert exc.problems, "a ConfigError without problems"
        for problem in exc.problems:
            assert isinstance(problem, str) and problem.startswith("<fuzz>:"), problem
        return
    assert isinstance(config, PulseConfig)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "decoder": fuzz_decoder,
    "ingest": fuzz_ingest,
    "dynamics365": fuzz_dynamics365,
    "salesforce": fuzz_salesforce,
    "salesforce_soap": fuzz_salesforce_soap,
    "hubspot": fuzz_hubspot,
    "pipedrive": fuzz_pipedrive,
    "generic": fuzz_generic,
    "config": fuzz_config,
}


# -- Seed corpora ---------------------------------------------------------------------------


def _deep(levels: int, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return opener * levels + closer * levels


def _event(**fields: Any) -> dict[str, Any]:
    return {"event_id": "evt-1", "occurred_at": "2026-11-23T10:00:00Z", "user_id": "alice",
            "type": "call", **fields}


def canonical_seeds() -> dict[str, bytes]:
    """Canonical records: valid ones of every shape, and hostile ones."""
    full = _event(team_id="north", feature="phone_calls", source="hubspot", amount=1250.5,
                  currency="EUR", duration_s=300, quality=0.5, attributes={"k": [1, {"x": None}]},
                  record_type="call", record_id="c-1", action="completed", unknown="kept")
    return {
        "event.json": orjson.dumps(_event()),
        "full.json": orjson.dumps(full),
        "array.json": orjson.dumps([_event(), _event(event_id="evt-2", type="Meeting"),
                                    _event(event_id="evt-3", user_id="bruno", type="phonecall",
                                           occurred_at="2026-11-23T23:30:00+11:00")]),
        "won.json": orjson.dumps(_event(type="opportunity_won", amount=5000, currency="USD")),
        "nulls.json": orjson.dumps(_event(team_id=None, amount=None, action=None)),
        "deep-100k.json": _deep(100_000),
        "deep-objects.json": b'{"a":' * 5000 + b"1" + b"}" * 5000,
        "deep-element.json": b"[" + _deep(300) + b"," + orjson.dumps(_event()) + b"]",
        "deep-attributes.json": orjson.dumps(_event())[:-1] + b',"attributes":{"x":'
        + _deep(300) + b"}}",
        "huge-int.json": orjson.dumps(_event())[:-1] + b',"amount":18446744073709551616}',
        "huge-int-id.json": b'{"event_id":99999999999999999999999,"occurred_at":"x"}',
        "nan.json": b'{"amount": NaN, "duration_s": Infinity, "quality": -Infinity}',
        "inf.json": orjson.dumps(_event())[:-1] + b',"amount":1e999}',
        "invalid-utf8.json": b'{"event_id":"\xff\xfe","user_id":"\xed\xa0\x80"}',
        "surrogate.json": b'{"event_id":"\\ud800","user_id":"\\udc00"}',
        "bom.json": b"\xef\xbb\xbf" + orjson.dumps(_event()),
        "empty-array.json": b"[]",
        "scalar.json": b"42",
    }


def _fixtures(vendor: str, suffix: str = ".json") -> dict[str, bytes]:
    return {path.name: path.read_bytes()
            for path in sorted((FIXTURES / vendor).glob(f"*{suffix}"))}


def _json_hostile(shape: bytes) -> dict[str, bytes]:
    """Hostile values in the place of ``%s`` of a body the vendor would accept."""
    values = {"deep": _deep(1000), "deep300": _deep(300), "huge": b"1" + b"0" * 30,
              "nan": b"NaN", "inf": b"1e999", "utf8": b'"\xff\xfe"'}
    return {f"hostile-{name}.json": shape.replace(b"%s", value) for name, value in values.items()}


BILLION_LAUGHS_YAML = (
    "kpis: {calls: {count: [call]}}\n"
    + 'l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))
)

HOSTILE_YAML: dict[str, str] = {
    "billion-laughs.yaml": BILLION_LAUGHS_YAML,
    "recursive-alias.yaml": "kpis: &k {calls: {count: [call]}, loop: *k}\n",
    "python-tag.yaml": "kpis: !!python/object/apply:os.system ['echo pwned']\n",
    "huge-int.yaml": "kpis: {calls: {count: [call]}}\ngrace: " + "9" * 5000 + "\n",
    "grace-inf.yaml": "kpis: {calls: {count: [call]}}\ngrace: .inf\n",
    "grace-overflow.yaml": "kpis: {calls: {count: [call]}}\ngrace: 99999999999999999999w\n",
    "bad-holiday.yaml": "kpis: {calls: {count: [call]}}\ncalendar: {holidays: [2026-02-30]}\n",
    "bad-timestamp.yaml": "kpis: {calls: {count: [call]}}\nx: 2026-11-23t10:00:00-99:00\n",
    "deep.yaml": "kpis: " + "[" * 1000 + "]" * 1000 + "\n",
    "timezone-not-text.yaml": "kpis: {calls: {count: [call]}}\ntimezone: false\n",
    "team-timezone-number.yaml": "kpis: {calls: {count: [call]}}\nteams: {north: {timezone: 1}}\n",
    "catch-up-int64.yaml": "kpis: {calls: {count: [call]}}\ncatch_up: -9223372036854775808\n",
}


def seeds(target: str) -> dict[str, bytes]:
    """The seed corpus of ``target``: file name -> content."""
    if target in ("decoder", "generic"):
        return canonical_seeds()
    if target == "ingest":
        return {f"{flag}-{name}": bytes([flag]) + value
                for name, value in canonical_seeds().items() for flag in (0, 1)}
    if target == "salesforce_soap":
        found = _fixtures("salesforce", ".xml")
        sample = next(iter(found.values()))
        found.update({
            "billion-laughs.xml": b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "lol">'
            b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><l>&b;</l>',
            "xxe.xml": b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM '
            b'"file:///etc/passwd">]><d>&x;</d>',
            "parameter-entity.xml": b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY % p SYSTEM '
            b'"http://127.0.0.1:1/x.dtd"> %p;]><d/>',
            "deep.xml": b"<a>" * 20_000 + b"</a>" * 20_000,
            "utf16.xml": sample.decode().encode("utf-16"),
            "invalid-utf8.xml": sample.replace(b"</sf:Id>", b"\xff</sf:Id>", 1),
        })
        return found
    if target in ("dynamics365", "salesforce", "hubspot", "pipedrive"):
        found = _fixtures(target)
        shapes = {
            "dynamics365": b'{"MessageName":"Create","PrimaryEntityName":"phonecall",'
                           b'"PrimaryEntityId":%s,"InputParameters":[{"key":"Target","value":%s}]}',
            "salesforce": b'[{"ChangeEventHeader":{"entityName":"Task","changeType":"CREATE",'
                          b'"commitTimestamp":%s,"transactionKey":"t","sequenceNumber":1,'
                          b'"recordIds":["00T000000000001"]}}]',
            "hubspot": b'[{"subscriptionType":"deal.creation","portalId":1,"eventId":2,'
                       b'"objectId":%s,"occurredAt":%s,"sourceId":"userId:9586504"}]',
            "pipedrive": b'{"meta":{"version":"2.0","entity":"deal","action":%s,"id":"u",'
                         b'"entity_id":1,"company_id":2,"timestamp":"2026-11-23T10:00:00Z"},'
                         b'"data":{"value":%s,"status":"won"}}',
        }
        found.update(_json_hostile(shapes[target]))
        found.update({"deep-100k.json": _deep(100_000), "deep300.json": b"[" + _deep(300) + b"]",
                      "nan.json": b"NaN", "invalid-utf8.json": b'["\xff"]'})
        return found
    if target == "config":
        found = {"pulse.yaml": DEFAULT_CONFIG.read_bytes(),
                 "minimal.yaml": b"kpis: {calls: {count: [call]}}\n"}
        docs = (ROOT / "docs" / "config.md").read_text(encoding="utf-8").split("```yaml\n")[1:]
        for index, block in enumerate(docs):
            found[f"docs-{index}.yaml"] = block.split("```", 1)[0].encode()
        found.update({name: text.encode() for name, text in HOSTILE_YAML.items()})
        return found
    raise KeyError(target)


# -- Structured mutation ---------------------------------------------------------------------
#
# Byte-level mutation mostly breaks the JSON, YAML or XML and stops at the parser. Under
# atheris, a custom mutator also parses the input, changes one to four nodes (hostile scalars,
# values and keys seen in the seeds, deep nesting, NaN, numbers beyond 64 bits, deletions,
# wrappers) and writes it back; the crash files stay the literal bytes the target got. The
# pytest suite drives the same mutations from hypothesis (``mutate``).

_PLACEHOLDER = "RAWLITERAL%dZZ"
JSON_LITERALS: tuple[bytes, ...] = (
    b"NaN", b"Infinity", b"-Infinity", b"1e999", b"18446744073709551616",
    b"-9223372036854775809", b"1" + b"0" * 400, b"0." + b"0" * 400 + b"1", b"-0", b"1E-400",
    b"[" * 300 + b"]" * 300, b"[" * 1000 + b"]" * 1000, b'{"a":' * 300 + b"1" + b"}" * 300,
    b'"\\u0000"', b'"\\ud800\\udc00"', b'"\xc3\xa4\xe2\x80\xae"',
    b'"' + b"\\\\" * 100 + b'"',
)
YAML_LITERALS: tuple[bytes, ...] = (
    b".inf", b"-.inf", b".nan", b"1.0e+400", b"9" * 5000, b"0x" + b"f" * 40,
    b"0o777777777777777777777",
    b"2026-02-30", b"2026-11-23t10:00:00-99:00", b"2026-13-01", b"99999-01-01",
    b"1_000_000_000_000_000_000", b"99999999999999999999w", b"1e400s", b"-1h",
    b"!!python/name:os.system", b"!!binary AAAA", b"!!set {a, b}", b"!!omap [a: 1]",
    b"*undefined", b"&anchor value", b"[" * 300 + b"]" * 300, b"~", b"''", b"|\n  block",
    b"Europe/../../etc/passwd", b"America", b"UTC\x00",
)
HOSTILE_SCALARS: tuple[Any, ...] = (
    None, True, False, 0, -1, 1, 2, 2**31, 2**53 + 1, 2**63 - 1, -(2**63), 2**64 - 1, 0.5,
    -0.0, 1e15, 1e16, 1e308, 5e-324, "", " ", "\x00", "\u202e", "x" * 300, "9" * 40, "A" * 18,
    "userId:9586504", "/Date(1506409448000-0700)/", "/Date(999999999999999)/", "/Date(-1)/",
    "2026-11-23T10:00:00Z", "2026-11-23T10:00:00", "2026-11-23T10:00:00.1234567+01:00",
    "2100-12-31T23:59:59-23:59", "1999-12-31T23:59:59+14:00", "2000-01-01T00:00:00+14:00",
    "0000-00-00T00:00:00Z", "9999-12-31T23:59:59.999999+00:00", "2026-W48", "1795435200",
    "true", "null", "NaN", "00000000-0000-0000-0000-000000000000",
    "{75C2DD85-E89E-E711-8122-000D3AA2331C}", "005RM000001vI4Q", "005RM000001vI4QYAU",
    "Closed Won", "Closed Lost", "Closed", "Completed", "COMPLETED", "closedwon", "won", "lost",
    "Call", "Email", "ListEmail", "Create", "Update", "Delete", "Assign", "Win", "Lose",
    "SetState", "CREATE", "UPDATE", "DELETE", "UNDELETE", "GAP_CREATE", "deal.creation",
    "deal.propertyChange", "object.propertyChange", "0-48", "0-3", "hubspot_owner_id",
    "dealstage", "change", "added", "updated", "deleted", "2.0", "1:30", "999:59:59",
    "EUR", "eur", "monday", "day", "rolling_7d", "call", "Phone Call", "e-mail",
)
XML_TEXTS: tuple[str, ...] = (
    "", "true", "false", "2026-11-23T10:00:00.000Z", "2026-11-23T10:00:00",
    "1999-12-31T23:00:00-01:00",
    "2100-12-31T23:59:59-23:59", "9999999999999999999999", "NaN", "-inf", "1e999", "-1", "0x10",
    "005RM000001vI4Q", "005RM000001vI4QYAU", "00T000000000001", "x" * 300, "Closed Won",
    "Completed", "Call", "Email", "EUR", "eur", "\u202e",
)


def _walk(value: Any, found: list[tuple[Any, Any]], parent: Any = None, key: Any = None
          ) -> None:
    """Nodes as (container, key) pairs, the root as (None, None); at most 5000 nodes and 60
    levels (aliases in YAML can share a node exponentially often)."""
    stack = [(value, parent, key, 0)]
    while stack and len(found) < 5000:
        node, parent, key, depth = stack.pop()
        found.append((parent, key))
        if depth > 60:
            continue
        if isinstance(node, dict):
            stack.extend((child, node, name, depth + 1) for name, child in node.items())
        elif isinstance(node, list):
            stack.extend((child, node, index, depth + 1) for index, child in enumerate(node))


class _Vocabulary:
    """Keys and scalars of a target's seeds, to splice into mutations."""

    def __init__(self, documents: list[Any]) -> None:
        self.keys: list[str] = []
        self.values: list[Any] = []
        for document in documents:
            nodes: list[tuple[Any, Any]] = []
            _walk(document, nodes)
            for parent, key in nodes:
                if parent is None:
                    continue
                if isinstance(key, str):
                    self.keys.append(key)
                node = parent[key]
                if not isinstance(node, (dict, list)):
                    self.values.append(node)
        self.keys = sorted(set(self.keys)) or ["key"]
        self.values = self.values or [0]


_vocabularies: dict[str, _Vocabulary] = {}


def _loads(target: str, data: bytes) -> Any:
    if target == "config":
        import yaml

        return yaml.safe_load(data.decode("utf-8"))
    return orjson.loads(data)


def _vocabulary(target: str) -> _Vocabulary:
    if target not in _vocabularies:
        documents = []
        for name, data in seeds(target).items():
            if name.startswith(("deep", "hostile", "billion", "recursive")):
                continue
            with contextlib.suppress(Exception):
                documents.append(_loads(target, data[1:] if target == "ingest" else data))
        _vocabularies[target] = _Vocabulary(documents)
    return _vocabularies[target]


def _mutate_tree(root: Any, rng: Any, vocabulary: _Vocabulary, literals: int
                 ) -> tuple[Any, dict[str, int]]:
    """Change 1..4 nodes of a parsed document; placeholders name raw literals to insert."""
    raw: dict[str, int] = {}
    for _ in range(rng.randint(1, 4)):
        nodes: list[tuple[Any, Any]] = []
        _walk(root, nodes)
        parent, key = rng.choice(nodes)
        current = root if parent is None else parent[key]
        operation = rng.randrange(12)
        if operation == 0:
            new: Any = rng.choice(HOSTILE_SCALARS)
        elif operation == 1:
            new = rng.choice(vocabulary.values)
        elif operation == 2:
            placeholder = _PLACEHOLDER % len(raw)
            raw[placeholder] = rng.randrange(literals)
            new = placeholder
        elif operation == 3:
            new = rng.choice([[current], {"value": current}, {"Value": current}, {"id": current},
                              [current, current], []])
        elif operation == 4 and isinstance(parent, (dict, list)):
            del parent[key]
            continue
        elif operation == 5 and isinstance(current, dict):
            current[rng.choice(vocabulary.keys)] = rng.choice(
                [*HOSTILE_SCALARS[:12], rng.choice(vocabulary.values)])
            continue
        elif operation == 6 and isinstance(current, list) and current:
            current.extend(rng.choice(current) for _ in range(rng.randint(1, 120)))
            continue
        elif operation == 7 and isinstance(current, str):
            new = rng.choice([current[: rng.randrange(len(current) + 1)], current.upper(),
                              current.lower(), current + rng.choice(["*", " ", "\x00", "Z",
                                                                     "+99:99", ".", "é"]),
                              current * rng.randint(2, 50)])
        elif operation == 8 and isinstance(current, (int, float)) and not isinstance(
                current, bool):
            new = rng.choice([current + 1, current - 1, -current, current * 1000,
                              current / 1000, str(current), int(current * 1000)])
        elif operation == 9 and isinstance(current, dict) and current:
            other = rng.choice(list(current))
            current[other + rng.choice(["", "_", "X"])] = current.pop(other)
            continue
        elif operation == 10:
            donor_parent, donor_key = rng.choice(nodes)
            if donor_parent is None:
                continue
            new = copy.deepcopy(donor_parent[donor_key])
        else:
            new = rng.choice(HOSTILE_SCALARS)
        if parent is None:
            root = new
        else:
            parent[key] = new
    return root, raw


def _mutate_xml(data: bytes, rng: Any) -> bytes | None:
    from xml.etree.ElementTree import SubElement, tostring

    from defusedxml.ElementTree import fromstring

    try:
        root = fromstring(data, forbid_dtd=True)
    except Exception:
        return None
    elements = list(root.iter())
    for _ in range(rng.randint(1, 4)):
        element = rng.choice(elements)
        operation = rng.randrange(6)
        if operation == 0:
            element.text = rng.choice(XML_TEXTS)
        elif operation == 1 and len(element):
            element.remove(rng.choice(list(element)))
        elif operation == 2:
            donor = rng.choice(elements)
            copy = SubElement(element, donor.tag, dict(donor.attrib))
            copy.text = rng.choice([donor.text, *XML_TEXTS])
        elif operation == 3:
            name = "{http://www.w3.org/2001/XMLSchema-instance}" + rng.choice(["type", "nil"])
            element.set(name, rng.choice(["sf:Opportunity", "sf:Case", "sf:Task", "sf:Event",
                                          "sf:Lead", "sf:Nope", "Task", "", "true", ":"]))
        elif operation == 4:
            element.tag = rng.choice(elements).tag
        else:
            element.text = (element.text or "") * rng.randint(2, 30)
    try:
        return tostring(root)
    except Exception:
        return None


def mutate(target: str, data: bytes, rng: Any) -> bytes | None:
    """A structured mutation of ``data`` for ``target`` (``None`` when it does not parse)."""
    if target == "salesforce_soap":
        return _mutate_xml(data, rng)
    flags, body = (data[:1] or b"\x00", data[1:]) if target == "ingest" else (b"", data)
    try:
        tree = _loads(target, body)
    except Exception:
        return None
    literals = YAML_LITERALS if target == "config" else JSON_LITERALS
    try:
        tree, raw = _mutate_tree(tree, rng, _vocabulary(target), len(literals))
        if target == "config":
            import yaml

            out = yaml.safe_dump(tree, allow_unicode=True, sort_keys=False).encode()
        else:
            out = orjson.dumps(tree, default=str)
    except Exception:
        return None
    for placeholder, index in raw.items():
        quoted = f'"{placeholder}"'.encode() if target != "config" else placeholder.encode()
        out = out.replace(quoted, literals[index])
    if target == "ingest" and rng.random() < 0.3:
        flags = bytes([rng.randrange(16)])
    return flags + out


def _custom_mutator(target: str) -> Callable[[bytes, int, int], bytes]:
    import random

    import atheris

    def mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if rng.random() < 0.3:
            return atheris.Mutate(data, max_size)
        mutated = mutate(target, data, rng)
        if mutated is None or len(mutated) > max_size:
            return atheris.Mutate(data, max_size)
        return mutated

    return mutator


def write_seeds(target: str, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in seeds(target).items():
        (directory / name).write_bytes(content)
    return directory


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] in ("-h", "--help", "--list") or argv[1] not in TARGETS:
        print(__doc__)
        print("targets:", ", ".join(TARGETS))
        raise SystemExit(0 if len(argv) >= 2 and argv[1] in ("-h", "--help", "--list") else 2)
    import atheris

    target = argv[1]
    options = argv[2:]
    if not any(not option.startswith("-") for option in options):
        corpus = write_seeds(target, Path(tempfile.mkdtemp(prefix=f"fuzz-{target}-")))
        print(f"seed corpus: {corpus}", file=sys.stderr)
        options.append(str(corpus))
    atheris.Setup([argv[0], *options], TARGETS[target],
                  custom_mutator=_custom_mutator(target))
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
