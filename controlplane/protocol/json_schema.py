"""JSON schemas written by users, checked with bounded work.

A config entry of type ``json`` may carry a JSON schema. Three things in plain
``jsonschema`` let one schema freeze whoever checks a value against it, the
control plane or any client that has ``jsonschema`` installed:

- ``pattern``, ``patternProperties`` and the ``regex`` format run Python's
  backtracking ``re``; here they run RE2 (:mod:`controlplane.protocol.patterns`);
- ``$ref`` chains double the work per link (``a1`` = ``allOf: [a0, a0]``...), and a
  schema that refers to itself recurses without end; here every keyword checked
  counts against ``MAX_SCHEMA_STEPS``, and a check over budget is refused;
- the schema and the value are bounded in size and depth by
  :mod:`controlplane.protocol.limits` before either is used.

``jsonschema`` is optional for the client library: without it the client trusts
the control plane, which checked the value before publishing it.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Iterator
from typing import Any, Final

from controlplane.protocol.patterns import PatternError, compile_pattern, search

MAX_SCHEMA_STEPS: Final = 3_000  # keywords evaluated for one value: ~30 ms at worst


class SchemaProblem(ValueError):
    """The schema is invalid, or the value does not satisfy it; the message says how."""


class _OverBudget(Exception):
    pass


_steps: contextvars.ContextVar[list[int]] = contextvars.ContextVar("json_schema_steps")


def check_schema(schema: dict[str, Any]) -> None:
    """Raise ``SchemaProblem`` unless ``schema`` is a valid 2020-12 schema RE2 can run."""
    jsonschema = _jsonschema()
    if jsonschema is None:
        return
    try:
        jsonschema.Draft202012Validator.check_schema(schema, format_checker=_formats())
    except jsonschema.SchemaError as exc:
        raise SchemaProblem(f"Not a valid JSON schema: {exc.message}") from None


def validate(value: Any, schema: dict[str, Any]) -> None:
    """Raise ``SchemaProblem`` unless ``value`` satisfies ``schema``, within the budget."""
    jsonschema = _jsonschema()
    if jsonschema is None:
        return
    import referencing.exceptions

    validator = _validator_class()(schema)
    token = _steps.set([MAX_SCHEMA_STEPS])
    try:
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    except _OverBudget:
        raise SchemaProblem(
            f"Checking the value against the JSON schema takes over {MAX_SCHEMA_STEPS:,} "
            "steps; simplify the schema."
        ) from None
    except RecursionError:
        raise SchemaProblem("The JSON schema refers to itself without end.") from None
    except referencing.exceptions.Unresolvable as exc:  # a $ref to nowhere
        raise SchemaProblem(f"The JSON schema refers to what it does not define: {exc}") from None
    except PatternError as exc:  # only a schema that skipped check_schema gets here
        raise SchemaProblem(f"The JSON schema has a pattern that {exc}.") from None
    finally:
        _steps.reset(token)
    if error is not None:
        raise SchemaProblem(f"Does not match the JSON schema: {error.message}")


def _jsonschema() -> Any:
    try:
        import jsonschema
    except ImportError:  # the client library runs without jsonschema
        return None
    return jsonschema


@functools.cache
def _formats() -> Any:
    """The default format checker, with ``regex`` checked by RE2."""
    import jsonschema

    checker = jsonschema.FormatChecker()

    @checker.checks("regex", raises=PatternError)
    def is_re2(instance: object) -> bool:
        if isinstance(instance, str):
            compile_pattern(instance)
        return True

    return checker


@functools.cache
def _validator_class() -> Any:
    import jsonschema

    base = jsonschema.Draft202012Validator
    counted = {name: _counted(check) for name, check in base.VALIDATORS.items()}
    counted["pattern"] = _counted(_pattern)
    counted["patternProperties"] = _counted(_pattern_properties)
    return jsonschema.validators.extend(base, counted)  # type: ignore[no-untyped-call]


def _counted(check: Callable[..., Any]) -> Callable[..., Iterator[Any]]:
    def counted_check(validator: Any, value: Any, instance: Any, schema: Any) -> Iterator[Any]:
        budget = _steps.get(None)
        if budget is not None:
            budget[0] -= 1
            if budget[0] < 0:
                raise _OverBudget
        return check(validator, value, instance, schema) or iter(())

    return counted_check


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    import jsonschema

    if validator.is_type(instance, "string") and not search(pattern, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: Any
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, member in instance.items():
            if search(pattern, key):
                yield from validator.descend(member, subschema, path=key, schema_path=pattern)
