from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from controlplane.protocol.schema import (
    KINDS,
    SPECS,
    PolicyError,
    default_spec,
    parse_duration,
    validate_name,
    validate_spec,
)

# One unacceptable value for every field of every kind.
BAD_VALUES: dict[str, dict[str, Any]] = {
    "breaker": {
        "failure_rate_threshold": 0,
        "slow_call_duration": "soon",
        "slow_call_rate_threshold": 101,
        "window_type": "sliding",
        "window_size": 0,
        "minimum_calls": -1,
        "open_for": -5,
        "half_open_calls": 1.5,
        "record_exceptions": ["not a class"],
        "ignore_exceptions": 42,
        "mode": "shadow",
    },
    "rate_limit": {
        "algorithm": "leaky_bucket",
        "limit": 0,
        "period": "0s",
        "burst": 0,
        "key": "session",
        "custom_key": 7,
        "on_redis_error": "retry",
        "mode": True,
    },
    "cache": {
        "ttl": 0,
        "enabled": "maybe",
        "stale_ttl": -1,
        "local_size": -10,
        "generation": -1,
    },
    "config": {
        "value_type": "date",
        "value": "many",  # with the default type "string" replaced below
        "minimum": "low",
        "maximum": "high",
        "choices": 5,
        "pattern": "([",
        "json_schema": '{"type": 12}',
        "description": ["not", "text"],
        "secret": "perhaps",
    },
}
# Fields whose bad value depends on another field.
CONTEXT: dict[tuple[str, str], dict[str, Any]] = {
    ("config", "value"): {"value_type": "integer"},
    ("config", "minimum"): {"value_type": "integer", "value": 1},
    ("config", "maximum"): {"value_type": "integer", "value": 1},
    ("config", "pattern"): {"value_type": "string"},
    ("config", "json_schema"): {"value_type": "json", "value": {}},
}


def every_field() -> list[tuple[str, str]]:
    return [(kind, spec.name) for kind in KINDS for spec in SPECS[kind].fields]


def test_every_field_has_a_bad_value_in_this_test() -> None:
    assert sorted(every_field()) == sorted(
        (kind, name) for kind, fields in BAD_VALUES.items() for name in fields
    )


@pytest.mark.parametrize(("kind", "field"), every_field())
def test_bad_value_is_refused_naming_the_field(kind: str, field: str) -> None:
    data = {**CONTEXT.get((kind, field), {}), field: BAD_VALUES[kind][field]}
    with pytest.raises(PolicyError) as caught:
        validate_spec(kind, data)
    assert field in caught.value.errors
    assert field in str(caught.value)


@pytest.mark.parametrize("kind", KINDS)
def test_defaults_are_valid(kind: str) -> None:
    assert validate_spec(kind, {}) == validate_spec(kind, default_spec(kind))


def test_unknown_field_is_named() -> None:
    with pytest.raises(PolicyError) as caught:
        validate_spec("breaker", {"failure_threshold": 5})
    assert list(caught.value.errors) == ["failure_threshold"]


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(PolicyError) as caught:
        validate_spec("bulkhead", {})
    assert list(caught.value.errors) == ["kind"]


def test_all_errors_are_reported_at_once() -> None:
    with pytest.raises(PolicyError) as caught:
        validate_spec("rate_limit", {"limit": -1, "period": "never"})
    assert set(caught.value.errors) == {"limit", "period"}


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        (30, 30.0),
        (0.25, 0.25),
        ("45", 45.0),
        ("250ms", 0.25),
        ("1h30m", 5400.0),
        ("2d", 172800.0),
        ("1.5s", 1.5),
        (timedelta(minutes=5), 300.0),
    ],
)
def test_durations_accept_numbers_units_and_timedeltas(raw: Any, seconds: float) -> None:
    assert parse_duration(raw) == seconds


def test_rate_limit_period_can_be_any_length() -> None:
    assert validate_spec("rate_limit", {"period": "7m13s"})["period"] == 433.0


def test_burst_defaults_to_the_limit_for_token_bucket() -> None:
    spec = validate_spec("rate_limit", {"algorithm": "token_bucket", "limit": 40})
    assert spec["burst"] == 40


def test_burst_is_refused_for_window_algorithms() -> None:
    with pytest.raises(PolicyError) as caught:
        validate_spec("rate_limit", {"algorithm": "fixed_window", "burst": 10})
    assert list(caught.value.errors) == ["burst"]


def test_custom_key_is_required_for_a_custom_key() -> None:
    with pytest.raises(PolicyError) as caught:
        validate_spec("rate_limit", {"key": "custom"})
    assert list(caught.value.errors) == ["custom_key"]
    assert validate_spec("rate_limit", {"key": "custom", "custom_key": "tenant"})["custom_key"] == (
        "tenant"
    )


