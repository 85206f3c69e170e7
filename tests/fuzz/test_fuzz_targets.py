"""Hostile input, part 1: the fuzz targets for a bounded time, and property tests.

- Every atheris target of ``fuzz_targets.py`` runs in a subprocess (coverage-guided, seeded
  with the vendor fixtures, canonical events and configs, and known hostile inputs) for
  ``CRM_PULSE_FUZZ_SECONDS`` (default 10) each; a crash, hang (``-timeout``) or out-of-memory
  input fails the test with its traceback.
- Hypothesis property tests for the canonical decoder, the ingest fold, the adapters and the
  config loader: arbitrary bytes, deep nesting, huge numbers, NaN/Infinity, invalid UTF-8,
  oversized bodies; YAML attacks on the loader run in a child process with a time and memory
  limit, so a hang or a blow-up fails the test instead of stopping the suite.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import random
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import orjson
import pytest
from fuzz_targets import (
    ARRIVAL,
    BILLION_LAUGHS_YAML,
    HOSTILE_YAML,
    MAX_EVENT_BYTES,
    PARTITIONS,
    TARGETS,
    canonical_seeds,
    fuzz_config,
    fuzz_decoder,
    fuzz_ingest,
    mutate,
    seeds,
    write_seeds,
)
from fuzz_targets import _edge as edge
from fuzz_targets import _ingestor as ingestor
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agents.ingest import MAX_EVENTS_PER_RECORD, Record, partition_of
from app.config import ConfigError, load_config
from schemas.activity import FIELDS, Rejection, decode_events, validate_event

ROOT = Path(__file__).resolve().parents[2]
FUZZ_SCRIPT = Path(__file__).with_name("fuzz_targets.py")
FUZZ_SECONDS = int(os.environ.get("CRM_PULSE_FUZZ_SECONDS", "10"))
FUZZ_RUNS = int(os.environ.get("CRM_PULSE_FUZZ_RUNS", "10000000"))
HANG_S = 10.0
"""A hostile config taking longer than this in the child process is a hang."""
FAST_S = 5.0
"""How long refusing a hostile config may take."""
CHILD_MEMORY = 2 << 30

needs_atheris = pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                                   reason="atheris is not installed (pip install atheris)")
HOSTILE_SEEDS = ("deep", "hostile", "billion", "recursive", "huge", "grace", "bad-", "python",
                 "nan", "inf", "invalid", "surrogate", "timezone", "team-timezone", "catch-up",
                 "xxe", "parameter", "utf16", "bom", "0-deep", "1-deep")
"""Seed names of known hostile inputs (the findings); the rest are benign."""
PROPERTY = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


SEEDS = canonical_seeds()


def _event(**fields: Any) -> dict[str, Any]:
    return {"event_id": "evt-1", "occurred_at": "2026-11-23T10:00:00Z", "user_id": "alice",
            "type": "call", **fields}


def _deep(levels: int, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return opener * levels + closer * levels


def _rejected(raw: bytes) -> Rejection | None:
    """The Rejection of the first bad element (decode + validate), ``None`` when valid."""
    try:
        for element in decode_events(raw):
            validate_event(element)
    except Rejection as rejection:
        return rejection
    return None


# -- atheris, coverage-guided, in a subprocess -------------------------------------------------


def _fuzz_report(target: str, process: subprocess.CompletedProcess[str],
                 artifacts: Path) -> str:
    lines = [line for line in process.stderr.splitlines()
             if not line.startswith(("INFO: Instrumenting", "#"))]
    found = []
    for path in sorted(artifacts.iterdir()):
        found.append(f"{path.name} ({path.stat().st_size} bytes): {path.read_bytes()[:300]!r}")
    return (f"fuzz target {target!r} exited {process.returncode}; findings: {found or 'none'}\n"
            f"reproduce: python tests/fuzz/fuzz_targets.py {target} <finding file>\n"
            + "\n".join(lines[-60:]))


def _campaign(target: str, workdir: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One libFuzzer run of ``target`` for ``FUZZ_SECONDS``: the process and its findings."""
    corpus = write_seeds(target, workdir / "corpus")
    artifacts = workdir / "artifacts"
    artifacts.mkdir()
    command = [sys.executable, str(FUZZ_SCRIPT), target, f"-max_total_time={FUZZ_SECONDS}",
               f"-runs={FUZZ_RUNS}", "-timeout=10", "-rss_limit_mb=2048",
               f"-artifact_prefix={artifacts}/", "-print_final_stats=1", str(corpus)]
    process = subprocess.run(command, cwd=workdir, capture_output=True, text=True,
                             timeout=FUZZ_SECONDS + 150, check=False)
    return process, artifacts


