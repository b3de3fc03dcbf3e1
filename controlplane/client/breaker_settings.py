"""Breaker settings: from ``client.breaker(...)`` keyword arguments or a policy spec.

``code_defaults`` turns the keyword arguments of ``client.breaker(...)`` (the
policy's field names; the old short ones warn) into a validated spec, keeping the exception
classes given in code; ``BreakerSettings`` is the effective settings computed
once per policy change from that spec or from the published policy, which the
hot path reads as plain attributes; ``BreakerSettings.classify`` decides, once
per exception class, whether an exception counts as a failure, a success or
neither (``record_exceptions``, ``ignore_exceptions``, by class or dotted name).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from controlplane.client.errors import CircuitOpenError
from controlplane.client.keywords import BREAKER_RENAMED, policy_fields
from controlplane.protocol.schema import BREAKER, EXCEPTION_NAME, validate_spec

# Deprecated keyword arguments of client.breaker(...) -> schema field names.
KWARG_FIELDS: Final = BREAKER_RENAMED

# How an exception counts.
SUCCESS: Final = 0
FAILURE: Final = 1
IGNORE: Final = 2


def exception_name(cls: type[BaseException]) -> str:
    """The name an exception class is listed under in a policy."""
    name = f"{cls.__module__}.{cls.__qualname__}"
    return name if EXCEPTION_NAME.match(name) else cls.__name__


def _resolve_dotted(name: str) -> type | None:
    """The class ``name`` (``requests.Timeout``) names among imported modules, if any."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        target: Any = sys.modules.get(".".join(parts[:cut]))
        if target is None:
            continue
        for part in parts[cut:]:
            target = getattr(target, part, None)
        if isinstance(target, type):
            return target
    return None


def _matches(
    cls: type[BaseException], classes: tuple[type[BaseException], ...], names: frozenset[str]
) -> bool:
    if classes and issubclass(cls, classes):
        return True
    if not names:
        return False
    for klass in cls.__mro__:
        if (
            klass.__name__ in names
            or klass.__qualname__ in names
            or f"{klass.__module__}.{klass.__qualname__}" in names
        ):
            return True
    for name in names:
        if "." in name:
            target = _resolve_dotted(name)
            if target is not None and issubclass(cls, target):
                return True
    return False


@dataclass
class BreakerSettings:
    """Effective settings, computed once per policy change; the hot path reads attributes."""

    spec: dict[str, Any]
    failure_rate: float
    slow_duration: float
    slow_rate: float
    window_type: str
    window_size: int
    minimum_calls: int
    open_for: float
    half_open_calls: int
    observe: bool
    record_classes: tuple[type[BaseException], ...] = ()
    record_names: frozenset[str] = frozenset()
    ignore_classes: tuple[type[BaseException], ...] = ()
    ignore_names: frozenset[str] = frozenset()
    verdicts: dict[type[BaseException], int] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        spec: Mapping[str, Any],
        record_classes: tuple[type[BaseException], ...] = (),
        record_names: Iterable[str] | None = None,
        ignore_classes: tuple[type[BaseException], ...] = (),
        ignore_names: Iterable[str] | None = None,
    ) -> BreakerSettings:
        return cls(
            spec=dict(spec),
            failure_rate=float(spec["failure_rate_threshold"]),
            slow_duration=float(spec["slow_call_duration"]),
            slow_rate=float(spec["slow_call_rate_threshold"]),
            window_type=str(spec["window_type"]),
            window_size=int(spec["window_size"]),
            minimum_calls=int(spec["minimum_calls"]),
            open_for=float(spec["open_for"]),
            half_open_calls=int(spec["half_open_calls"]),
            observe=spec["mode"] == "observe",
            record_classes=record_classes,
            record_names=frozenset(
                spec["record_exceptions"] if record_names is None else record_names
            ),
            ignore_classes=ignore_classes,
            ignore_names=frozenset(
                spec["ignore_exceptions"] if ignore_names is None else ignore_names
            ),
        )

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> BreakerSettings:
        """The code defaults given to ``client.breaker(name, **kwargs)`` (``spec`` lists them)."""
        spec, exceptions = code_defaults(kwargs)
        record = exceptions.get("record_exceptions")
        ignore = exceptions.get("ignore_exceptions")
        return cls.build(
            spec,
            record_classes=record[0] if record else (),
            record_names=record[1] if record else None,
            ignore_classes=ignore[0] if ignore else (),
            ignore_names=ignore[1] if ignore else None,
        )

    def classify(self, cls: type[BaseException]) -> int:
        verdict = self.verdicts.get(cls)
        if verdict is None:
            # A nested breaker's CircuitOpenError is never this breaker's failure.
            nested = issubclass(cls, CircuitOpenError)
            record_all = not (self.record_classes or self.record_names)
            if nested or _matches(cls, self.ignore_classes, self.ignore_names):
                verdict = IGNORE
            elif record_all or _matches(cls, self.record_classes, self.record_names):
                verdict = FAILURE
            else:
                verdict = SUCCESS
            self.verdicts[cls] = verdict
        return verdict


def code_defaults(
    kwargs: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, tuple[tuple[type[BaseException], ...], list[str]]]]:
    """Validate ``client.breaker(...)`` keyword arguments.

    Returns the complete spec (exception classes listed by name) and, for
    record/ignore, the classes and names given in code.
    """
    data = policy_fields(kwargs, BREAKER_RENAMED)
    exceptions: dict[str, tuple[tuple[type[BaseException], ...], list[str]]] = {}
    for name in ("record_exceptions", "ignore_exceptions"):
        if name in data:
            classes, names = _split_exceptions(name, data[name])
            exceptions[name] = (classes, names)
            data[name] = [*names, *(exception_name(c) for c in classes)]
    spec = validate_spec(BREAKER, data)
    return spec, exceptions


def _split_exceptions(key: str, value: Any) -> tuple[tuple[type[BaseException], ...], list[str]]:
    items = [value] if isinstance(value, str | type) else value
    if not isinstance(items, Iterable):
        raise ValueError(f"{key}: give exception classes or their dotted names")
    classes: list[type[BaseException]] = []
    names: list[str] = []
    for item in items:
        if isinstance(item, type) and issubclass(item, BaseException):
            classes.append(item)
        elif isinstance(item, str):
            names.append(item.strip())
        else:
            raise ValueError(f"{key}: {item!r} is neither an exception class nor a class name")
    return tuple(classes), names
