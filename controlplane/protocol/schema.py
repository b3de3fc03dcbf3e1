"""The policy schema: the one place where every policy field is defined and validated.

Forms, the API, config-as-code import, the publisher and the client library all
call :func:`validate_spec`; a field's type, default, bounds and help text are
written here once. The module is plain Python so the client library can use it
without Django.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final

from controlplane.protocol import json_schema, patterns
from controlplane.protocol.keys import NAME_PATTERN
from controlplane.protocol.limits import (
    MAX_DOCUMENT_BYTES,
    MAX_SAFE_INTEGER,
    LimitExceeded,
    check_shape,
    loads_json,
)
from controlplane.protocol.patterns import PatternError, compile_pattern

BREAKER: Final = "breaker"
RATE_LIMIT: Final = "rate_limit"
CACHE: Final = "cache"
CONFIG: Final = "config"
KIND_LABELS: Final = {
    BREAKER: "Circuit breaker",
    RATE_LIMIT: "Rate limiter",
    CACHE: "Cache",
    CONFIG: "Config entry",
}
KINDS: Final = tuple(KIND_LABELS)

ALGORITHMS: Final = ("token_bucket", "gcra", "fixed_window", "sliding_window")
BURST_ALGORITHMS: Final = ("token_bucket", "gcra")
LIMIT_KEYS: Final = ("global", "user", "ip", "endpoint", "custom")
REDIS_ERROR_ACTIONS: Final = ("allow", "deny", "local")
MODES: Final = ("enforce", "observe")
WINDOW_TYPES: Final = ("count", "time")
CONFIG_TYPES: Final = ("string", "integer", "float", "boolean", "duration", "json")

MAX_DURATION: Final = 366 * 24 * 3600.0  # a year: longer periods are almost surely typos
MAX_COUNT: Final = 1_000_000_000
EXCEPTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})


class PolicyError(ValueError):
    """Invalid policy input; ``errors`` maps each offending field to its messages."""

    def __init__(self, errors: Mapping[str, list[str]]) -> None:
        self.errors: dict[str, list[str]] = {k: list(v) for k, v in errors.items()}
        super().__init__(
            "; ".join(f"{name}: {' '.join(msgs)}" for name, msgs in self.errors.items())
        )


class InvalidValue(Exception):
    """One field's value is unacceptable; the message says why."""


# Value parsers: each takes raw input (from JSON, YAML, a form or code) and
# returns the normalized value or raises InvalidValue.


def parse_duration(value: Any) -> float:
    """Return ``value`` in seconds: a number, a ``timedelta`` or text like ``1h30m``/``250ms``."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise InvalidValue("Enter a duration in seconds, or with a unit such as 30s, 5m, 1h.")
    elif isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            raise InvalidValue("Enter a finite duration.") from None
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION_PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise InvalidValue(
                    "Enter a duration in seconds, or with a unit such as 30s, 5m, 1h."
                ) from None
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    else:
        raise InvalidValue("Enter a duration in seconds, or with a unit such as 30s, 5m, 1h.")
    if not math.isfinite(seconds):
        raise InvalidValue("Enter a finite duration.")
    return seconds


def _parse_int(value: Any) -> int:
    if isinstance(value, bool):
        raise InvalidValue("Enter a whole number.")
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return check_safe_integer(int(value))
    if isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            raise InvalidValue("Enter a whole number.") from None
        return check_safe_integer(number)
    raise InvalidValue("Enter a whole number.")


_UNSAFE_INTEGER: Final = (
    f"Must be between -{MAX_SAFE_INTEGER} and {MAX_SAFE_INTEGER} (2^53 - 1): "
    "larger integers are not exact in every client."
)


def check_safe_integer(number: int) -> int:
    """Return ``number`` if every reader holds it exactly (within +-(2^53 - 1)), else raise."""
    if not -MAX_SAFE_INTEGER <= number <= MAX_SAFE_INTEGER:
        raise InvalidValue(_UNSAFE_INTEGER)
    return number


def _parse_float(value: Any) -> float:
    if isinstance(value, bool):
        raise InvalidValue("Enter a number.")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise InvalidValue("Enter a number.") from None
    except OverflowError:  # an integer beyond any float
        raise InvalidValue("Enter a finite number.") from None
    if not math.isfinite(number):
        raise InvalidValue("Enter a finite number.")
    return number


def parse_bool(value: Any) -> bool:
    """Return ``value`` as a boolean; accepts true/false, 1/0, yes/no, on/off."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise InvalidValue("Enter true or false.")