def _reproduces(target: str, finding: Path) -> bool:
    """Whether running the target on ``finding`` alone fails again."""
    command = [sys.executable, str(FUZZ_SCRIPT), target, "-timeout=10", "-rss_limit_mb=2048",
               str(finding)]
    return subprocess.run(command, cwd=finding.parent, capture_output=True,
                          timeout=120, check=False).returncode != 0


@needs_atheris
@pytest.mark.timeout(2 * FUZZ_SECONDS + 420)
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz_target_finds_nothing(target: str, tmp_path: Path) -> None:
    """libFuzzer + atheris for ``CRM_PULSE_FUZZ_SECONDS``: no crash, hang or OOM input.

    A finding that does not fail again when run alone is a fault of the fuzzing harness, not
    of the target (seen once: glibc aborting on heap corruption *between* inputs, while
    libFuzzer mutated; the saved input was empty and ran cleanly). Such a run is reported as
    a warning and the campaign runs once more, which must then be clean; a finding that
    reproduces fails at once.
    """
    process, artifacts = _campaign(target, tmp_path / "first")
    findings = sorted(artifacts.iterdir())
    if process.returncode != 0 and findings and not any(
            _reproduces(target, finding) for finding in findings):
        warnings.warn(f"fuzz target {target!r}: a finding that does not reproduce alone; "
                      "running again\n" + _fuzz_report(target, process, artifacts), stacklevel=1)
        process, artifacts = _campaign(target, tmp_path / "again")
    assert process.returncode == 0 and not any(artifacts.iterdir()), _fuzz_report(
        target, process, artifacts)
    assert "Done " in process.stderr, process.stderr[-2000:]


def test_every_target_passes_its_own_benign_seeds() -> None:
    """The seeds that are not hostile exercise the targets without findings (no atheris)."""
    for name, value in SEEDS.items():
        if not name.startswith(("deep-element", "deep-attributes")):
            fuzz_decoder(value)
            fuzz_ingest(b"\x00" + value)


# -- The canonical decoder ------------------------------------------------------------------

JSON_SCALARS = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20)
                | st.floats(allow_nan=False, allow_infinity=False))
JSON_VALUES = st.recursive(
    JSON_SCALARS, lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=10), inner, max_size=5), max_leaves=30)


@PROPERTY
@given(data=st.binary(max_size=4096))
@example(data=b"\xef\xbb\xbf{}")
@example(data=b'"\\ud800"')
def test_decoder_takes_any_bytes(data: bytes) -> None:
    fuzz_decoder(data)


@PROPERTY
@given(value=JSON_VALUES, fields=st.dictionaries(
    st.sampled_from([f.name for f in FIELDS]), JSON_VALUES, max_size=6))
def test_decoder_takes_any_json(value: Any, fields: dict[str, Any]) -> None:
    fuzz_decoder(orjson.dumps(value))
    fuzz_decoder(orjson.dumps({**_event(), **fields}))
    fuzz_decoder(orjson.dumps([_event(), {**_event(), **fields}]))


