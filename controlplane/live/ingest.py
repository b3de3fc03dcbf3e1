"""Ingest what clients report, once per report however many replicas run.

Each control-plane process reads the environments' report streams through one
consumer group, so every entry is processed by one replica: counters and
breaker states go to the live state in Redis (shared by all replicas),
transitions and discovered names to the database. Each batch then tells every
replica's open dashboards, through the channel layer, which policies changed.
Entries a dead replica left pending are claimed after a minute.

Entries are untrusted input: read undecoded, each is checked field by field
(``read_report``) before it touches Redis or the database. A malformed one is
counted, skipped and acknowledged with its batch, and one warning per kind of
problem says so every few minutes; the valid entries around it are applied.
Only an outage (Redis or the database unreachable) leaves a batch pending.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from django.db import DatabaseError, close_old_connections, models, transaction

from controlplane.client.breaker import STATES as BREAKER_STATES
from controlplane.live import state
from controlplane.live.models import BreakerEvent, DiscoveredName
from controlplane.live.push import notify
from controlplane.ops.metrics import DATABASE_ERRORS, REPORTS_INGESTED
from controlplane.ops.outage import DATABASE_UNAVAILABLE, Outage
from controlplane.policies.models import Environment, Policy
from controlplane.protocol.connection import is_cluster
from controlplane.protocol.keys import NAME_PATTERN
from controlplane.protocol.limits import MAX_JSON_DEPTH, LimitExceeded, check_shape, check_size
from controlplane.protocol.schema import KINDS
from controlplane.redis_connection import get_redis

logger = logging.getLogger(__name__)

GROUP = "controlplane"
REPORT_TYPES = ("heartbeat", "transition", "counters", "discovered")
BATCH = 500
CLAIM_IDLE_MS = 60_000
CLUSTER_POLL_INTERVAL = 0.05  # seconds between reads of idle streams on a Redis Cluster
# An entry's ``at`` (the client's clock) is refused outside this window around now:
# a week back covers an ingest stopped over a long weekend, a day ahead a wrong clock.
MAX_REPORT_AGE = 7 * 86_400
MAX_CLOCK_AHEAD = 86_400
MAX_COUNT = 10**12  # one counter of one interval of one instance
MAX_TOP_SUBJECTS = 20  # subjects of ``top_rejected`` kept per entry

Fields = Mapping[Any, Any]  # an entry's fields as read: bytes (from Redis) or str


def _max_length(model: type[models.Model], name: str) -> int:
    length = model._meta.get_field(name).max_length  # type: ignore[union-attr]
    assert isinstance(length, int)
    return length


INSTANCE_LENGTH = _max_length(BreakerEvent, "instance")
SERVICE_LENGTH = min(_max_length(BreakerEvent, "service"), _max_length(DiscoveredName, "service"))
STATE_LENGTH = _max_length(BreakerEvent, "to_state")
REASON_LENGTH = _max_length(BreakerEvent, "reason")
NAME_LENGTH = min(_max_length(BreakerEvent, "name"), _max_length(DiscoveredName, "name"))
KIND_LENGTH = _max_length(DiscoveredName, "kind")


def ensure_group(client: redis.Redis, stream: str) -> None:
    try:
        client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class MalformedReport(ValueError):
    """A report entry that breaks docs/protocol.md, 12.1-12.2; ``field`` names where."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field


@dataclass(frozen=True)
class Heartbeat:
    instance: str


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
    if entry_type == "heartbeat":
        try:
            state.heartbeat_instance(instance, data)
        except ValueError as exc:
            raise MalformedReport("data", f"is not a heartbeat: {exc}") from None
        return Heartbeat(instance)
    if entry_type == "transition":
        return _transition(instance, service, data, now)
    if entry_type == "counters":
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
        check_shape(data, what="data")
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