def test_minimum_calls_cannot_exceed_a_count_window() -> None:
    with pytest.raises(PolicyError) as caught:
        validate_spec("breaker", {"window_size": 10, "minimum_calls": 11})
    assert list(caught.value.errors) == ["minimum_calls"]
    # A time window counts seconds, so the rule does not apply.
    spec = validate_spec("breaker", {"window_type": "time", "window_size": 10, "minimum_calls": 11})
    assert spec["minimum_calls"] == 11


def test_exception_lists_accept_comma_separated_text() -> None:
    spec = validate_spec("breaker", {"record_exceptions": "requests.Timeout, OSError"})
    assert spec["record_exceptions"] == ["requests.Timeout", "OSError"]


def test_an_exception_cannot_be_recorded_and_ignored() -> None:
    with pytest.raises(PolicyError) as caught:
        validate_spec(
            "breaker", {"record_exceptions": ["OSError"], "ignore_exceptions": ["OSError"]}
        )
    assert list(caught.value.errors) == ["ignore_exceptions"]


@pytest.mark.parametrize(
    ("data", "value"),
    [
        ({"value_type": "integer", "value": "12"}, 12),
        ({"value_type": "float", "value": "0.5"}, 0.5),
        ({"value_type": "boolean", "value": "on"}, True),
        ({"value_type": "duration", "value": "2m"}, 120.0),
        ({"value_type": "json", "value": {"a": [1, 2]}}, {"a": [1, 2]}),
        ({"value_type": "json", "value": "just text"}, "just text"),
        ({"value_type": "string", "value": "blue", "choices": "red, blue"}, "blue"),
    ],
)
def test_config_values_are_converted_to_their_type(data: dict[str, Any], value: Any) -> None:
    assert validate_spec("config", data)["value"] == value


@pytest.mark.parametrize(
    "data",
    [
        {"value_type": "integer", "value": 0, "minimum": 1},
        {"value_type": "integer", "value": 9, "maximum": 8},
        {"value_type": "string", "value": "green", "choices": ["red", "blue"]},
        {"value_type": "string", "value": "abc1", "pattern": "[a-z]+"},
        {
            "value_type": "json",
            "value": {"a": "x"},
            "json_schema": {"properties": {"a": {"type": "integer"}}},
        },
    ],
)
def test_config_value_must_satisfy_its_rules(data: dict[str, Any]) -> None:
    with pytest.raises(PolicyError) as caught:
        validate_spec("config", data)
    assert list(caught.value.errors) == ["value"]


def test_config_rules_that_do_not_fit_the_type_are_refused() -> None:
    with pytest.raises(PolicyError) as caught:
        validate_spec("config", {"value_type": "boolean", "value": True, "pattern": "x"})
    assert list(caught.value.errors) == ["pattern"]


def test_partial_update_keeps_the_other_fields() -> None:
    base = validate_spec("breaker", {"open_for": 10})
    assert validate_spec("breaker", {"mode": "observe"}, base=base)["open_for"] == 10.0


@pytest.mark.parametrize(
    "name", ["", "has space", "-leading", "x" * 101, "br{ace}", "trailing\n", None]
)
def test_bad_names_are_refused(name: Any) -> None:
    with pytest.raises(PolicyError) as caught:
        validate_name(name)
    assert list(caught.value.errors) == ["name"]


@pytest.mark.parametrize(
    ("kind", "data", "field"),
    [
        ("cache", {"generation": 2**53}, "generation"),
        ("cache", {"generation": "9007199254740992"}, "generation"),
        ("cache", {"generation": 1e300}, "generation"),
        ("config", {"value_type": "integer", "value": 2**53}, "value"),
        ("config", {"value_type": "integer", "value": -(2**53)}, "value"),
        ("config", {"value_type": "integer", "value": 1, "choices": [1, 2**60]}, "choices"),
        ("config", {"value_type": "json", "value": {"ids": [2**53]}}, "value"),
        (
            "config",
            {"value_type": "json", "value": 1, "json_schema": {"maximum": 2**64}},
            "json_schema",
        ),
    ],
)
def test_integers_beyond_2_53_are_refused_naming_the_field(
    kind: str, data: dict[str, Any], field: str
) -> None:
    with pytest.raises(PolicyError) as refused:
        validate_spec(kind, data)
    assert "2^53 - 1" in refused.value.errors[field][0]


def test_integers_up_to_2_53_are_kept_exactly() -> None:
    largest = 2**53 - 1
    assert validate_spec("cache", {"generation": largest})["generation"] == largest
    config = validate_spec("config", {"value_type": "integer", "value": -largest})
    assert config["value"] == -largest
    assert validate_spec("config", {"value_type": "json", "value": [largest]})["value"] == [largest]
