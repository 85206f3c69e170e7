"""The validator and the JSON Schema files agree, and the committed files are current."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from factories import event
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.activity import FIELDS, Rejection, validate_event
from schemas.files import HERE, render, schema_documents

EVENT_SCHEMA = schema_documents()["crm.activities.schema.json"]
VALIDATOR = jsonschema.Draft202012Validator(
    EVENT_SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def schema_accepts(value: Any) -> bool:
    return VALIDATOR.is_valid(value)


def validator_accepts(value: Any) -> bool:
    try:
        validate_event(dict(value) if isinstance(value, dict) else value)
    except Rejection:
        return False
    return True


@pytest.mark.parametrize("name", sorted(schema_documents()))
def test_committed_schema_files_are_current(name: str) -> None:
    committed = (HERE / name).read_text(encoding="utf-8")
    assert committed == render(schema_documents()[name]), "run: crm-pulse schemas"


def test_every_field_is_in_the_schema() -> None:
    properties = EVENT_SCHEMA["$defs"]["event"]["properties"]
    assert set(properties) == {f.name for f in FIELDS}


def test_null_optional_fields_are_absent_and_defaults_apply() -> None:
    checked = validate_event({**event(), "action": None, "amount": None})
    assert checked["action"] == "created"
    assert "amount" not in checked


def test_arrays_of_events_are_valid_records() -> None:
    assert schema_accepts([event(), event(type="meeting")])
    assert not schema_accepts([])


_values = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5),
    st.sampled_from(["", "call", "EUR", "eur", "created", "exploded", "2026-11-23T10:00:00Z",
                     "2026-11-23T10:00:00", "2026-11-23T10:00:00+11:00", "1999-01-01T00:00:00Z",
                     "2026-11-23t10:00:00z", "2026-11-23 10:00:00Z", "2026-13-01T00:00:00Z"]),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=400, deadline=None)
@given(overrides=st.dictionaries(st.sampled_from([f.name for f in FIELDS] + ["extra"]),
                                 _values, max_size=4),
       drop=st.sets(st.sampled_from(["event_id", "occurred_at", "user_id", "type"]), max_size=1))
def test_validator_and_schema_agree(overrides: dict[str, Any], drop: set[str]) -> None:
    candidate = {**event(), **overrides}
    for name in drop:
        candidate.pop(name, None)
    assert validator_accepts(candidate) == schema_accepts(candidate), candidate