def check_text(value: str) -> str:
    """Return ``value`` if every database and Redis client can store it, else raise.

    PostgreSQL refuses NUL characters in text and JSON, and a lone surrogate
    (which JSON's ``\\ud800`` escapes can produce) cannot be encoded as UTF-8.
    """
    if "\x00" in value:
        raise InvalidValue("Text cannot contain NUL characters.")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidValue("Text must be valid Unicode (no lone surrogates).") from None
    return value


def check_json(value: Any) -> Any:
    """Return ``value`` if it is plain JSON (what the database, Redis and clients read back
    unchanged) within the depth and size limits, else raise ``InvalidValue`` saying why."""
    try:
        check_shape(value)
    except LimitExceeded as exc:
        raise InvalidValue(str(exc)) from None
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            check_text(item)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidValue("JSON has no NaN or Infinity: enter finite numbers.")
        elif isinstance(item, int) and not isinstance(item, bool):
            check_safe_integer(item)
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            for key, member in item.items():
                if not isinstance(key, str):
                    raise InvalidValue(f"JSON object keys are text, not {key!r}.")
                pending += [key, member]
        elif item is not None and not isinstance(item, bool | int):
            raise InvalidValue("Enter a JSON value.")
    return value


def _parse_text(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidValue("Enter text.")
    return check_text(value).strip()


def _parse_exception_names(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [part for part in re.split(r"[\s,]+", value) if part]
    if not isinstance(value, list | tuple):
        raise InvalidValue("Enter a list of exception class names.")
    names: list[str] = []
    for item in value:
        if not isinstance(item, str) or not EXCEPTION_NAME.match(item):
            raise InvalidValue(f"{item!r} is not a Python class name such as requests.Timeout.")
        if item not in names:
            names.append(item)
    return names


def _parse_any(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class FieldSpec:
    """One policy field: how to parse it, its bounds, default and help text."""

    name: str
    label: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    nullable: bool = False
    widget: str = "text"
    unit: str = ""  # what a number is counted in: "s", "%", "calls"; shown with every value

    def clean(self, raw: Any) -> Any:
        """Return the normalized value of ``raw`` or raise ``InvalidValue``."""
        if raw is None or (isinstance(raw, str) and raw.strip() == "" and self.nullable):
            if self.nullable:
                return None
            raise InvalidValue("This field is required.")
        value = self.parse(raw)
        if self.choices and value not in self.choices:
            raise InvalidValue(f"Choose one of: {', '.join(self.choices)}.")
        if self.minimum is not None:
            if self.exclusive_minimum and value <= self.minimum:
                raise InvalidValue(f"Must be greater than {_fmt(self.minimum)}.")
            if value < self.minimum:
                raise InvalidValue(f"Must be at least {_fmt(self.minimum)}.")
        if self.maximum is not None and value > self.maximum:
            raise InvalidValue(f"Must be at most {_fmt(self.maximum)}.")
        return value


def _fmt(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def _choice(name: str, label: str, choices: tuple[str, ...], default: str, help: str) -> FieldSpec:
    return FieldSpec(name, label, _parse_text, default, help, choices=choices, widget="select")


def _percent(name: str, label: str, default: float, help: str) -> FieldSpec:
    return FieldSpec(
        name,
        label,
        _parse_float,
        default,
        help,
        minimum=0,
        exclusive_minimum=True,
        maximum=100,
        unit="%",
    )


def _duration(
    name: str, label: str, default: float | None, help: str, *, allow_zero: bool = False
) -> FieldSpec:
    return FieldSpec(
        name,
        label,
        parse_duration,
        default,
        help,
        minimum=0,
        exclusive_minimum=not allow_zero,
        maximum=MAX_DURATION,
        widget="duration",
        unit="s",
    )


def _count(
    name: str, label: str, default: int | None, help: str, *, minimum: int = 1, unit: str = ""
) -> FieldSpec:
    return FieldSpec(
        name,
        label,
        _parse_int,
        default,
        help,
        minimum=minimum,
        maximum=MAX_COUNT,
        widget="number",
        unit=unit,
    )


@dataclass(frozen=True)
class KindSpec:
    """The fields of one policy kind and the rules that relate them."""

    kind: str
    fields: tuple[FieldSpec, ...]
    check: Callable[[dict[str, Any], dict[str, list[str]]], None]
    by_name: dict[str, FieldSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {f.name: f for f in self.fields})

    def defaults(self) -> dict[str, Any]:
        return {f.name: _copy(f.default) for f in self.fields}


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


def _check_breaker(spec: dict[str, Any], errors: dict[str, list[str]]) -> None:
    if spec["window_type"] == "count" and spec["minimum_calls"] > spec["window_size"]:
        errors.setdefault("minimum_calls", []).append(
            "Cannot exceed the window size of a count-based window."
        )
    both = set(spec["record_exceptions"]) & set(spec["ignore_exceptions"])
    if both:
        errors.setdefault("ignore_exceptions", []).append(
            f"Listed as both recorded and ignored: {', '.join(sorted(both))}."
        )


def _check_rate_limit(spec: dict[str, Any], errors: dict[str, list[str]]) -> None:
    if spec["algorithm"] in BURST_ALGORITHMS:
        if spec["burst"] is None:
            spec["burst"] = spec["limit"]
    elif spec["burst"] is not None:
        errors.setdefault("burst", []).append(
            f"Only {' and '.join(BURST_ALGORITHMS)} have a burst; leave it empty."
        )
    if spec["key"] == "custom":
        if not spec["custom_key"]:
            errors.setdefault("custom_key", []).append("Name the custom key.")
        elif not NAME_PATTERN.match(spec["custom_key"]):
            errors.setdefault("custom_key", []).append(
                "Use letters, digits, dots, dashes and underscores."
            )
    elif spec["custom_key"]:
        errors.setdefault("custom_key", []).append("Only used when the key is custom.")


def _check_cache(spec: dict[str, Any], errors: dict[str, list[str]]) -> None:
    return None


def _check_config(spec: dict[str, Any], errors: dict[str, list[str]]) -> None:
    value_type = spec["value_type"]
    if value_type not in CONFIG_TYPES:
        return  # already reported on value_type
    numeric = value_type in ("integer", "float", "duration")
    for bound in ("minimum", "maximum", "choices", "pattern", "json_schema"):
        allowed = {
            "minimum": numeric,
            "maximum": numeric,
            "choices": value_type in ("string", "integer", "float"),
            "pattern": value_type == "string",
            "json_schema": value_type == "json",
        }[bound]
        if not allowed and spec[bound] not in (None, [], ""):
            errors.setdefault(bound, []).append(f"Does not apply to {value_type} values.")
    if spec["choices"]:
        try:
            spec["choices"] = [coerce_config_value(value_type, c) for c in spec["choices"]]
        except InvalidValue as exc:
            errors.setdefault("choices", []).append(str(exc))
    if spec["pattern"]:
        try:
            compile_pattern(spec["pattern"])
        except PatternError as exc:
            errors.setdefault("pattern", []).append(f"Not a usable regular expression: {exc}.")
    if spec["json_schema"] is not None:
        _check_json_schema(spec["json_schema"], errors)
    if (
        spec["minimum"] is not None
        and spec["maximum"] is not None
        and spec["minimum"] > spec["maximum"]
    ):
        errors.setdefault("maximum", []).append("Must not be below the minimum.")
    if errors:
        return
    try:
        spec["value"] = check_config_value(spec, spec["value"])
    except InvalidValue as exc:
        errors.setdefault("value", []).append(str(exc))


def _check_json_schema(schema: Any, errors: dict[str, list[str]]) -> None:
    if not isinstance(schema, dict):
        errors.setdefault("json_schema", []).append("Enter a JSON object.")
        return
    try:
        check_json(schema)
    except InvalidValue as exc:
        errors.setdefault("json_schema", []).append(str(exc))
        return
    try:
        json_schema.check_schema(schema)
    except json_schema.SchemaProblem as exc:
        errors.setdefault("json_schema", []).append(str(exc))


def coerce_config_value(value_type: str, raw: Any) -> Any:
    """Return ``raw`` converted to a config entry's ``value_type`` or raise ``InvalidValue``."""
    if value_type == "string":
        if not isinstance(raw, str):
            raise InvalidValue("Enter text.")
        return check_text(raw)
    if value_type == "integer":
        return _parse_int(raw)
    if value_type == "float":
        return _parse_float(raw)
    if value_type == "boolean":
        return parse_bool(raw)
    if value_type == "duration":
        return parse_duration(raw)
    if value_type == "json":
        # Any JSON value, a string included; text from a form is parsed by the form.
        return check_json(raw)
    raise InvalidValue(f"Unknown type {value_type!r}.")


def check_config_value(spec: Mapping[str, Any], raw: Any) -> Any:
    """Return ``raw`` coerced and checked against a config entry's rules."""
    value = coerce_config_value(spec["value_type"], raw)
    if spec.get("minimum") is not None and value < spec["minimum"]:
        raise InvalidValue(f"Must be at least {_fmt(spec['minimum'])}.")
    if spec.get("maximum") is not None and value > spec["maximum"]:
        raise InvalidValue(f"Must be at most {_fmt(spec['maximum'])}.")
    if spec.get("choices") and value not in spec["choices"]:
        raise InvalidValue(f"Choose one of: {', '.join(map(str, spec['choices']))}.")
    if spec.get("pattern"):
        try:
            matched = patterns.fullmatch(spec["pattern"], value)
        except PatternError as exc:
            raise InvalidValue(f"Cannot be checked against the pattern: {exc}.") from None
        if not matched:
            raise InvalidValue(f"Must match the pattern {spec['pattern']}.")
    if spec.get("json_schema") is not None:
        try:
            json_schema.validate(value, spec["json_schema"])
        except json_schema.SchemaProblem as exc:
            raise InvalidValue(str(exc)) from None
    return value


def _parse_choices(value: Any) -> list[Any]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple):
        raise InvalidValue("Enter a list of allowed values.")
    return list(value)


def _parse_json_schema(value: Any) -> Any:
    if isinstance(value, str):
        try:
            value = loads_json(value, what="The JSON schema")
        except LimitExceeded as exc:
            raise InvalidValue(str(exc)) from None
        except ValueError as exc:
            raise InvalidValue(f"Not valid JSON: {exc}.") from None
    return value


def _parse_optional_float(value: Any) -> float:
    return _parse_float(value)


SPECS: Final[dict[str, KindSpec]] = {
    BREAKER: KindSpec(
        BREAKER,
        (
            _percent(
                "failure_rate_threshold",
                "Failure rate threshold",
                50.0,
                "Open when at least this share of recorded calls failed.",
            ),
            _duration(
                "slow_call_duration",
                "Slow call duration",
                60.0,
                "A call that takes at least this long counts as slow.",
            ),
            _percent(
                "slow_call_rate_threshold",
                "Slow call rate threshold",
                100.0,
                "Open when at least this share of recorded calls was slow.",
            ),
            _choice(
                "window_type",
                "Sliding window",
                WINDOW_TYPES,
                "count",
                "Count the last N calls, or the calls of the last N seconds.",
            ),
            _count(
                "window_size",
                "Window size",
                100,
                "Calls (count window) or seconds (time window) the rates are computed over.",
            ),
            _count(
                "minimum_calls",
                "Minimum calls",
                10,
                "No decision to open is taken before this many calls were recorded.",
                unit="calls",
            ),
            _duration("open_for", "Open for", 60.0, "How long to stay open before probing."),
            _count(
                "half_open_calls",
                "Half-open probe calls",
                5,
                "Probe calls allowed across the whole fleet while half-open.",
                unit="calls",
            ),
            FieldSpec(
                "record_exceptions",
                "Exceptions to record",
                _parse_exception_names,
                [],
                "Only these exception classes (and subclasses) count as failures; empty: all.",
                widget="list",
            ),
            FieldSpec(
                "ignore_exceptions",
                "Exceptions to ignore",
                _parse_exception_names,
                [],
                "These exception classes count as neither success nor failure.",
                widget="list",
            ),
            _choice(
                "mode",
                "Mode",
                MODES,
                "enforce",
                "Observe-only records what would have been rejected but lets every call through.",
            ),
        ),
        _check_breaker,
    ),
    RATE_LIMIT: KindSpec(
        RATE_LIMIT,
        (
            _choice(
                "algorithm",
                "Algorithm",
                ALGORITHMS,
                "token_bucket",
                "Token bucket and GCRA smooth traffic and allow bursts; windows count requests.",
            ),
            _count("limit", "Limit", 100, "Requests allowed per period.", unit="requests"),
            _duration("period", "Period", 60.0, "Any length: 1s, 30s, 5m, 1h, 1d..."),
            FieldSpec(
                "burst",
                "Burst",
                _parse_int,
                None,
                "Token bucket and GCRA: requests that may arrive at once (default: the limit).",
                minimum=1,
                maximum=MAX_COUNT,
                nullable=True,
                widget="number",
                unit="requests",
            ),
            _choice(
                "key",
                "Key",
                LIMIT_KEYS,
                "user",
                "What one quota belongs to: everyone, a user, an IP, an endpoint or a custom key.",
            ),
            FieldSpec(
                "custom_key",
                "Custom key name",
                _parse_text,
                "",
                "The name the service passes its custom key under, when the key is custom.",
            ),
            _choice(
                "on_redis_error",
                "When Redis is unreachable",
                REDIS_ERROR_ACTIONS,
                "local",
                "Allow everything, deny everything, or limit each process locally.",
            ),
            _choice(
                "mode",
                "Mode",
                MODES,
                "enforce",
                "Observe-only records what would have been rejected but lets every call through.",
            ),
        ),
        _check_rate_limit,
    ),
    CACHE: KindSpec(
        CACHE,
        (
            _duration("ttl", "TTL", 300.0, "How long a value stays fresh."),
            FieldSpec(
                "enabled",
                "Enabled",
                parse_bool,
                True,
                "When off, every call runs the function.",
                widget="checkbox",
            ),
            _duration(
                "stale_ttl",
                "Stale-while-revalidate window",
                0.0,
                "After the TTL, serve the stale value this long while one caller recomputes.",
                allow_zero=True,
            ),
            _count(
                "local_size",
                "In-process tier size",
                0,
                "Entries each process keeps in memory in front of Redis; 0 turns the tier off.",
                minimum=0,
                unit="entries",
            ),
            FieldSpec(
                "generation",
                "Generation",
                _parse_int,
                0,
                "Bumping it invalidates every entry of this cache at once.",
                minimum=0,
                widget="number",
            ),
        ),
        _check_cache,
    ),
    CONFIG: KindSpec(
        CONFIG,
        (
            _choice(
                "value_type",
                "Type",
                CONFIG_TYPES,
                "string",
                "How the value is parsed and what the client returns.",
            ),
            FieldSpec("value", "Value", _parse_any, "", "The value services read.", widget="value"),
            FieldSpec(
                "minimum",
                "Minimum",
                _parse_optional_float,
                None,
                "Lowest allowed value (integer, float and duration).",
                nullable=True,
                widget="number",
            ),
            FieldSpec(
                "maximum",
                "Maximum",
                _parse_optional_float,
                None,
                "Highest allowed value (integer, float and duration).",
                nullable=True,
                widget="number",
            ),
            FieldSpec(
                "choices",
                "Choices",
                _parse_choices,
                [],
                "Allowed values, comma-separated (string, integer and float).",
                widget="list",
            ),
            FieldSpec(
                "pattern",
                "Pattern",
                _parse_text,
                "",
                "A regular expression the whole value must match (string).",
            ),
            FieldSpec(
                "json_schema",
                "JSON schema",
                _parse_json_schema,
                None,
                "A JSON schema the value must satisfy (json).",
                nullable=True,
                widget="json",
            ),
            FieldSpec("description", "Description", _parse_text, "", "What the entry controls."),
            FieldSpec(
                "secret",
                "Secret",
                parse_bool,
                False,
                "Secret values are never shown in full after saving.",
                widget="checkbox",
            ),
        ),
        _check_config,
    ),
}


def validate_name(name: Any, field_name: str = "name") -> str:
    """Return a valid policy or environment name, or raise ``PolicyError`` naming the field."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise PolicyError(
            {
                field_name: [
                    "Use 1 to 100 letters, digits, dots, dashes and underscores, "
                    "starting with a letter or digit."
                ]
            }
        )
    return name


def kind_spec(kind: Any) -> KindSpec:
    """Return the spec of ``kind`` or raise ``PolicyError`` naming the ``kind`` field."""
    if kind not in SPECS:
        raise PolicyError({"kind": [f"Choose one of: {', '.join(KINDS)}."]})
    return SPECS[kind]


def default_spec(kind: str) -> dict[str, Any]:
    """Return every field of ``kind`` at its default."""
    return kind_spec(kind).defaults()


def validate_spec(
    kind: str, data: Mapping[str, Any], *, base: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Return the complete, normalized spec of a ``kind`` policy built from ``data``.

    Fields missing from ``data`` take their value from ``base`` (an existing
    spec, for partial updates) or else the default. Every problem found is
    reported at once in a ``PolicyError`` keyed by field name.
    """
    spec_def = kind_spec(kind)
    if not isinstance(data, Mapping):
        raise PolicyError({"spec": ["Enter an object of policy fields."]})
    errors: dict[str, list[str]] = {}
    for unknown in sorted(set(data) - set(spec_def.by_name), key=str):  # YAML keys may be numbers
        errors[str(unknown)] = [f"Not a {KIND_LABELS[kind].lower()} field."]
    spec = spec_def.defaults() if base is None else {**spec_def.defaults(), **base}
    for field_spec in spec_def.fields:
        if field_spec.name not in data:
            continue
        try:
            spec[field_spec.name] = field_spec.clean(data[field_spec.name])
        except InvalidValue as exc:
            errors[field_spec.name] = [str(exc)]
    if not errors:
        spec_def.check(spec, errors)
    if not errors:
        _check_size(spec, errors)
    if errors:
        raise PolicyError(errors)
    return spec


def _check_size(spec: dict[str, Any], errors: dict[str, list[str]]) -> None:
    """A spec is published as one document: keep it under the protocol's size limit."""
    sizes = {name: len(json.dumps(value)) for name, value in spec.items()}
    if sum(sizes.values()) > MAX_DOCUMENT_BYTES - 4096:  # room for the envelope
        largest = max(sizes, key=sizes.__getitem__)
        errors.setdefault(largest, []).append(
            f"Too large: a policy is at most {MAX_DOCUMENT_BYTES // (1024 * 1024)} MiB as JSON."
        )


def changed_fields(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> list[str]:
    """Return the names of the fields whose values differ between two specs."""
    old = old or {}
    new = new or {}
    names: Iterable[str] = list(dict.fromkeys([*old, *new]))
    return [name for name in names if old.get(name) != new.get(name)]


SECRET_MASK: Final = "••••••"


def is_secret(kind: str, spec: Mapping[str, Any] | None) -> bool:
    """Whether ``spec`` holds a value never shown in full after saving (a secret config)."""
    return kind == CONFIG and bool((spec or {}).get("secret"))


def masked(kind: str, spec: Mapping[str, Any] | None, mask: Any = SECRET_MASK) -> dict[str, Any]:
    """A copy of ``spec`` whose secret value is replaced by ``mask``.

    ``SECRET_MASK`` for people and the API; an export writes ``None`` ("keep the
    value"), a form an empty field. The audit log keeps fingerprints instead
    (``controlplane.audit.record.spec_changes``), so changes stay visible.
    """
    copy = dict(spec or {})
    if is_secret(kind, copy):
        copy["value"] = mask
    return copy


def value_text(value: Any) -> str:
    """A spec value as plain text, as a form field holds it: no unit, ``""`` for none."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def duration_text(seconds: float) -> str:
    """``seconds`` as people read a setting: ``250 ms``, ``10 s``, ``60 s``, ``5 min``, ``2 h``."""
    if 0 < seconds < 1:
        return f"{seconds * 1000:g} ms"
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 120 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def field_label(kind: str, name: str) -> str:
    """The label people read for field ``name`` of ``kind`` (any other name, made readable)."""
    found = SPECS[kind].by_name.get(name) if kind in SPECS else None
    return found.label if found else name.replace("_", " ").capitalize()


def field_unit(kind: str, name: str, spec: Mapping[str, Any] | None = None) -> str:
    """The unit of field ``name``; a breaker's window size is in calls or seconds by its type."""
    if kind == BREAKER and name == "window_size" and spec:
        return {"count": "calls", "time": "s"}.get(spec.get("window_type", ""), "")
    found = SPECS[kind].by_name.get(name) if kind in SPECS else None
    return found.unit if found else ""


def shown_value(kind: str, name: str, value: Any, spec: Mapping[str, Any] | None = None) -> str:
    """``value`` of field ``name`` with its unit (``10 s``, ``50 %``, ``100 calls``);
    ``""`` for none. ``spec``, the whole spec, settles a unit that depends on another field."""
    unit = field_unit(kind, name, spec)
    if not unit or isinstance(value, bool) or not isinstance(value, int | float):
        return value_text(value)
    if unit == "s":
        return duration_text(float(value))
    if unit.endswith("s") and unit != "s" and value == 1:
        unit = unit[:-1]  # 1 call, 1 request
    return f"{value_text(value)} {unit}"
