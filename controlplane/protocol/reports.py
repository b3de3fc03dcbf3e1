"""The report stream's entries (``docs/protocol.md``, 12.1-12.2): written by clients, read here.

One definition of the fields for both sides. A client writes an entry with
:func:`encode_entry`; the control plane checks one with :func:`read_report`,
as untrusted input, field by field, before anything of it is applied.

Writer::

    encode_entry(entry_type, instance, service, data) -> {field: value}
        The fields of one ``XADD`` (``type``, ``instance``, ``service``, ``data``),
        ``data`` as compact JSON with sorted keys (:func:`encode_data`).

Reader::

    read_report(fields, now=None) -> Heartbeat | Transition | Counters | Discovered | None
        ``None`` for an entry of a type this version does not know; raises
        ``MalformedReport`` naming the first field that breaks the protocol. A
        heartbeat's members are the reader's to check (``Heartbeat.data``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from controlplane.protocol.breaker_state import STATES as BREAKER_STATES
from controlplane.protocol.keys import NAME_PATTERN
from controlplane.protocol.limits import (
    MAX_JSON_DEPTH,
    LimitExceeded,
    check_shape,
    check_size,
)
from controlplane.protocol.schema import KINDS

HEARTBEAT: Final = "heartbeat"
TRANSITION: Final = "transition"
COUNTERS: Final = "counters"
DISCOVERED: Final = "discovered"
REPORT_TYPES: Final = (HEARTBEAT, TRANSITION, COUNTERS, DISCOVERED)
STREAM_MAXLEN: Final = 100_000  # XADD ... MAXLEN ~ 100000

# Lengths of texts, those of the database columns the control plane stores them in.
INSTANCE_LENGTH: Final = 200
SERVICE_LENGTH: Final = 200
STATE_LENGTH: Final = 20
REASON_LENGTH: Final = 100
NAME_LENGTH: Final = 100
KIND_LENGTH: Final = 20
SUBJECT_LENGTH: Final = 200  # a rejected subject is kept up to this many characters
# An entry's ``at`` (the client's clock) is refused outside this window around now:
# a week back covers an ingest stopped over a long weekend, a day ahead a wrong clock.
MAX_REPORT_AGE: Final = 7 * 86_400
MAX_CLOCK_AHEAD: Final = 86_400
MAX_COUNT: Final = 10**12  # one counter of one interval of one instance
MAX_TOP_SUBJECTS: Final = 20  # subjects of ``top_rejected`` kept per entry
# The numeric members of a ``counters`` entry, all kinds together (12.2).
NUMERIC_COUNTERS: Final = (
    "calls",
    "successes",
    "failures",
    "slow",
    "ignored",
    "rejected",
    "would_reject",
    "allowed",
    "fallback",
    "hits",
    "misses",
    "stale_hits",
    "local_hits",
    "errors",
)
_NUMERIC: Final = frozenset(NUMERIC_COUNTERS)

Fields = Mapping[Any, Any]  # an entry's fields as read: bytes (from Redis) or str


def encode_data(data: Mapping[str, Any]) -> str:
    """``data`` (or a heartbeat document of the instances hash) as the protocol writes it."""
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def encode_entry(
    entry_type: str, instance: str, service: str, data: Mapping[str, Any]
) -> dict[str, str]:
    """The fields of one report entry, for ``XADD <stream> MAXLEN ~ STREAM_MAXLEN *``."""
    return {
        "type": entry_type,
        "instance": instance,
        "service": service,
        "data": encode_data(data),
    }


class MalformedReport(ValueError):
    """A report entry that breaks docs/protocol.md, 12.1-12.2; ``field`` names where."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field


@dataclass(frozen=True)
class Heartbeat:
    instance: str
    data: dict[str, Any]  # the heartbeat document, its members unchecked


@dataclass(frozen=True)
class Transition:
    instance: str
    service: str
    name: str  # the breaker's
    from_state: str
    to_state: str
    reason: str
    failure_rate: float | None
    slow_call_rate: float | None
    at: float


@dataclass(frozen=True)
class Counters:
    instance: str
    at: float
    policies: dict[str, dict[str, Any]]  # only the members the live state keeps, checked


