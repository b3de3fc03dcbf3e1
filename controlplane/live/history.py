"""The fleet's live state, as the ingest keeps it in Redis for every control-plane replica.

Counters are summed over instances per second into one hash per environment
and second (kept 16 minutes), rejected subjects per limiter and minute into a
sorted set, and each instance's breaker state into one hash. Any replica can
then render the overview from a handful of reads, whichever replica ingested
the reports.

Whatever these reads find in Redis is untrusted: bytes are read undecoded and
each field is checked on its own, so a field that is not UTF-8, not a finite
number, or not a known state is skipped (one warning per kind of problem every
few minutes), never a 500 for the page that reads it.
"""

from __future__ import annotations

import logging
import math
import operator
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis
from django.conf import settings
from redis.client import NEVER_DECODE

from controlplane.live.models import BreakerEvent
from controlplane.protocol.breaker_state import STATES as BREAKER_STATES
from controlplane.protocol.documents import MetaDocument, ProtocolError
from controlplane.protocol.keys import NAME_PATTERN, KeyLayout
from controlplane.protocol.limits import MAX_SAFE_INTEGER, loads_json
from controlplane.protocol.reports import NUMERIC_COUNTERS, SUBJECT_LENGTH

logger = logging.getLogger(__name__)
_NUMERIC = frozenset(NUMERIC_COUNTERS)

HISTORY_SECONDS = 960  # 16 minutes: charts show the last 15
TOP_TTL_SECONDS = 1200
RATE_WINDOW = 5  # seconds averaged for the overview's rates
# A second's last reports (stamped when an instance flushes, just before the second
# ends) reach the ingest a little later: a second is read once this much has passed.
REPORT_GRACE = 0.5
INSTANCE_TIMEOUT = 30.0  # gone after this long without a heartbeat, if it gives no interval
INSTANCE_MARGIN = 2.0  # gone after its heartbeat interval + max(this, interval / 2)
# A gone instance is listed as gone for ``settings.INSTANCES_FORGET_AFTER`` seconds
# after its last heartbeat; then ``forget_gone`` removes it from Redis.
MAX_HEARTBEAT_INTERVAL = 86_400.0
HEARTBEAT_BYTES = 16 * 1024  # a heartbeat document takes about 200 bytes
# An instance id, and each text a heartbeat shows, is as long as the database keeps one.
INSTANCE_LENGTH: int = BreakerEvent._meta.get_field("instance").max_length  # type: ignore[assignment]
MAX_PID = 2**31 - 1
MAX_REVISION = MAX_SAFE_INTEGER  # as every revision on the wire (docs/protocol.md, 4)
SKIPPED_WARNING_INTERVAL = 300.0  # seconds between two warnings about one kind of problem


class SkippedEntries:
    """Malformed entries a loop or a page skipped: one warning per kind of problem and window.

    ``skip`` is called once per entry; the first of each kind is logged with its
    detail, the next ones only counted until ``interval`` seconds have passed, so
    a stream or hash full of garbage leaves a line every few minutes, not one per
    entry or per page view.
    """

    def __init__(
        self, log: logging.Logger, what: str, interval: float = SKIPPED_WARNING_INTERVAL
    ) -> None:
        self.log = log
        self.what = what
        self.interval = interval
        self.total = 0
        self._warned_at: dict[str, float] = {}
        self._unreported: dict[str, int] = {}
        self._lock = threading.Lock()

    def skip(self, kind: str, detail: str) -> None:
        now = time.monotonic()
        with self._lock:
            self.total += 1
            unreported = self._unreported.get(kind, 0)
            warned_at = self._warned_at.get(kind)
            if warned_at is not None and now - warned_at < self.interval:
                self._unreported[kind] = unreported + 1
                return
            self._warned_at[kind] = now
            self._unreported[kind] = 0
        more = f" ({unreported} more since the last warning)" if unreported else ""
        self.log.warning("Skipped malformed %s: %s%s", self.what, detail, more)


# Readers of the live state keep one for the process: pages are many, problems few.
_skipped_live = SkippedEntries(logger, "live state in Redis")