@pytest.mark.parametrize("shape", [
    pytest.param(_deep(100_000), id="arrays"),
    pytest.param(b'{"a":' * 100_000 + b"1" + b"}" * 100_000, id="objects"),
    pytest.param(b'[{"a":' * 50_000 + b"1" + b"}]" * 50_000, id="mixed"),
    pytest.param(orjson.dumps(_event())[:-1] + b',"attributes":{"x":' + _deep(100_000) + b"}}",
                 id="in-attributes"),
])
def test_100k_levels_of_nesting_are_a_clean_rejection(shape: bytes) -> None:
    started = time.monotonic()
    with pytest.raises(Rejection) as caught:
        decode_events(shape)
    assert caught.value.reason == "invalid_json"
    assert time.monotonic() - started < 1


@PROPERTY
@given(depth=st.integers(1, 1100), where=st.sampled_from(["attributes", "unknown", "element"]))
@example(depth=300, where="attributes")
def test_every_accepted_event_can_be_encoded_again(depth: int, where: str) -> None:
    """The edge (``app.web._send_all``) and ingest forwards re-encode accepted events with
    orjson, which refuses more than 254 levels: the validator must not accept those."""
    nested = _deep(depth)
    if where == "attributes":
        raw = orjson.dumps(_event())[:-1] + b',"attributes":{"x":' + nested + b"}}"
    elif where == "unknown":
        raw = orjson.dumps(_event())[:-1] + b',"extra":' + nested + b"}"
    else:
        raw = b"[" + orjson.dumps(_event()) + b"," + nested + b"]"
    try:
        elements = decode_events(raw)
    except Rejection:
        return
    for element in elements:
        try:
            event = validate_event(element)
        except Rejection:
            continue
        orjson.dumps(event)


NUMERIC = [f.name for f in FIELDS if f.schema.get("type") == "number"]
TEXT = [f.name for f in FIELDS if f.schema.get("type") == "string"]


@PROPERTY
@given(number=st.integers(min_value=2**64, max_value=10**400)
       | st.integers(max_value=-(2**63) - 1, min_value=-(10**400)),
       field=st.sampled_from(NUMERIC + TEXT))
@example(number=2**64, field="amount")
@example(number=10**309, field="duration_s")
def test_integers_beyond_64_bits_are_rejected(number: int, field: str) -> None:
    raw = orjson.dumps(_event())[:-1] + f',"{field}":{number}}}'.encode()
    rejection = _rejected(raw)
    assert rejection is not None and rejection.reason in ("invalid_json", f"schema:{field}")


@pytest.mark.parametrize("literal", [b"NaN", b"-NaN", b"nan", b"Infinity", b"-Infinity",
                                     b"inf", b"1e999", b"-1e999", b"1E+400"])
@pytest.mark.parametrize("field", ["amount", "duration_s", "quality", "event_id", "attributes"])
def test_nan_and_infinity_literals_are_invalid_json(literal: bytes, field: str) -> None:
    raw = orjson.dumps(_event())[:-1] + f',"{field}":'.encode() + literal + b"}"
    rejection = _rejected(raw)
    assert rejection is not None and rejection.reason == "invalid_json"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("field", NUMERIC)
def test_non_finite_python_floats_are_rejected(value: float, field: str) -> None:
    """Adapters hand ``validate_event`` Python floats (Salesforce XML text, Dataverse)."""
    with pytest.raises(Rejection) as caught:
        validate_event(_event(**{field: value}))
    assert caught.value.reason == f"schema:{field}"