@dataclass(frozen=True)
class Discovered:
    service: str
    kind: str
    name: str
    defaults: dict[str, Any]


Report = Heartbeat | Transition | Counters | Discovered


def read_report(fields: Fields, now: float | None = None) -> Report | None:
    """Check one stream entry field by field; None for an entry to ignore (unknown type).

    Raises ``MalformedReport`` naming the first field that breaks the protocol:
    text that is not UTF-8, has a NUL or is longer than the database keeps it, a
    name that is not a policy name, an unknown state, a number that is not finite
    or out of range, ``data`` that is not a JSON object within the size limits.
    """
    now = time.time() if now is None else now
    by_name = {_key(name): value for name, value in fields.items()}
    entry_type = _key(by_name.get("type", ""))
    if entry_type not in REPORT_TYPES:
        return None  # a type of a later protocol version: ignored (docs/protocol.md, 8)
    instance = _stream_text(by_name, "instance", INSTANCE_LENGTH)
    service = _stream_text(by_name, "service", SERVICE_LENGTH, required=False)
    data = _data(by_name)
    if entry_type == HEARTBEAT:
        _at(data, now)  # as every entry's (docs/protocol.md, 12.4)
        return Heartbeat(instance, data)
    if entry_type == TRANSITION:
        return _transition(instance, service, data, now)
    if entry_type == COUNTERS:
        return _counters(instance, data, now)
    return _discovered(service, data)


def _key(name: Any) -> str:
    # A field name that is not UTF-8 is no field the protocol knows: kept apart, ignored.
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


def _stream_text(
    by_name: dict[str, Any], name: str, max_length: int, *, required: bool = True
) -> str:
    value = by_name.get(name)
    if value is None:
        if required:
            raise MalformedReport(name, "is missing")
        return ""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedReport(name, "is not UTF-8") from None
    return _text(value, name, max_length, required=required)


def _text(value: Any, name: str, max_length: int, *, required: bool = True) -> str:
    if not isinstance(value, str):
        raise MalformedReport(name, "is not a string")
    if required and not value:
        raise MalformedReport(name, "is empty")
    if len(value) > max_length:
        raise MalformedReport(name, f"is over {max_length} characters")
    _check_characters(value, name)
    return value