def _count(value: Any, name: str) -> float:
    if (type(value) is int or type(value) is float) and 0 <= value <= MAX_COUNT:  # no bool
        return value
    raise MalformedReport(name, f"is not a count from 0 to {MAX_COUNT:,}")


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
            counter: _count(counters[counter], f"{where}.{counter}")
            for counter in state.NUMERIC_COUNTERS
            if counters.get(counter) is not None
        }
        if kind == "breaker" and counters.get("state") is not None:
            kept["state"] = _state(counters["state"], f"{where}.state")
        top = counters.get("top_rejected")
        if kind == "rate_limit" and top is not None:
            if not isinstance(top, dict):
                raise MalformedReport(f"{where}.top_rejected", "is not an object")
            kept["top_rejected"] = {
                subject[: state.SUBJECT_LENGTH]: _count(count, f"{where}.top_rejected")
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


@dataclass
class Changes:
    """What a batch of reports changed: ``state`` (transitions) is pushed sooner than figures."""

    figures: set[str] = field(default_factory=set)
    state: set[str] = field(default_factory=set)

    @property
    def all(self) -> set[str]:
        return self.figures | self.state


def process_entries(
    environment: Environment,
    entries: Sequence[tuple[Any, Fields]],
    skipped: state.SkippedEntries | None = None,
) -> Changes:
    """Apply one environment's entries; return the policy fields (and ``@instances``) changed.

    Malformed entries are skipped and reported to ``skipped`` (by default, one
    warning per kind of problem in this batch). Raises only when Redis or the
    database cannot be reached: the batch is then to be read again.
    """
    skipped = skipped or state.SkippedEntries(logger, "report entries")
    keys = environment.keys()
    now = time.time()
    events: list[BreakerEvent] = []
    changes = Changes()
    discovered: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
    with get_redis().pipeline(transaction=False) as pipe:
        for entry_id, fields in entries:
            try:
                report = read_report(fields, now)
            except MalformedReport as exc:
                REPORTS_INGESTED.labels("malformed").inc()
                skipped.skip(exc.field, f"{exc} (entry {_id(entry_id)} of {environment.name})")
                continue
            REPORTS_INGESTED.labels(_type_label(report)).inc()
            if isinstance(report, Counters):
                changes.figures |= state.record_counters(
                    pipe, keys, report.instance, report.at, report.policies
                )
            elif isinstance(report, Transition):
                state.record_breaker_state(
                    pipe, keys, report.name, report.instance, report.to_state, report.at
                )
                events.append(
                    BreakerEvent(
                        environment=environment,
                        name=report.name,
                        instance=report.instance,
                        service=report.service,
                        from_state=report.from_state,
                        to_state=report.to_state,
                        reason=report.reason,
                        failure_rate=report.failure_rate,
                        slow_call_rate=report.slow_call_rate,
                        at=datetime.fromtimestamp(report.at, tz=UTC),
                    )
                )
                changes.state.add(f"breaker:{report.name}")
            elif isinstance(report, Heartbeat):
                changes.figures.add("@instances")
            elif isinstance(report, Discovered):
                discovered[(report.kind, report.name)] = (report.defaults, report.service)
        # A command Redis refuses (a live key of the wrong type, say) costs that write;
        # an unreachable Redis still raises, and the batch is read again.
        for result in pipe.execute(raise_on_error=False):
            if isinstance(result, redis.ResponseError):
                skipped.skip("live state", f"Redis refused a write of the live state: {result}")
    if events:
        _store_events(events, skipped)
    if discovered:
        _record_discovered(environment, discovered, skipped)
        changes.figures.add("@discovered")
    return changes


def _id(entry_id: Any) -> str:
    return entry_id.decode("ascii", "replace") if isinstance(entry_id, bytes) else str(entry_id)


def _type_label(report: Report | None) -> str:
    if isinstance(report, Heartbeat):
        return "heartbeat"
    if isinstance(report, Transition):
        return "transition"
    if isinstance(report, Counters):
        return "counters"
    if isinstance(report, Discovered):
        return "discovered"
    return "other"


def _store_events(events: list[BreakerEvent], skipped: state.SkippedEntries) -> None:
    """Insert the events at once; if the database refuses one, each on its own."""
    try:
        with transaction.atomic():
            BreakerEvent.objects.bulk_create(events)
        return
    except DATABASE_UNAVAILABLE:
        raise
    except (DatabaseError, ValueError):
        pass
    for event in events:
        event.pk = None  # in case the failed insert had numbered it
        _save_alone(event.save, skipped, f"breaker event {event.name} from {event.instance[:40]}")


def _save_alone(save: Callable[[], object], skipped: state.SkippedEntries, what: str) -> None:
    """Run ``save`` in a savepoint of its own: a row the database refuses costs that row."""
    try:
        with transaction.atomic():
            save()
    except DATABASE_UNAVAILABLE:
        raise
    except (DatabaseError, ValueError) as exc:  # psycopg refuses a NUL with ValueError
        skipped.skip("database", f"the database refused {what}: {exc}")


def _record_discovered(
    environment: Environment,
    found: dict[tuple[str, str], tuple[dict[str, Any], str]],
    skipped: state.SkippedEntries,
) -> None:
    managed = set(
        Policy.objects.filter(environment=environment, deleted=False).values_list("kind", "name")
    )
    now = datetime.now(UTC)
    for (kind, name), (defaults, service) in found.items():
        if (kind, name) not in managed:
            save = functools.partial(
                DiscoveredName.objects.update_or_create,
                environment=environment,
                kind=kind,
                name=name,
                defaults={"defaults": defaults, "service": service, "last_seen": now},
            )
            _save_alone(save, skipped, f"discovered {kind}:{name}")


Entries = list[tuple[str, dict[bytes, bytes]]]


def read_group(
    client: redis.Redis, consumer: str, streams: list[str], block_ms: int | None = None
) -> list[tuple[str, Entries]]:
    """New entries of ``streams`` for ``consumer``, undecoded: a field that is not UTF-8
    must cost its entry, not the batch it came in."""
    args: list[Any] = ["XREADGROUP", "GROUP", GROUP, consumer, "COUNT", BATCH]
    if block_ms is not None:
        args += ["BLOCK", block_ms]
    args += ["STREAMS", *streams, *[">"] * len(streams)]
    reply: Any = state.undecoded(client, *args)
    return [(_id(stream), _entries(entries)) for stream, entries in reply or []]


def claim_abandoned(client: redis.Redis, consumer: str, stream: str) -> Entries:
    """Entries of ``stream`` left pending by a dead consumer for ``CLAIM_IDLE_MS``, undecoded."""
    reply: Any = state.undecoded(
        client, "XAUTOCLAIM", stream, GROUP, consumer, CLAIM_IDLE_MS, "0-0", "COUNT", BATCH
    )
    return _entries(reply[1])


def _entries(raw: Any) -> Entries:
    # An entry trimmed from the stream while pending comes back without fields.
    return [(_id(entry_id), fields) for entry_id, fields in raw or [] if fields is not None]


class Ingestor(threading.Thread):
    """Background thread of each control-plane process: read, apply, acknowledge, announce."""

    def __init__(self, block_ms: int = 1000) -> None:
        super().__init__(name="controlplane-ingest", daemon=True)
        self.block_ms = block_ms
        self.consumer = f"{socket.gethostname()}:{os.getpid()}"
        self._stop_event = threading.Event()
        self.processed = 0
        self.skipped = state.SkippedEntries(logger, "report entries")

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)

    def run(self) -> None:
        environments: dict[str, Environment] = {}
        next_refresh = 0.0
        next_claim = 0.0
        database = Outage(
            logger,
            DATABASE_ERRORS.labels("ingest"),
            "Ingest cannot reach the database",
            "The database answers again; ingest is running",
        )
        while not self._stop_event.is_set():
            close_old_connections()
            try:
                if time.monotonic() >= next_refresh:
                    environments = {e.keys().reports: e for e in Environment.objects.all()}
                    for stream in environments:
                        ensure_group(get_redis(), stream)
                    next_refresh = time.monotonic() + 10
                if not environments:
                    self._stop_event.wait(1)
                    continue
                if time.monotonic() >= next_claim:
                    self._claim_abandoned(environments)
                    next_claim = time.monotonic() + 30
                self.read_once(environments)
                database.answered()
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):  # Redis lost the stream and its group
                    next_refresh = 0.0
                else:
                    logger.warning("Ingest failed (%s); will retry", exc)
                self._stop_event.wait(0.5)
            except redis.RedisError as exc:
                logger.debug("Ingest cannot reach Redis (%s); will retry", exc)
                next_refresh = 0.0
                self._stop_event.wait(1)
            except DATABASE_UNAVAILABLE as exc:  # entries stay pending until it answers
                database.failed(exc)
                self._stop_event.wait(1)
            except Exception:
                logger.exception("Ingest failed; will retry")
                self._stop_event.wait(1)
        close_old_connections()

    def read_once(self, environments: dict[str, Environment]) -> None:
        """One pass of the loop: read new entries of ``environments`` (by stream), apply
        them, acknowledge them. Raises only if Redis or the database cannot be reached."""
        client = get_redis()
        replies: list[tuple[str, Entries]]
        if is_cluster(client) and len(environments) > 1:
            # One XREADGROUP reads streams of one hash slot only, and each
            # environment has its own: read each without blocking, then pause.
            replies = []
            for stream in environments:
                replies += read_group(client, self.consumer, [stream])
            if not any(entries for _, entries in replies):
                self._stop_event.wait(CLUSTER_POLL_INTERVAL)
        else:
            replies = read_group(client, self.consumer, list(environments), self.block_ms)
        for stream, entries in replies:
            self._handle(client, environments[stream], stream, entries)

    def _handle(
        self, client: redis.Redis, environment: Environment, stream: str, entries: Entries
    ) -> None:
        if not entries:
            return
        changes = process_entries(environment, entries, self.skipped)
        client.xack(stream, GROUP, *[entry_id for entry_id, _ in entries])
        self.processed += len(entries)
        notify(environment.name, changes.state, urgent=True)
        notify(environment.name, changes.figures - changes.state, urgent=False)

    def _claim_abandoned(self, environments: dict[str, Environment]) -> None:
        client = get_redis()
        for stream, environment in environments.items():
            entries = claim_abandoned(client, self.consumer, stream)
            self._handle(client, environment, stream, entries)


_ingestor: Ingestor | None = None
_lock = threading.Lock()


def start_ingestor() -> Ingestor:
    global _ingestor
    with _lock:
        if _ingestor is None or not _ingestor.is_alive():
            _ingestor = Ingestor()
            _ingestor.start()
        return _ingestor
