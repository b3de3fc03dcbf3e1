"""Property-based: ``validate_spec`` accepts a valid spec or names the field, nothing else."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from controlplane.protocol.documents import PolicyDocument
from controlplane.protocol.schema import SPECS, PolicyError, validate_spec
from tests.properties import PROPERTIES, kinds, spec_data


def check_outcome(kind: str, data: dict[Any, Any]) -> dict[str, Any] | None:
    """Validate ``data``; assert the result round-trips or the error names its fields."""
    fields = set(SPECS[kind].by_name)
    try:
        spec = validate_spec(kind, data)
    except PolicyError as exc:
        assert exc.errors, "an error must name at least one field"
        named = {str(key) for key in data} | fields
        assert set(exc.errors) <= named, exc.errors
        for field, messages in exc.errors.items():
            assert messages and all(messages)  # non-empty messages
            assert field in str(exc)
        return None
    assert set(spec) == fields
    # Valid stays valid and unchanged: through validation again, JSON (strict: no NaN)
    # and the policy document clients decode.
    assert validate_spec(kind, spec) == spec
    text = json.dumps(spec, allow_nan=False)
    assert validate_spec(kind, json.loads(text)) == spec
    document = PolicyDocument(kind, "p", 1, 1, spec)
    assert PolicyDocument.decode(document.encode()).spec == spec
    return spec


specs = kinds.flatmap(lambda kind: st.tuples(st.just(kind), spec_data(kind)))


@settings(PROPERTIES, max_examples=400)  # no database: cheap, so many examples
@given(case=specs)
# Inputs that once raised another exception than PolicyError:
@example(case=("breaker", {1: "x", "mode": "enforce"}))  # YAML keys need not be text
@example(case=("breaker", {"failure_rate_threshold": 10**400}))  # too big for a float
@example(case=("breaker", {"open_for": 10**400}))
@example(case=("config", {"value_type": "float", "value": 1, "choices": [10**400]}))
@example(case=("config", {"value_type": "integer", "value": 1, "minimum": 10**400}))
@example(case=("config", {"value_type": "string", "pattern": "a{99999999999}"}))
@example(
    case=("config", {"value_type": "json", "value": 1, "json_schema": {"$ref": "https://x.y/s"}})
)
# ... or were accepted but are no JSON, so could not be stored or published as they were:
@example(case=("config", {"value_type": "json", "value": float("nan")}))
@example(case=("config", {"value_type": "json", "value": {"a": [float("inf")]}}))
@example(case=("config", {"value_type": "json", "value": {1: "a"}}))
@example(case=("config", {"value_type": "json", "value": {"on": date(2025, 1, 1)}}))  # YAML
@example(case=("config", {"value_type": "json", "value": {}, "json_schema": {"const": {1, 2}}}))
def test_any_input_is_accepted_valid_or_refused_naming_the_field(
    case: tuple[str, dict[Any, Any]],
) -> None:
    check_outcome(*case)