def undecoded(target: Any, *args: Any) -> Any:
    """Send a command (or queue it on a pipeline) whose reply stays bytes, however the
    client decodes: a value that is not UTF-8 then costs its field, not the whole reply."""
    return target.execute_command(*args, **{NEVER_DECODE: True})


def _text(raw: Any, max_length: int = INSTANCE_LENGTH) -> str | None:
    """``raw`` (bytes from Redis, or text from JSON) as text, or None if it is not UTF-8,
    too long or has a NUL."""
    if type(raw) is bytes:  # strict UTF-8 decoding refuses surrogates: no more to check
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return text if len(text) <= max_length and "\x00" not in text else None
    if type(raw) is str and raw.isascii():  # the common case, without a re-encoding
        return raw if len(raw) <= max_length and "\x00" not in raw else None
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not isinstance(raw, str) or len(raw) > max_length or "\x00" in raw:
        return None
    if not raw.isascii():
        try:  # a lone surrogate, from a \ud800 escape in JSON, could not be shown
            raw.encode("utf-8")
        except UnicodeEncodeError:
            return None
    return raw


def finite_number(raw: Any) -> float | None:
    """``raw`` (a number as Redis returns it) as a finite float, else None."""
    try:
        value = float(raw)
    except (TypeError, ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


class LiveWrites:
    """One batch's writes to the live state, each key and field written once.

    A batch holds many instances' reports of the same few seconds, and each
    report many counters: summed here, the batch costs one ``HINCRBYFLOAT`` per
    second (``live_second``) or minute (``live_minute``) and field, one
    ``ZINCRBY`` per top-rejected subject, and one ``HSET`` for every breaker
    state, not one command per counter of each report. Reports are added in
    stream order, so a breaker's last reported state in the batch is the one kept.
    """

    STATES_PER_HSET = 1000

    def __init__(self) -> None:
        self.seconds: dict[tuple[int, str, str], float] = defaultdict(float)  # policy, counter
        self.state_counts: dict[tuple[int, str, str], int] = defaultdict(int)  # minute
        self.top: dict[tuple[str, int, str], float] = defaultdict(float)
        self.states: dict[str, str] = {}

    def breaker_state(self, name: str, instance: str, state: str, at: float) -> None:
        """A report of breaker ``name`` in ``state`` by ``instance``: its live state, and one
        more report in that state in the minute's sums (for the states there are)."""
        self.states[f"{name}|{instance}"] = f"{state}|{at}"
        if state in BREAKER_STATES:
            self.state_counts[(int(at) // 60, name, state)] += 1

    def write(self, pipe: Any, keys: KeyLayout) -> None:
        seconds, tops = set(), set()
        minutes: dict[tuple[int, str], float] = defaultdict(float)
        for (second, policy, counter), value in self.seconds.items():
            if math.isfinite(value):
                field_name = f"{policy}|{counter}"
                pipe.hincrbyfloat(keys.live_second(second), field_name, value)
                minutes[(second // 60, field_name)] += value
                seconds.add(second)
        for second in seconds:
            pipe.expire(keys.live_second(second), HISTORY_SECONDS)
        for (minute, breaker, state), count in self.state_counts.items():
            minutes[(minute, f"breaker:{breaker}|state:{state}")] += count
        for (minute, field_name), value in minutes.items():
            pipe.hincrbyfloat(keys.live_minute(minute), field_name, value)
        for minute in {minute for minute, _ in minutes}:
            pipe.expire(keys.live_minute(minute), HISTORY_SECONDS + 60)
        for (name, top_minute, subject), score in self.top.items():
            pipe.zincrby(keys.live_top_rejected(name, top_minute), score, subject)
            tops.add((name, top_minute))
        for name, minute in tops:
            pipe.expire(keys.live_top_rejected(name, minute), TOP_TTL_SECONDS)
        states = list(self.states.items())
        for start in range(0, len(states), self.STATES_PER_HSET):
            chunk = dict(states[start : start + self.STATES_PER_HSET])
            pipe.hset(keys.live_breaker_states, mapping=chunk)


def record_counters(
    writes: LiveWrites, instance: str, at: float, policies: dict[str, Any]
) -> set[str]:
    """Add one counters report to ``writes``; return the policy fields it touched."""
    second = int(at)
    sums = writes.seconds
    touched: set[str] = set()
    for policy, counters in policies.items():
        if not isinstance(counters, dict):
            continue
        touched.add(policy)
        for counter, value in counters.items():
            # A count: an int or a float, not a bool (whose type is neither).
            if value and (type(value) is int or type(value) is float) and counter in _NUMERIC:
                sums[(second, policy, counter)] += value
        kind, _, name = policy.partition(":")
        top = counters.get("top_rejected")
        if kind == "rate_limit" and isinstance(top, dict) and top:
            for subject, count in list(top.items())[:20]:
                if isinstance(count, int | float):
                    writes.top[(name, second // 60, str(subject))] += count
        state = counters.get("state")
        if kind == "breaker" and isinstance(state, str):
            writes.breaker_state(name, instance, state, at)
    return touched


@dataclass
class PolicyRates:
    """Per-second averages over the last few seconds, summed over the fleet."""

    counters: dict[str, float] = field(default_factory=dict)

    def per_second(self, counter: str) -> float:
        return self.counters.get(counter, 0.0) / RATE_WINDOW

    @property
    def calls_per_second(self) -> float:
        return self.per_second("calls")

    def share(self, part: str, whole: str = "calls") -> float | None:
        total = self.counters.get(whole, 0.0)
        return None if not total else 100.0 * self.counters.get(part, 0.0) / total

    @property
    def failure_rate(self) -> float | None:
        return self.share("failures")

    @property
    def slow_rate(self) -> float | None:
        return self.share("slow")

    @property
    def hit_ratio(self) -> float | None:
        hits = sum(self.counters.get(c, 0.0) for c in ("hits", "local_hits", "stale_hits"))
        total = hits + self.counters.get("misses", 0.0)
        return None if not total else 100.0 * hits / total


@dataclass(frozen=True)
class Implementation:
    """Which client library an instance runs, as its heartbeat says (docs/protocol.md, 12.2)."""

    name: str
    version: str
    language: str
    language_version: str = ""

    @property
    def label(self) -> str:
        language = f"{self.language} {self.language_version}".rstrip()
        return f"{language} · {self.name} {self.version}"


@dataclass(frozen=True)  # shared between reads (``_read_heartbeats``): never changed
class Instance:
    instance: str
    service: str
    host: str
    pid: int
    library_version: str
    revision: int
    connected: bool
    last_seen: float
    implementation: Implementation | None = None  # None: a 1.0 client, which does not say
    heartbeat_interval: float | None = None  # None: a client that does not say (before 1.1)

    @property
    def timeout(self) -> float:
        """Seconds without a heartbeat after which the instance is gone (docs/protocol.md, 12.3)."""
        return instance_timeout(self.heartbeat_interval)

    @property
    def age(self) -> float:
        return max(0.0, time.time() - self.last_seen)

    @property
    def implementation_label(self) -> str:
        if self.implementation is not None:
            return self.implementation.label
        return f"unknown · library {self.library_version or 'unknown'}"


@dataclass
class FleetSync:
    """Where the instances stand against a revision: what the sync summary counts.

    ``applying``: behind, but the change is younger than the instance's heartbeat
    timeout, so it may have applied it and not yet said so (heartbeats carry the
    revision every few seconds); ``behind``: still on an older revision after that;
    ``gone``: stopped reporting (docs/protocol.md, 12.3), counted apart, never as behind.
    """

    revision: int
    in_sync: list[Instance]
    applying: list[Instance]
    behind: list[Instance]
    gone: list[Instance]

    @property
    def reporting(self) -> int:
        return len(self.in_sync) + len(self.applying) + len(self.behind)


@dataclass
class LiveSnapshot:
    """Everything the live pages show about one environment, read in one round trip."""

    rates: dict[str, PolicyRates]
    breaker_states: dict[str, dict[str, int]]  # breaker -> state -> instances
    instances: list[Instance]
    redis_ok: bool = True
    gone: list[Instance] = field(default_factory=list)  # stopped reporting, recently
    # The highest revision published to Redis and when (the meta document), if readable.
    published_revision: int | None = None
    published_at: float | None = None
    # breaker -> the live instances reporting it open or half-open (fleet-wide alerts);
    # forced states are overrides, which have events of their own
    open_instances: dict[str, list[str]] = field(default_factory=dict)

    def rates_for(self, policy: str) -> PolicyRates:
        return self.rates.get(policy) or PolicyRates()

    def sync(self, revision: int, now: float | None = None) -> FleetSync:
        """The live instances in sync with ``revision``, applying it, or behind; and the gone."""
        now = time.time() if now is None else now
        published = self.published_revision is not None and self.published_revision >= revision
        changed_at = self.published_at if published else None
        in_sync, applying, behind = [], [], []
        for instance in self.instances:
            if instance.revision >= revision:
                in_sync.append(instance)
            elif changed_at is None or now - changed_at <= instance.timeout:
                applying.append(instance)  # not published yet, or just now
            else:
                behind.append(instance)
        return FleetSync(revision, in_sync, applying, behind, list(self.gone))


def read_heartbeat(instance_id: str, document: str | bytes) -> Instance:
    """An instance's heartbeat document (docs/protocol.md, 12.2), checked member by member.

    A missing member takes its empty value; one of the wrong type, too long or out
    of range raises ``ValueError`` naming it.
    """
    data = loads_json(document, limit=HEARTBEAT_BYTES, what="The heartbeat")
    if not isinstance(data, dict):
        raise ValueError("The heartbeat is not a JSON object.")
    return heartbeat_instance(instance_id, data)


def heartbeat_instance(instance_id: str, data: dict[str, Any]) -> Instance:
    """The instance a parsed heartbeat document describes; ``ValueError`` names a bad member."""
    return Instance(
        instance=instance_id,
        service=_member_text(data, "service"),
        host=_member_text(data, "host"),
        pid=_member_int(data, "pid", MAX_PID),
        library_version=_member_text(data, "library_version"),
        revision=_member_int(data, "revision", MAX_REVISION),
        connected=_member_bool(data, "connected"),
        last_seen=_member_time(data, "at"),
        implementation=_implementation(data.get("implementation")),
        heartbeat_interval=_heartbeat_interval(data.get("heartbeat_interval")),
    )


def instance_timeout(heartbeat_interval: float | None) -> float:
    """How long an instance stays live after its last heartbeat: its interval plus a margin."""
    if heartbeat_interval is None:
        return INSTANCE_TIMEOUT
    return heartbeat_interval + max(INSTANCE_MARGIN, heartbeat_interval / 2)


def _heartbeat_interval(value: Any) -> float | None:
    """The optional ``heartbeat_interval`` (protocol 1.1): seconds, above 0, at most a day."""
    if value is None:
        return None
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    seconds = finite_number(value) if numeric else None
    if seconds is None or not 0 < seconds <= MAX_HEARTBEAT_INTERVAL:
        raise ValueError(
            f"heartbeat_interval: not a number of seconds above 0 and at most "
            f"{MAX_HEARTBEAT_INTERVAL:g}"
        )
    return seconds


def _implementation(value: Any) -> Implementation | None:
    """The optional ``implementation`` object; its unknown members are ignored."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("implementation: not an object")
    members = {}
    for name in ("name", "version", "language"):
        members[name] = _member_text(value, name, f"implementation.{name}")
        if not members[name]:
            raise ValueError(f"implementation.{name}: missing or empty")
    language_version = _member_text(value, "language_version", "implementation.language_version")
    return Implementation(**members, language_version=language_version)


def _member_text(data: dict[str, Any], name: str, shown: str | None = None) -> str:
    value = data.get(name, "")
    if _text(value) is None:
        raise ValueError(
            f"{shown or name}: not a text of at most {INSTANCE_LENGTH} characters without NUL"
        )
    return str(value)


def _member_int(data: dict[str, Any], name: str, maximum: int) -> int:
    value = data.get(name, 0)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise ValueError(f"{name}: not an integer from 0 to {maximum}")
    return value


def _member_bool(data: dict[str, Any], name: str) -> bool:
    value = data.get(name, False)
    if not isinstance(value, bool):
        raise ValueError(f"{name}: not true or false")
    return value


def _member_time(data: dict[str, Any], name: str) -> float:
    value = data.get(name, 0)
    seconds = None if isinstance(value, bool) else finite_number(value)
    if not isinstance(value, int | float) or seconds is None or seconds < 0:
        raise ValueError(f"{name}: not a finite, non-negative number of seconds")
    return seconds


def _shown(raw: Any) -> str:
    """A value found in Redis, short enough for a log line."""
    text = repr(raw)
    return text if len(text) <= 80 else text[:77] + "..."


# Per instances hash, each field's document as last read and the instance read from it:
# a document that did not change since is not parsed again. Replaced at each read, so it
# holds the instances of the last read only.
_read_heartbeats: dict[str, dict[Any, tuple[Any, Instance]]] = {}


def _instances(key: str, raw: dict[Any, Any], now: float) -> tuple[list[Instance], list[Instance]]:
    """The live instances and those gone in the last ``INSTANCES_FORGET_AFTER`` seconds."""
    instances, gone = [], []
    listed_for = settings.INSTANCES_FORGET_AFTER
    known = _read_heartbeats.get(key, {})
    read: dict[Any, tuple[Any, Instance]] = {}
    for raw_id, document in raw.items():
        last = known.get(raw_id)
        if last is not None and last[0] == document:
            instance = last[1]
        else:
            instance_id = _text(raw_id)
            try:
                if instance_id is None:
                    raise ValueError(
                        f"the instance id is not UTF-8 text of at most {INSTANCE_LENGTH} "
                        "characters without NUL"
                    )
                instance = read_heartbeat(instance_id, document)
            except ValueError as exc:
                _skipped_live.skip("instances", f"{key} field {_shown(raw_id)}: {exc}")
                continue
        read[raw_id] = (document, instance)
        if now - instance.last_seen <= instance.timeout:
            instances.append(instance)
        elif now - instance.last_seen <= listed_for:
            gone.append(instance)
    _read_heartbeats[key] = read
    return sorted(instances, key=_by_service), sorted(gone, key=_by_service)


_by_service = operator.attrgetter("service", "instance")


def _published(raw: Any) -> tuple[int | None, float | None]:
    """The revision and time of a meta document (docs/protocol.md, 4.3); None if unreadable."""
    if raw is None:
        return None, None
    try:
        meta = MetaDocument.decode(raw)
        at = datetime.fromisoformat(meta.published_at).timestamp() if meta.published_at else None
    except (ProtocolError, ValueError, TypeError, OverflowError):
        _skipped_live.skip("meta", f"the meta document: {_shown(raw)}")
        return None, None
    return meta.revision, at


_STATE_OF = {state.encode(): state for state in BREAKER_STATES}
# Per breaker-states hash, each field as last read, split: the fields stay (one per
# breaker and instance) while their values change with every report.
_read_state_fields: dict[str, dict[Any, tuple[str, str] | None]] = {}


def _breaker_states(key: str, raw: dict[Any, Any]) -> Iterator[tuple[str, str, str, float]]:
    """``(breaker, instance, state, since)`` of each well-formed field of the states hash
    (read undecoded); fast, for a page reads one field per breaker of every instance."""
    known = _read_state_fields.get(key, {})
    read: dict[Any, tuple[str, str] | None] = {}
    for raw_field, raw_value in raw.items():
        if raw_field in known:
            split = known[raw_field]
        else:
            field_text = _text(raw_field, 2 * INSTANCE_LENGTH)
            name, _, instance = (field_text or "").partition("|")
            good = 0 < len(instance) <= INSTANCE_LENGTH and NAME_PATTERN.match(name)
            split = (name, instance) if good else None
        read[raw_field] = split
        readable = type(raw_value) is bytes and len(raw_value) <= INSTANCE_LENGTH
        state_raw, _, at = raw_value.partition(b"|") if readable else (b"", b"", b"")
        state = _STATE_OF.get(state_raw)
        try:  # finite_number, inline: this loop runs for every breaker of every instance
            since = float(at) if at else 0.0
        except ValueError:
            since = math.nan
        if split is None or state is None or since - since != 0:
            _skipped_live.skip(
                "breaker states", f"{key} field {_shown(raw_field)}: {_shown(raw_value)}"
            )
            continue
        yield split[0], split[1], state, since
    _read_state_fields[key] = read


# Deletes each field of KEYS[1] named in ARGV (field, value, field, value...) whose
# value is still the one read: an instance that reported again meanwhile is kept.
_DELETE_UNCHANGED = """
local removed = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    removed = removed + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return removed
"""
FORGET_BATCH = 500  # fields compared and deleted in one script call


@dataclass
class Forgotten:
    instances: int = 0
    breaker_states: int = 0


def forget_gone(client: redis.Redis, keys: KeyLayout, now: float | None = None) -> Forgotten:
    """Remove from Redis the instances silent for ``INSTANCES_FORGET_AFTER`` seconds (and
    longer than their own timeout), and the breaker states of instances no longer there.

    Each field is deleted only if it still holds what was read, so an instance that
    comes back between the read and the delete keeps its heartbeat. Malformed fields
    are left for the readers to skip (and report).
    """
    now = time.time() if now is None else now
    forget_after = settings.INSTANCES_FORGET_AFTER
    delete = client.register_script(_DELETE_UNCHANGED)
    instances_raw: dict[Any, Any] = undecoded(client, "HGETALL", keys.instances) or {}
    stale: list[Any] = []
    kept: set[str] = set()
    for raw_id, document in instances_raw.items():
        instance_id = _text(raw_id)
        try:
            instance = read_heartbeat(instance_id or "", document)
        except ValueError:
            continue
        if instance_id and now - instance.last_seen > max(forget_after, instance.timeout):
            stale += [raw_id, document]
        elif instance_id:
            kept.add(instance_id)
    forgotten = Forgotten(instances=_delete_unchanged(delete, keys.instances, stale))
    states_raw: dict[Any, Any] = undecoded(client, "HGETALL", keys.live_breaker_states) or {}
    orphans: list[Any] = []
    for raw_field, raw_value in states_raw.items():
        field_text, value = _text(raw_field, 2 * INSTANCE_LENGTH), _text(raw_value)
        instance_id = (field_text or "").partition("|")[2]
        at = finite_number((value or "").partition("|")[2] or 0)
        # A grace of one default timeout: a new instance may report a state before its
        # first heartbeat is in the hash.
        if (
            instance_id
            and at is not None
            and instance_id not in kept
            and now - at > INSTANCE_TIMEOUT
        ):
            orphans += [raw_field, raw_value]
    forgotten.breaker_states = _delete_unchanged(delete, keys.live_breaker_states, orphans)
    return forgotten


def _delete_unchanged(script: Any, key: str, pairs: list[Any]) -> int:
    removed = 0
    for start in range(0, len(pairs), 2 * FORGET_BATCH):
        removed += int(script(keys=[key], args=pairs[start : start + 2 * FORGET_BATCH]))
    return removed


COUNTERS_BY_KIND: dict[str, tuple[str, ...]] = {
    "breaker": ("calls", "failures", "slow", "rejected", "would_reject"),
    "rate_limit": ("allowed", "rejected", "would_reject", "fallback"),
    "cache": ("hits", "local_hits", "stale_hits", "misses"),
}


def read_snapshot(
    client: redis.Redis,
    keys: KeyLayout,
    now: float | None = None,
    policies: list[str] | None = None,
) -> LiveSnapshot:
    """Read the last complete seconds, breaker states and instances (one pipeline).

    With ``policies`` (``kind:name`` fields), only their counters are read (and
    their breakers' states counted), so refreshing a few rows costs about the
    same however many policies there are.
    """
    now = time.time() if now is None else now
    # The current second is still being reported; so, for REPORT_GRACE, is the last one:
    # read early, it would show lower figures, and rows would change back and forth.
    last = int(now - REPORT_GRACE) - 1
    wanted: list[str] | None = None
    breakers = None  # with ``policies``, only their breakers' states are counted
    if policies is not None:
        breakers = {p.partition(":")[2] for p in policies if p.startswith("breaker:")}
        wanted = [
            f"{policy}|{counter}"
            for policy in policies
            for counter in COUNTERS_BY_KIND.get(policy.partition(":")[0], ())
        ]
    seconds = range(last - RATE_WINDOW + 1, last + 1)
    # Undecoded: one field that is not UTF-8 must cost that field, not the page.
    with client.pipeline(transaction=False) as pipe:
        for second in seconds:
            if wanted is None:
                undecoded(pipe, "HGETALL", keys.live_second(second))
            elif wanted:
                undecoded(pipe, "HMGET", keys.live_second(second), *wanted)
        # A hash of every breaker of every instance: the instances page wants no state.
        count_states = breakers is None or bool(breakers)
        if count_states:
            undecoded(pipe, "HGETALL", keys.live_breaker_states)
        undecoded(pipe, "HGETALL", keys.instances)
        undecoded(pipe, "GET", keys.meta)
        replies = pipe.execute()
    meta_raw, instances_raw = replies.pop(), replies.pop()
    states_raw = replies.pop() if count_states else {}
    # Summed per field first, then split: a field is split once, not once per second.
    sums: dict[Any, float] = {}  # by field as read: each is decoded once, not once a second
    for second, reply in zip(seconds, replies, strict=False):
        pairs = reply.items() if wanted is None else zip(wanted, reply, strict=True)
        for raw_key, raw_value in pairs:
            if raw_value is None:
                continue
            try:  # finite_number, inline: this loop runs for every counter of every row
                value = float(raw_value)
            except ValueError:
                value = math.nan
            if value - value != 0:  # NaN or infinite
                _skipped_live.skip(
                    "counters",
                    f"{keys.live_second(second)} field {_shown(raw_key)}: {_shown(raw_value)}",
                )
                continue
            sums[raw_key] = sums.get(raw_key, 0.0) + value
    totals: dict[str, dict[str, float]] = defaultdict(dict)
    for raw_key, total in sums.items():
        key = _text(raw_key, 2 * INSTANCE_LENGTH)
        if key is None:
            _skipped_live.skip(
                "counters", f"a field of {keys.live_second(last)}: {_shown(raw_key)}"
            )
            continue
        policy, _, counter = key.rpartition("|")
        if math.isfinite(total):  # finite values can still add up to infinity
            totals[policy][counter] = total
    instances, gone = _instances(keys.instances, instances_raw, now)
    published_revision, published_at = _published(meta_raw)
    alive = {i.instance for i in instances}
    breaker_states: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    open_instances: dict[str, list[str]] = defaultdict(list)
    for name, instance, state, _since in _breaker_states(
        keys.live_breaker_states, states_raw or {}
    ):
        if instance in alive and (breakers is None or name in breakers):
            breaker_states[name][state] += 1
            if state in ("open", "half_open"):
                open_instances[name].append(instance)
    return LiveSnapshot(
        rates={policy: PolicyRates(dict(c)) for policy, c in totals.items()},
        breaker_states={name: dict(states) for name, states in breaker_states.items()},
        instances=instances,
        gone=gone,
        published_revision=published_revision,
        published_at=published_at,
        open_instances={name: sorted(ids) for name, ids in open_instances.items()},
    )


def read_history(
    client: redis.Redis, keys: KeyLayout, policy: str, counters: tuple[str, ...], seconds: int = 900
) -> dict[str, Any]:
    """Per-second values of ``counters`` for one policy over the last ``seconds``.

    A value that is not a finite number counts as 0.
    """
    last = int(time.time()) - 1
    times = list(range(last - seconds + 1, last + 1))
    fields = [f"{policy}|{c}" for c in counters]
    with client.pipeline(transaction=False) as pipe:
        for second in times:
            undecoded(pipe, "HMGET", keys.live_second(second), *fields)
        rows = pipe.execute()
    series: dict[str, Any] = {"t": times}
    for index, counter in enumerate(counters):
        series[counter] = [
            _history_value(keys, second, row[index])
            for second, row in zip(times, rows, strict=True)
        ]
    return series


def _history_value(keys: KeyLayout, second: int, raw: Any) -> float:
    if raw is None:
        return 0.0
    value = finite_number(raw)
    if value is None:
        _skipped_live.skip("counters", f"{keys.live_second(second)}: {_shown(raw)}")
        return 0.0
    return value


SPARKLINE_MINUTES = 15
# What each kind's sparkline draws: the traffic, then what went wrong.
SPARKLINES: dict[str, tuple[str, ...]] = {
    "breaker": ("calls", "failures", "rejected"),
    "rate_limit": ("allowed", "rejected"),
    "cache": ("hits", "misses"),
}


def read_minutes(
    client: redis.Redis, keys: KeyLayout, policies: set[str], count: int = SPARKLINE_MINUTES
) -> dict[str, Any]:
    """Per-minute sums of ``policies`` (``kind:name``) over the last ``count`` minutes.

    One round trip. Returns ``{"minutes": [unix minute start, ...], "policies":
    {field: {counter: [per minute], "states": [{state: reports}, ...]}}}``; the
    current minute, still filling, is the last. Unknown fields are left out.
    """
    current = int(time.time()) // 60
    minutes = list(range(current - count + 1, current + 1))
    with client.pipeline(transaction=False) as pipe:
        for minute in minutes:
            undecoded(pipe, "HGETALL", keys.live_minute(minute))
        replies = pipe.execute()
    found: dict[str, dict[str, Any]] = {}
    for index, reply in enumerate(replies):
        for raw_key, raw_value in reply.items():
            key, value = _text(raw_key, 2 * INSTANCE_LENGTH), finite_number(raw_value)
            if key is None or value is None:
                _skipped_live.skip(
                    "minutes", f"{keys.live_minute(minutes[index])}: {_shown(raw_key)}"
                )
                continue
            policy, _, counter = key.rpartition("|")
            if policy not in policies:
                continue
            kind = policy.partition(":")[0]
            series = found.get(policy)
            if series is None:
                series = found[policy] = {c: [0.0] * count for c in SPARKLINES.get(kind, ())}
                if kind == "breaker":
                    series["states"] = [{} for _ in range(count)]
            if counter.startswith("state:") and kind == "breaker":
                state = counter[6:]
                if state in BREAKER_STATES:
                    series["states"][index][state] = value
            elif kind == "cache" and counter in ("local_hits", "stale_hits"):
                series["hits"][index] += value
            elif counter in series:
                series[counter][index] += value
    return {"minutes": [minute * 60 for minute in minutes], "policies": found}


def top_rejected(
    client: redis.Redis, keys: KeyLayout, names: list[str], limit: int = 5
) -> dict[str, list[tuple[str, float]]]:
    """The subjects each limiter rejected most in this minute and the last (one round trip)."""
    if not names:
        return {}
    minute = int(time.time()) // 60
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            for m in (minute - 1, minute):
                key = keys.live_top_rejected(name, m)
                undecoded(pipe, "ZREVRANGE", key, 0, limit - 1, "WITHSCORES")
        replies = pipe.execute()
    result: dict[str, list[tuple[str, float]]] = {}
    for index, name in enumerate(names):
        merged: dict[str, float] = defaultdict(float)
        for reply in replies[2 * index : 2 * index + 2]:
            # Members and scores alternate: [member, score, member, score, ...]
            for raw_subject, raw_score in zip(reply[::2], reply[1::2], strict=True):
                subject, score = _text(raw_subject, SUBJECT_LENGTH), finite_number(raw_score)
                if subject is None or score is None:
                    _skipped_live.skip(
                        "top rejected",
                        f"a subject of limiter {name}: {_shown(raw_subject)} {_shown(raw_score)}",
                    )
                    continue
                merged[subject] += score
        result[name] = sorted(merged.items(), key=lambda item: -item[1])[:limit]
    return result


def breaker_instances(
    client: redis.Redis, keys: KeyLayout, name: str
) -> list[tuple[str, str, float]]:
    """``(instance, state, since)`` of every instance that reported breaker ``name``."""
    raw = undecoded(client, "HGETALL", keys.live_breaker_states)
    return sorted(
        (instance, state, since)
        for breaker, instance, state, since in _breaker_states(keys.live_breaker_states, raw)
        if breaker == name
    )


SERIES: dict[str, tuple[str, ...]] = {
    "breaker": ("calls", "failures", "slow", "rejected"),
    "rate_limit": ("allowed", "rejected"),
    "cache": ("hits", "local_hits", "misses"),
}
