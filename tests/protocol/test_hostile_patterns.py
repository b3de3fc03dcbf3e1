"""Users' regular expressions and JSON schemas cannot freeze whoever checks a value.

Each hostile case below held the GIL for seconds to hours under Python's ``re``
and plain ``jsonschema``; the tests would hit pytest's timeout without RE2 and
the step budget. No test asserts a duration: speed is measured in ``bench/``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from controlplane.protocol.documents import PolicyDocument, ProtocolError
from controlplane.protocol.json_schema import MAX_SCHEMA_STEPS
from controlplane.protocol.keys import PROTOCOL_VERSION
from controlplane.protocol.limits import MAX_JSON_DEPTH, MAX_PATTERN_LENGTH
from controlplane.protocol.schema import PolicyError, validate_spec

CATASTROPHIC = "^(a+)+$"
# Python's re backtracks 2^n times on n a's followed by a character that fails.
SUBJECT = "a" * 64 + "!"


def config(**spec: Any) -> dict[str, Any]:
    return validate_spec("config", spec)


def errors_of(**spec: Any) -> dict[str, list[str]]:
    with pytest.raises(PolicyError) as caught:
        validate_spec("config", spec)
    return caught.value.errors


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def test_catastrophic_pattern_is_evaluated_in_linear_time() -> None:
    errors = errors_of(value_type="string", value=SUBJECT, pattern=CATASTROPHIC)
    assert errors == {"value": [f"Must match the pattern {CATASTROPHIC}."]}
    assert config(value_type="string", value="a" * 64, pattern=CATASTROPHIC)["value"] == "a" * 64


@pytest.mark.parametrize("pattern", [r"(a)\1", "a(?=b)", "(?<!x)a", "(?P<n>a)(?P=n)"])
def test_pattern_re2_cannot_run_is_refused_naming_the_field(pattern: str) -> None:
    errors = errors_of(value_type="string", value="ab", pattern=pattern)
    assert list(errors) == ["pattern"]
    assert "backreferences and look-around are not supported" in errors["pattern"][0]


def test_overlong_pattern_is_refused() -> None:
    errors = errors_of(value_type="string", value="a", pattern="a" * (MAX_PATTERN_LENGTH + 1))
    assert f"at most {MAX_PATTERN_LENGTH} characters" in errors["pattern"][0]


def test_json_schema_pattern_is_evaluated_in_linear_time() -> None:
    errors = errors_of(value_type="json", value=SUBJECT, json_schema={"pattern": CATASTROPHIC})
    assert "does not match" in errors["value"][0]


def test_json_schema_pattern_properties_are_evaluated_in_linear_time() -> None:
    schema = {"patternProperties": {CATASTROPHIC: {"type": "string"}}}
    assert config(value_type="json", value={SUBJECT: 1}, json_schema=schema)["value"] == {
        SUBJECT: 1
    }
    errors = errors_of(value_type="json", value={"a" * 64: 1}, json_schema=schema)
    assert "is not of type 'string'" in errors["value"][0]


def test_json_schema_pattern_re2_cannot_run_is_refused_naming_the_field() -> None:
    schemas: list[dict[str, Any]] = [{"pattern": r"(a)\1"}, {"patternProperties": {"(?=a)": {}}}]
    for schema in schemas:
        errors = errors_of(value_type="json", value="x", json_schema=schema)
        assert list(errors) == ["json_schema"]


def test_json_schema_whose_refs_double_the_work_is_refused_within_the_budget() -> None:
    definitions: dict[str, Any] = {"a0": {"type": "integer"}}
    for level in range(1, 40):  # a39 would check "integer" 2^39 times
        below = {"$ref": f"#/$defs/a{level - 1}"}
        definitions[f"a{level}"] = {"allOf": [below, below]}
    schema = {"$defs": definitions, "$ref": "#/$defs/a39"}
    errors = errors_of(value_type="json", value=1, json_schema=schema)
    assert errors == {
        "value": [
            f"Checking the value against the JSON schema takes over {MAX_SCHEMA_STEPS:,} "
            "steps; simplify the schema."
        ]
    }


def test_json_schema_that_refers_to_itself_without_end_is_refused() -> None:
    schema = {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}
    errors = errors_of(value_type="json", value=1, json_schema=schema)
    assert list(errors) == ["value"]


def test_json_schema_still_checks_ordinary_values() -> None:
    schema = {"type": "object", "properties": {"port": {"type": "integer", "minimum": 1}}}
    assert config(value_type="json", value={"port": 80}, json_schema=schema)["value"] == {
        "port": 80
    }
    errors = errors_of(value_type="json", value={"port": 0}, json_schema=schema)
    assert errors["value"][0].startswith("Does not match the JSON schema: 0 is less than")


def test_value_nested_beyond_the_limit_is_refused() -> None:
    assert config(value_type="json", value=nested(MAX_JSON_DEPTH - 1))["value"]
    errors = errors_of(value_type="json", value=nested(500))
    assert errors == {"value": [f"The value nests deeper than {MAX_JSON_DEPTH} levels."]}


def test_value_whose_shared_members_explode_is_refused_without_walking_them() -> None:
    # What a YAML alias bomb parses to: each level lists the one below ten times.
    value: Any = ["x"]
    for _ in range(9):
        value = [value] * 10
    errors = errors_of(value_type="json", value=value)
    assert "members" in errors["value"][0]


def test_json_schema_text_nested_beyond_the_limit_is_refused() -> None:
    text = "[" * 5000 + "]" * 5000
    errors = errors_of(value_type="json", value=1, json_schema=text)
    assert list(errors) == ["json_schema"]


def test_oversized_value_is_refused() -> None:
    errors = errors_of(value_type="string", value="x" * (2 * 1024 * 1024))
    assert errors == {"value": ["Too large: a policy is at most 1 MiB as JSON."]}


def document(spec: dict[str, Any]) -> str:
    return json.dumps(
        {
            "schema": PROTOCOL_VERSION,
            "kind": "config",
            "name": "r",
            "version": 1,
            "revision": 1,
            "spec": spec,
        }
    )


def test_redis_document_with_catastrophic_pattern_is_decoded_in_linear_time() -> None:
    raw = document({"value_type": "string", "value": SUBJECT, "pattern": CATASTROPHIC})
    with pytest.raises(ProtocolError, match="Must match the pattern"):
        PolicyDocument.decode(raw)
    raw = document(
        {"value_type": "json", "value": SUBJECT, "json_schema": {"pattern": CATASTROPHIC}}
    )
    with pytest.raises(ProtocolError, match="does not match"):
        PolicyDocument.decode(raw)


def test_redis_document_nested_too_deep_is_refused() -> None:
    raw = document({"value_type": "json", "value": nested(200)})
    with pytest.raises(ProtocolError, match="nests deeper"):
        PolicyDocument.decode(raw)
    with pytest.raises(ProtocolError, match="nests deeper"):
        PolicyDocument.decode("[" * 100_000 + "]" * 100_000)


def test_redis_document_over_the_size_limit_is_refused_before_parsing() -> None:
    with pytest.raises(ProtocolError, match="over 1 MiB"):
        PolicyDocument.decode(b'"' + b"x" * (1024 * 1024) + b'"')