def _check_characters(value: str, name: str) -> None:
    if "\x00" in value:
        raise MalformedReport(name, "contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, from a \ud800 escape in JSON
        raise MalformedReport(name, "is not valid Unicode") from None


def _data(by_name: dict[str, Any]) -> dict[str, Any]:
    raw = by_name.get("data")
    if not isinstance(raw, str | bytes):
        raise MalformedReport("data", "is missing")
    try:
        check_size(raw, what="data")
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        _check_characters(text, "data")
        data = json.loads(text, parse_float=_finite, parse_constant=_not_finite)
        check_shape(data, what="data", text=text)
    except MalformedReport:
        raise
    except LimitExceeded as exc:
        raise MalformedReport("data", str(exc).removeprefix("data ")) from None
    except RecursionError:
        raise MalformedReport("data", f"nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError:  # UnicodeDecodeError included
        raise MalformedReport("data", "is not JSON in UTF-8") from None
    if not isinstance(data, dict):
        raise MalformedReport("data", "is not a JSON object")
    if "\\u" in text:  # only an escape makes a NUL or a lone surrogate in JSON text
        pending: list[Any] = [data]
        while pending:
            item = pending.pop()
            if isinstance(item, dict):
                for key, member in item.items():
                    _check_characters(key, "data")
                    pending.append(member)
            elif isinstance(item, list):
                pending.extend(item)
            elif isinstance(item, str):
                _check_characters(item, "data")
    return data


def _finite(text: str) -> float:
    value = float(text)
    if value - value != 0:  # 1e400
        raise MalformedReport("data", "has a number that is not finite")
    return value


def _not_finite(name: str) -> float:
    raise MalformedReport("data", f"has {name}, which is not a finite number")


def _at(data: dict[str, Any], now: float) -> float:
    """``at``: missing, it is now; else a time at most a week old and a day ahead."""
    value = data.get("at")
    if value is None:
        return now
    if not _is_number(value) or not now - MAX_REPORT_AGE <= value <= now + MAX_CLOCK_AHEAD:
        raise MalformedReport("data.at", "is not a time within a week of now")
    return float(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _policy(data: dict[str, Any], name_field: str = "data.policy") -> tuple[str, str]:
    """``<kind>:<name>`` split, the name checked as a policy name (docs/protocol.md, 2.2)."""
    policy = _text(data.get("policy"), name_field, KIND_LENGTH + 1 + NAME_LENGTH)
    kind, _, name = policy.partition(":")
    if not kind or len(kind) > KIND_LENGTH:
        raise MalformedReport(name_field, "is not <kind>:<name>")
    _check_name(name, name_field)
    return kind, name


def _check_name(name: str, where: str) -> None:
    if len(name) > NAME_LENGTH or not NAME_PATTERN.match(name):
        raise MalformedReport(where, f"has a name that is not a policy name: {name[:40]!r}")


def _state(value: Any, name: str) -> str:
    text = _text(value, name, STATE_LENGTH)
    if text not in BREAKER_STATES:
        raise MalformedReport(name, f"is not a breaker state: {text!r}")
    return text


def _rate(data: dict[str, Any], name: str) -> float | None:
    value = data.get(name)
    if value is None:
        return None
    if not _is_number(value) or not 0 <= value <= 100:
        raise MalformedReport(f"data.{name}", "is not a percentage from 0 to 100")
    return float(value)


def _transition(instance: str, service: str, data: dict[str, Any], now: float) -> Transition | None:
    kind, name = _policy(data)
    if kind != "breaker":
        return None  # only breakers report transitions in version 1
    return Transition(
        instance=instance,
        service=service,
        name=name,
        from_state=_state(data.get("from_state"), "data.from_state"),
        to_state=_state(data.get("to_state"), "data.to_state"),
        reason=_text(data.get("reason", ""), "data.reason", REASON_LENGTH, required=False),
        failure_rate=_rate(data, "failure_rate"),
        slow_call_rate=_rate(data, "slow_call_rate"),
        at=_at(data, now),
    )


def _count(value: Any, where: str, member: str) -> float:
    """``value`` if it is a count; else ``MalformedReport`` naming ``<where>.<member>``
    (made only then: this runs for every counter of every report)."""
    if (type(value) is int or type(value) is float) and 0 <= value <= MAX_COUNT:  # no bool
        return value
    raise MalformedReport(f"{where}.{member}", f"is not a count from 0 to {MAX_COUNT:,}")


def _counters(instance: str, data: dict[str, Any], now: float) -> Counters:
    at = _at(data, now)
    policies = data.get("policies")
    if not isinstance(policies, dict):
        raise MalformedReport("data.policies", "is not an object")
    checked: dict[str, dict[str, Any]] = {}
    # Fields are named without the policy: a warning per kind of problem, not per name.
    where = "data.policies"
    for policy, counters in policies.items():
        kind, _, name = policy.partition(":")
        if kind not in KINDS:
            continue  # a kind of a later version, or a typo: nothing to show
        _check_name(name, where)
        if not isinstance(counters, dict):
            raise MalformedReport(where, "is not an object")
        kept: dict[str, Any] = {
            counter: _count(value, where, counter)
            for counter, value in counters.items()
            if counter in _NUMERIC and value is not None
        }
        if kind == "breaker" and counters.get("state") is not None:
            kept["state"] = _state(counters["state"], f"{where}.state")
        top = counters.get("top_rejected")
        if kind == "rate_limit" and top is not None:
            if not isinstance(top, dict):
                raise MalformedReport(f"{where}.top_rejected", "is not an object")
            kept["top_rejected"] = {
                subject[:SUBJECT_LENGTH]: _count(count, where, "top_rejected")
                for subject, count in list(top.items())[:MAX_TOP_SUBJECTS]
            }
        checked[policy] = kept
    return Counters(instance=instance, at=at, policies=checked)


def _discovered(service: str, data: dict[str, Any]) -> Discovered | None:
    kind, name = _policy(data)
    if kind not in KINDS:
        return None
    defaults = data.get("defaults")
    if not isinstance(defaults, dict):
        raise MalformedReport("data.defaults", "is not an object")
    return Discovered(service=service, kind=kind, name=name, defaults=defaults)