@PROPERTY
@given(prefix=st.text(max_size=10), bad=st.sampled_from(
    [b"\xff", b"\xfe", b"\x80", b"\xc0\x80", b"\xc3", b"\xed\xa0\x80", b"\xed\xbf\xbf",
     b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82"]),
       field=st.sampled_from(["event_id", "user_id", "type", "team_id", "unknown"]))
def test_invalid_utf8_is_invalid_json(prefix: str, bad: bytes, field: str) -> None:
    raw = orjson.dumps(_event())[:-1] + f',"{field}":"{json.dumps(prefix)[1:-1]}'.encode()
    rejection = _rejected(raw + bad + b'"}')
    assert rejection is not None and rejection.reason == "invalid_json"


# -- The ingest fold ------------------------------------------------------------------------


def _record(value: bytes, key: bytes | None = b"alice", offset: int = 1) -> Record:
    partition = partition_of(key, PARTITIONS) if key else 0
    return Record("crm.activities", partition, offset, ARRIVAL, key, value)


def _reasons(value: bytes, key: bytes | None = b"alice") -> list[tuple[str, Any]]:
    result = ingestor().fold([_record(value, key)], lambda _key: None)
    return [(letter["reason"], letter["index"])
            for letter in (orjson.loads(v) for _, v in result.dead_letters)]


@PROPERTY
@given(data=st.binary(max_size=2048))
def test_fold_takes_any_record_value(data: bytes) -> None:
    fuzz_ingest(data)


@PROPERTY
@given(seed=st.sampled_from(sorted(SEEDS)), flags=st.integers(0, 255),
       cuts=st.lists(st.tuples(st.integers(0, 10_000), st.binary(max_size=8)), max_size=4))
def test_fold_takes_mutated_records(seed: str, flags: int, cuts: list[tuple[int, bytes]]
                                    ) -> None:
    if seed.startswith(("deep-element", "deep-attributes")):
        return  # the findings below
    value = bytearray(SEEDS[seed])
    for where, insert in cuts:
        where %= len(value) + 1
        value[where:where + len(insert)] = insert
    fuzz_ingest(bytes([flags]) + bytes(value))


def test_fold_parks_an_array_element_nested_too_deep_to_re_encode() -> None:
    """FINDING: ``Ingestor._park`` re-encodes a rejected array element with ``orjson.dumps``,
    which raises beyond 254 levels, so ``fold`` raises and the batch (and the worker) fails
    on every replay: a poison record. It must go to the DLQ with its index."""
    value = b"[" + _deep(300) + b"," + orjson.dumps(_event()) + b"]"
    assert _reasons(value) == [("schema:event", 0)]


def test_a_misrouted_event_with_deep_attributes_is_not_an_internal_error() -> None:
    """FINDING: a valid event with attributes nested 300 deep, keyed by another user, is
    forwarded with ``orjson.dumps``, which raises: the guard parks it as ``internal_error``
    (a bug), and in an array the guard's own re-encode raises out of ``fold``."""
    raw = orjson.dumps(_event())[:-1] + b',"attributes":{"x":' + _deep(300) + b"}}"
    assert all(reason != "internal_error" for reason, _ in _reasons(raw, b"misrouted"))
    ingestor().fold([_record(b"[" + raw + b"," + raw + b"]", b"misrouted")], lambda _k: None)


def test_oversized_records_are_too_large() -> None:
    big = orjson.dumps(_event(attributes={"blob": "x" * MAX_EVENT_BYTES}))
    assert _reasons(big) == [("too_large", None)]
    many = b"[" + b",".join([b"1"] * (MAX_EVENTS_PER_RECORD + 1)) + b"]"
    assert _reasons(many) == [("too_large", None)]
    started = time.monotonic()
    huge = b"[" + b",".join([orjson.dumps(_event(event_id=f"e{i}")) for i in range(20_000)]
                            ) + b"]"  # ~2 MB, over any webhook body: only a producer sends it
    result = ingestor().fold([_record(huge)], lambda _key: None)
    assert result.applied == 20_000 and not result.dead_letters
    assert time.monotonic() - started < 30
    mixed = b"[" + orjson.dumps(_event()) + b"," + big + b"]"
    assert _reasons(mixed) == [("too_large", 1)]


# -- Adapters (parse, route, encode: what the edge does) ------------------------------------


@PROPERTY
@given(vendor=st.sampled_from(["dynamics365", "salesforce", "hubspot", "pipedrive", "generic"]),
       body=st.binary(max_size=2048) | JSON_VALUES.map(orjson.dumps))
def test_adapters_take_any_body(vendor: str, body: bytes) -> None:
    edge(vendor, body)


@PROPERTY
@given(body=st.binary(max_size=2048) | st.text(max_size=500).map(str.encode))
def test_salesforce_soap_takes_any_body(body: bytes) -> None:
    edge("salesforce", body, "text/xml")


@pytest.mark.parametrize(("vendor", "body"), [
    pytest.param("hubspot", b"[" + _deep(300) + b"]", id="hubspot-deep-element"),
    pytest.param("pipedrive", b'{"meta":{"version":"2.0","entity":"deal","action":'
                 + _deep(1000) + b"}}", id="pipedrive-deep-action"),
    pytest.param("generic", orjson.dumps(_event())[:-1] + b',"attributes":{"x":' + _deep(300)
                 + b"}}", id="generic-deep-attributes"),
])
def test_nesting_findings_at_the_edge(vendor: str, body: bytes) -> None:
    """FINDINGS (each a 5xx from a real worker, see test_hostile_http.py):

    - hubspot: ``HubSpotAdapter.parse`` re-encodes an unmappable element with
      ``orjson.dumps`` (254-level limit): ``TypeError: Recursion limit reached`` (500);
    - pipedrive: ``str(action)`` of an action nested ~1000 deep: ``RecursionError`` (500);
    - generic: the validator accepts attributes nested 300 deep, ``_send_all`` cannot encode
      them and the edge answers ``503 broker_unavailable`` (the sender retries forever).
    """
    edge(vendor, body)


# -- Structured mutations of the seeds (what the atheris custom mutator does) ---------------

MUTATED_TARGETS = sorted(TARGETS)
cached_seeds = functools.cache(seeds)


@pytest.mark.parametrize("target", MUTATED_TARGETS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_structured_mutations_of_the_seeds(target: str, data: st.DataObject) -> None:
    """Seeds parsed, changed in one to four places (hostile scalars, the seeds' own keys
    and values, raw NaN/huge/deep literals, deletions, wrappers) and written back."""
    corpus = cached_seeds(target)
    benign = sorted(name for name in corpus if not name.startswith(HOSTILE_SEEDS))
    value = corpus[data.draw(st.sampled_from(benign), label="seed")]
    rng = random.Random(data.draw(st.integers(0, 2**32), label="mutation seed"))
    for _ in range(data.draw(st.integers(1, 3), label="rounds")):
        mutated = mutate(target, value, rng)
        if mutated is None:
            break
        value = mutated
    data.draw(st.just(value[:2000]), label="input (first 2000 bytes)")
    TARGETS[target](value)


# -- The config loader ----------------------------------------------------------------------

YAML_ALPHABET = "abkpisr: -[]{},&*!<>#'\"\n\t|?%@`0123456789.eE+_~T"


@PROPERTY
@given(text=st.text(max_size=400) | st.text(alphabet=YAML_ALPHABET, max_size=400))
@example(text="kpis: {}\ncalendar: {holidays: [2026-02-30]}")
@example(text="kpis: {}\ngrace: .inf")
def test_config_loader_takes_any_text(text: str) -> None:
    fuzz_config(text.encode())


_CHILD = """
import json, resource, sys, time, traceback
resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))
from app.config import ConfigError, parse_config
text = sys.stdin.read()
started = time.monotonic()
try:
    parse_config(text, "<hostile>")
except ConfigError as exc:
    outcome = {{"outcome": "ConfigError", "problems": exc.problems[:3]}}
except BaseException as exc:
    outcome = {{"outcome": type(exc).__name__, "traceback": traceback.format_exc()[-2500:]}}
else:
    outcome = {{"outcome": "accepted"}}
outcome["seconds"] = time.monotonic() - started
print(json.dumps(outcome))
"""


def parse_config_isolated(text: str, cwd: Path) -> dict[str, Any]:
    """``parse_config(text)`` in a child with ``HANG_S`` and 2 GiB of address space."""
    try:
        process = subprocess.run([sys.executable, "-c", _CHILD.format(memory=CHILD_MEMORY)],
                                 input=text, capture_output=True, text=True, timeout=HANG_S,
                                 cwd=cwd, check=False)
    except subprocess.TimeoutExpired:
        return {"outcome": f"hang (killed after {HANG_S:g} s)"}
    if process.returncode != 0 or not process.stdout.strip():
        return {"outcome": f"child died ({process.returncode})", "stderr": process.stderr[-2500:]}
    return json.loads(process.stdout.splitlines()[-1])


def _huge_document() -> str:
    """8 MiB: a long flow list under an unknown key (invalid whatever the size limit)."""
    return "kpis: {calls: {count: [call]}}\nnoise: [" + "1, " * ((8 << 20) // 3) + "1]\n"


HOSTILE_CONFIGS = {
    **{name.removesuffix(".yaml"): text for name, text in HOSTILE_YAML.items()},
    "billion-laughs-in-kpis": BILLION_LAUGHS_YAML.replace("kpis: {calls: {count: [call]}}\n", "")
    + "kpis: {calls: {count: *l9}}\n",
    "recursive-list": "kpis: {calls: {count: [call]}}\nx: &a [*a]\n",
    "deep-10k": "kpis: " + "[" * 10_000 + "]" * 10_000 + "\n",
    "deep-block-mapping": "kpis:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 2000)),
    "huge-document": _huge_document(),
    "nul-byte": "kpis: {calls: {count: [call]}}\nx: \x00\n",
    "yaml-1.1-bomb-merge": "kpis: {calls: {count: [call]}}\n"
    + 'a: &a {x: "lol"}\n' + "".join(f"m{i}: &m{i} {{<<: *{'a' if i == 0 else f'm{i - 1}'}}}\n"
                                      for i in range(200)),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_CONFIGS))
def test_hostile_config_is_a_clean_config_error_fast(name: str, tmp_path: Path) -> None:
    """Billion laughs, cyclic aliases, deep nesting, huge documents and values, bad dates:
    a ``ConfigError`` within ``FAST_S``, never a traceback, a hang or a memory blow-up."""
    outcome = parse_config_isolated(HOSTILE_CONFIGS[name], tmp_path)
    assert outcome["outcome"] == "ConfigError", outcome
    assert outcome["seconds"] < FAST_S, outcome


PYTHON_TAGS = [
    "!!python/object/apply:os.system ['touch {marker}']",
    "!!python/object/apply:subprocess.check_call [['touch', '{marker}']]",
    "!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
    "!!python/object/apply:builtins.exec [\"open('{marker}', 'w')\"]",
    "!!python/name:os.system",
    "!!python/module:os",
    "!!python/object:builtins.object {{}}",
    "!<tag:yaml.org,2002:python/object/apply:os.system> ['touch {marker}']",
]


@pytest.mark.parametrize("tag", PYTHON_TAGS)
@pytest.mark.parametrize("place", ["top", "kpi", "alias"])
def test_python_tags_never_execute(tag: str, place: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    value = tag.format(marker=marker)
    text = {"top": value, "kpi": f"kpis: {{calls: {{count: [call]}}}}\ntitle: {value}\n",
            "alias": f"kpis:\n  calls:\n    count: [call]\n    title: &t {value}\nx: *t\n",
            }[place]
    outcome = parse_config_isolated(text, tmp_path)
    assert outcome["outcome"] == "ConfigError", outcome
    refusal = "anchors and aliases" if place == "alias" else "constructor"
    assert refusal in " ".join(outcome["problems"]), outcome
    assert not marker.exists(), "a !!python tag ran code"


def test_config_file_with_invalid_utf8_is_a_config_error(tmp_path: Path) -> None:
    """FINDING: ``load_config`` catches ``OSError`` only; ``read_text`` raises
    ``UnicodeDecodeError`` (a ``ValueError``), so ``crm-pulse check-config`` tracebacks."""
    path = tmp_path / "pulse.yaml"
    path.write_bytes(b"kpis: {calls: {count: [call], title: \"Anrufe \xe4\"}}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in caught.value.problems[0]
