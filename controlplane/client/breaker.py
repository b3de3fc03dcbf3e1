"""Circuit breakers with Resilience4j semantics, shared by every instance through Redis.

Hot path: a closed breaker never touches Redis and holds no lock while the
protected call runs. With a count-based window a successful call costs one
attribute check, two ``perf_counter`` readings and one ``next()`` on an
``itertools.count`` (atomic under the GIL): the window only stores the tickets
of failed and slow calls, and successes are the tickets in between. Failures,
slow calls and time-based windows take a short lock to record.

Fleet: when a breaker opens or closes, a background thread writes the new state
into the breakers hash and publishes it in one Lua script that compares epochs,
so two instances tripping at once produce one epoch. Every instance applies
what it hears on the breaker-events channel, reads the hash when it starts and
on every resync, and takes half-open probe permits from one Redis counter, so
``half_open_calls`` is a limit for the whole fleet. When Redis is unreachable
everything keeps working per process. ``docs/protocol.md`` ("Shared breaker
state") describes the Redis side.
"""

from __future__ import annotations

import bisect
import contextvars
import functools
import inspect
import itertools
import logging
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar

import redis

from controlplane.client.error_log import ErrorLog
from controlplane.client.errors import CircuitOpenError
from controlplane.protocol import scripts
from controlplane.protocol.breaker_state import (
    CLOSED,
    FORCED_OPEN,
    HALF_OPEN,
    OPEN,
    BreakerState,
)
from controlplane.protocol.breaker_state import STATES as STATES  # still read from here
from controlplane.protocol.documents import OverrideDocument
from controlplane.protocol.schema import BREAKER, EXCEPTION_NAME, validate_name, validate_spec

if TYPE_CHECKING:
    from types import TracebackType

    from controlplane.client.client import Client

logger = logging.getLogger("controlplane.client")

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])


# Friendly keyword arguments of client.breaker(...) -> schema field names.
KWARG_FIELDS: Final = {
    "failure_rate": "failure_rate_threshold",
    "slow_call_rate": "slow_call_rate_threshold",
    "window": "window_type",
    "record": "record_exceptions",
    "ignore": "ignore_exceptions",
}

# How an exception counts.
_SUCCESS: Final = 0
_FAILURE: Final = 1
_IGNORE: Final = 2

# Kinds of permit handed out by the slow path (None is "closed, record in the window").
_PASS: Final = 1  # let through, count in the metrics only
_PROBE_LOCAL: Final = 2  # half-open probe limited by this process
_PROBE_SHARED: Final = 3  # half-open probe permitted by the fleet-wide counter

_MAX_TIME_BUCKETS: Final = 600  # time windows longer than this use wider buckets
_PROBE_RECHECK: Final = 1.0  # seconds between asking Redis again once probes ran out
_HUB_IDLE: Final = 2.0  # the writer thread exits after this long without work
_LOG_EVERY: Final = 10.0  # at most one warning per breaker and this many seconds

_SCRIPTS: Final = {
    name: scripts.load(f"breaker_{name}") for name in ("transition", "probe", "probe_done", "read")
}


def _count_value(counter: itertools.count[int]) -> int:
    """The next value ``counter`` will return (without taking it)."""
    text = repr(counter)  # "count(42)"
    return int(text[text.index("(") + 1 : -1])


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
class _Settings:
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
    ) -> _Settings:
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

    def classify(self, cls: type[BaseException]) -> int:
        verdict = self.verdicts.get(cls)
        if verdict is None:
            # A nested breaker's CircuitOpenError is never this breaker's failure.
            nested = issubclass(cls, CircuitOpenError)
            record_all = not (self.record_classes or self.record_names)
            if nested or _matches(cls, self.ignore_classes, self.ignore_names):
                verdict = _IGNORE
            elif record_all or _matches(cls, self.record_classes, self.record_names):
                verdict = _FAILURE
            else:
                verdict = _SUCCESS
            self.verdicts[cls] = verdict
        return verdict


def code_defaults(
    kwargs: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, tuple[tuple[type[BaseException], ...], list[str]]]]:
    """Validate ``client.breaker(...)`` keyword arguments.

    Returns the complete spec (exception classes listed by name) and, for
    record/ignore, the classes and names given in code.
    """
    data: dict[str, Any] = {}
    exceptions: dict[str, tuple[tuple[type[BaseException], ...], list[str]]] = {}
    for key, value in kwargs.items():
        name = KWARG_FIELDS.get(key, key)
        if name in data:
            raise ValueError(f"{key}: given twice (as {name})")
        if name in ("record_exceptions", "ignore_exceptions"):
            classes, names = _split_exceptions(key, value)
            exceptions[name] = (classes, names)
            value = [*names, *(exception_name(c) for c in classes)]
        data[name] = value
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


@dataclass(frozen=True)
class _Permit:
    kind: int
    generation: int
    epoch: int = 0


_PASS_PERMIT: Final = _Permit(_PASS, -1)


@dataclass(frozen=True)
class _ProbeRequest:
    """The slow path needs Redis: ask the fleet for a half-open probe permit."""

    generation: int
    epoch: int


@dataclass
class _Proposal:
    """A local transition to write into the shared state."""

    from_state: str
    to_state: str
    base_epoch: int
    reason: str
    failure_rate: float | None
    slow_call_rate: float | None
    open_for: float


@dataclass
class _Event:
    """What a transition needs done once the lock is released."""

    before: str
    after: str
    reason: str
    failure_rate: float | None = None
    slow_call_rate: float | None = None
    proposal: _Proposal | None = None
    source: str = "local"
    instance: str = ""


class _BreakerHub:
    """Per client: the events subscription, resync reads and a small writer thread."""

    _hubs_lock = threading.Lock()

    def __init__(self, client: Client) -> None:
        self.client = client
        self.breakers: dict[str, CircuitBreaker] = {}
        self._pid = os.getpid()
        self._jobs: deque[Callable[[], None]] = deque(maxlen=10_000)
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._running = False
        self._errors = ErrorLog(logger, client.metrics.internal_errors.labels("breaker"))
        self._malformed_log = ErrorLog(logger)
        client.on_channel(client.keys.breaker_events, self.on_message)
        client.on_resync(self.on_resync)

    @classmethod
    def of(cls, client: Client) -> _BreakerHub:
        with cls._hubs_lock:
            hub: _BreakerHub | None = getattr(client, "_breaker_hub", None)
            if hub is None:
                hub = cls(client)
                setattr(client, "_breaker_hub", hub)  # noqa: B010 - lives and dies with it
            return hub

    # The writer thread: transitions and probe results go to Redis off the caller's thread.

    def submit(self, job: Callable[[], None]) -> None:
        if self._pid != os.getpid():  # forked: the thread and its lock stayed in the parent
            self._pid = os.getpid()
            self._cond = threading.Condition()
            self._thread = None
            self._running = False
        with self._cond:
            self._jobs.append(job)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="controlplane-breakers", daemon=True
                )
                self._thread.start()
            else:
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._jobs:
                    self._cond.wait(_HUB_IDLE)
                    if not self._jobs:
                        self._thread = None
                        return
                job = self._jobs.popleft()
                self._running = True
            try:
                job()
            except Exception:
                self._errors.exception("Breaker background job failed")
            finally:
                with self._cond:
                    self._running = False

    def idle(self) -> bool:
        """Whether the writer thread has nothing queued or running."""
        with self._cond:
            return not self._jobs and not self._running

    def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run the breaker script ``name`` (``breaker_<name>.lua``) on the client's Redis."""
        return scripts.run(self.client.redis, _SCRIPTS[name], keys, args)

    # Shared state coming in.

    def on_message(self, data: bytes) -> None:
        """A transition published by any instance (this one included)."""
        try:
            shared = BreakerState.decode(data)
        except ValueError as exc:
            self._malformed(exc)
            return
        breaker = self.breakers.get(shared.name)
        if breaker is not None:
            breaker._adopt(shared, shared.since, "event")

    def on_resync(self) -> None:
        """After every snapshot read: read the shared state of every breaker here."""
        breakers = list(self.breakers.values())
        self.read_shared(breakers)
        for breaker in breakers:
            breaker._maybe_discover()
            breaker._retry_pending()

    def read_shared(self, breakers: list[CircuitBreaker]) -> None:
        if not breakers:
            return
        try:
            now, raws = self.run("read", [self.client.keys.breakers], [b.name for b in breakers])
        except (redis.RedisError, OSError) as exc:
            self.client.metrics.redis_errors.labels("breaker").inc()
            logger.debug("Cannot read the shared breaker states (%s)", exc)
            return
        server_now = float(now)
        for breaker, raw in zip(breakers, raws, strict=True):
            if raw is None:
                continue
            try:
                shared = BreakerState.decode(raw)
            except ValueError as exc:
                self._malformed(exc)
                continue
            breaker._adopt(shared, server_now, "resync")

    def _malformed(self, exc: Exception) -> None:
        self.client.metrics.malformed.labels(self.client.environment).inc()
        # Every resync meets it again until someone repairs it: once a minute is enough.
        self._malformed_log.log(logging.ERROR, "Ignoring a malformed shared breaker state: %s", exc)


class CircuitBreaker:
    """A circuit breaker; use it as a decorator, a context manager, or with ``call``.

    ``client.breaker("payments", failure_rate=50, open_for=30)``. Keyword
    arguments are the code defaults; a policy published by the control plane
    replaces them live, and an override set on the dashboard wins over both.
    """

    def __init__(self, client: Client, name: str, **defaults: Any) -> None:
        validate_name(name)
        self.client = client
        self.name = name
        self._code_spec, exceptions = code_defaults(defaults)
        record = exceptions.get("record_exceptions")
        ignore = exceptions.get("ignore_exceptions")
        self._code_settings = _Settings.build(
            self._code_spec,
            record_classes=record[0] if record else (),
            record_names=record[1] if record else None,
            ignore_classes=ignore[0] if ignore else (),
            ignore_names=ignore[1] if ignore else None,
        )
        self._lock = threading.Lock()
        self._frames: contextvars.ContextVar[tuple[tuple[float, _Permit | None], ...]] = (
            contextvars.ContextVar(f"controlplane-breaker-{name}", default=())
        )
        # The state machine (written under the lock; read without it on the hot path).
        self._state: str = CLOSED
        self._fast = True  # closed and no override: the decorator's one check
        self._open_until = 0.0  # time.monotonic() deadline while open
        self._epoch = 0  # epoch of the shared state this view comes from
        self._generation = 0  # bumped on every local state change
        self._pending: _Proposal | None = None  # a transition not yet written to Redis
        self._override: str | None = None
        self._override_expires: float | None = None  # unix seconds
        # Half-open probes of the current generation.
        self._probe_shared = True
        self._probe_recheck = 0.0
        self._probes_taken = self._probes_done = self._probes_failed = self._probes_slow = 0
        # The window. Count-based: every recorded call takes a ticket from _seq; only
        # the tickets of failures and slow calls are stored. Time-based: buckets.
        self._seq: itertools.count[int] = itertools.count()
        self._fail_tickets: list[int] = []
        self._slow_tickets: list[int] = []
        self._marks: deque[tuple[int, int]] | None = None  # time window: (bucket, first ticket)
        self._bucket_width = 1.0
        self._buckets = 1
        self._roll_at = math.inf  # time window: perf_counter() at which the next bucket starts
        # Counters since creation (successes in a count window are tickets).
        self._tickets_retired = 0
        self._ticketed_failures = 0
        self._successes = self._failures = self._slow = self._ignored = 0
        self._rejected = self._would_reject = 0
        self._reported: dict[str, int] = {}
        self._discovered = False
        self._last_warning = 0.0
        self._errors = ErrorLog(logger, client.metrics.internal_errors.labels("breaker"))
        self._settings = self._code_settings
        self._slow_s = self._settings.slow_duration
        self._tick_below = self._slow_s  # successes faster than this just take a ticket
        self._eval_at = self._settings.minimum_calls - 1
        self._refresh(report=False)
        self._hub = _BreakerHub.of(client)
        self._hub.breakers[name] = self
        client.watch(BREAKER, name, self._policy_changed)
        client.reporter.add_collector(self._collect)
        self._set_gauge(self._visible())
        if client.wait_synced(0):
            self._hub.read_shared([self])
            self._maybe_discover()

    # Public API

    @property
    def state(self) -> str:
        """closed, open, half_open, forced_open, forced_closed or disabled."""
        self._lift_expired_override()
        return self._visible()

    @property
    def settings(self) -> dict[str, Any]:
        """The effective spec: the published policy, else the code defaults."""
        return dict(self._settings.spec)

    @property
    def epoch(self) -> int:
        """Epoch of the shared state this breaker follows (0: none yet)."""
        return self._epoch

    def __call__(self, function: F) -> F:
        """Decorate a sync or async function."""
        if inspect.iscoroutinefunction(function):
            return self._wrap_async(function)  # type: ignore[return-value]
        return self._wrap_sync(function)  # type: ignore[return-value]

    def call(self, function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``function(*args, **kwargs)`` through the breaker."""
        permit = None if self._fast else self._acquire()
        start = time.perf_counter()
        try:
            result = function(*args, **kwargs)
        except Exception as exc:
            self._fail(exc, start, permit)
            raise
        except BaseException:
            self._release(permit)
            raise
        self._succeed(start, permit)
        return result

    async def acall(
        self, function: Callable[P, Awaitable[R]], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Await ``function(*args, **kwargs)`` through the breaker."""
        permit = None if self._fast else await self._aacquire()
        start = time.perf_counter()
        try:
            result = await function(*args, **kwargs)
        except Exception as exc:
            self._fail(exc, start, permit)
            raise
        except BaseException:
            self._release(permit)
            raise
        self._succeed(start, permit)
        return result

    def __enter__(self) -> CircuitBreaker:
        permit = None if self._fast else self._acquire()
        self._frames.set(self._frames.get() + ((time.perf_counter(), permit),))
        return self

    async def __aenter__(self) -> CircuitBreaker:
        permit = None if self._fast else await self._aacquire()
        self._frames.set(self._frames.get() + ((time.perf_counter(), permit),))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        frames = self._frames.get()
        if not frames:
            return
        start, permit = frames[-1]
        self._frames.set(frames[:-1])
        if exc is None:
            self._succeed(start, permit)
        elif isinstance(exc, Exception):
            self._fail(exc, start, permit)
        else:
            self._release(permit)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, traceback)

    def reset(self) -> None:
        """Back to closed with an empty window, in this process only (tests, operations)."""
        with self._lock:
            before = self._visible()
            if self._state is not CLOSED:
                self._generation += 1
            self._state = CLOSED
            self._pending = None
            self._reset_window_locked()
            self._reset_probes_locked()
            self._fast = self._override is None
            event = _Event(before, self._visible(), "reset")
        self._after(event)

    def stats(self) -> dict[str, Any]:
        """Counters since creation, the window's current rates and the state."""
        with self._lock:
            totals = self._totals_locked()
            calls, failure_rate, slow_rate = self._rates_locked()
        return {
            **totals,
            "window_calls": calls,
            "failure_rate": failure_rate,
            "slow_call_rate": slow_rate,
            "state": self.state,
            "epoch": self._epoch,
        }

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self._visible()}>"

    # Decorators: the closed path is written out inline, it is the hot path.

    def _wrap_sync(self, function: Callable[..., Any]) -> Callable[..., Any]:
        breaker = self
        perf = time.perf_counter

        @functools.wraps(function)
        def protected(*args: Any, **kwargs: Any) -> Any:
            if breaker._fast:
                start = perf()
                try:
                    result = function(*args, **kwargs)
                except Exception as exc:
                    breaker._fail(exc, start, None)
                    raise
                except BaseException:
                    breaker._release(None)
                    raise
                end = perf()
                if end - start < breaker._tick_below:
                    ticket = next(breaker._seq)
                    if ticket == breaker._eval_at or end >= breaker._roll_at:
                        breaker._checkpoint(end, ticket)
                else:
                    breaker._record(None, False, True)
                return result
            permit = breaker._acquire()
            start = perf()
            try:
                result = function(*args, **kwargs)
            except Exception as exc:
                breaker._fail(exc, start, permit)
                raise
            except BaseException:
                breaker._release(permit)
                raise
            breaker._succeed(start, permit)
            return result

        protected.breaker = self  # type: ignore[attr-defined]
        return protected

    def _wrap_async(self, function: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        breaker = self
        perf = time.perf_counter

        @functools.wraps(function)
        async def protected(*args: Any, **kwargs: Any) -> Any:
            permit = None if breaker._fast else await breaker._aacquire()
            start = perf()
            try:
                result = await function(*args, **kwargs)
            except Exception as exc:
                breaker._fail(exc, start, permit)
                raise
            except BaseException:
                breaker._release(permit)
                raise
            breaker._succeed(start, permit)
            return result

        protected.breaker = self  # type: ignore[attr-defined]
        return protected

    # Recording outcomes

    def _succeed(self, start: float, permit: _Permit | None) -> None:
        end = time.perf_counter()
        if permit is None and end - start < self._tick_below:
            ticket = next(self._seq)
            if ticket == self._eval_at or end >= self._roll_at:
                self._checkpoint(end, ticket)
            return
        self._record(permit, False, end - start >= self._slow_s)

    def _fail(self, exc: Exception, start: float, permit: _Permit | None) -> None:
        elapsed = time.perf_counter() - start
        try:
            verdict = self._settings.classify(type(exc))
        except Exception:  # a bug in matching must not replace the caller's exception
            self._warn("Cannot classify %r", exc)
            verdict = _FAILURE
        if verdict == _IGNORE:
            self._release(permit)
        else:
            self._record(permit, verdict == _FAILURE, elapsed >= self._slow_s)

    def _checkpoint(self, now: float, ticket: int) -> None:
        """A success made the window reach minimum_calls, or began a time bucket: decide."""
        try:
            with self._lock:
                self._roll_locked(now, ticket)
                event = self._evaluate_locked()
            if event is not None:
                self._after(event)
        except Exception:
            self._internal_error("evaluating the window")

    def _roll_locked(self, now: float, ticket: int) -> None:
        """Time window: the first call to end in a new bucket marks the bucket's first ticket."""
        marks = self._marks
        if marks is None or now < self._roll_at:
            return
        bucket = int(now // self._bucket_width)
        if marks and marks[-1][0] >= bucket:
            if marks[-1][0] == bucket and ticket < marks[-1][1]:
                marks[-1] = (bucket, ticket)  # a racing thread marked it a little late
            return
        marks.append((bucket, ticket))
        self._roll_at = (bucket + 1) * self._bucket_width
        oldest = bucket - self._buckets + 1
        while marks[0][0] < oldest:
            marks.popleft()

    def _record(self, permit: _Permit | None, failed: bool, slow: bool) -> None:
        try:
            self._record_outcome(permit, failed, slow)
        except Exception:
            self._internal_error("recording an outcome")

    def _record_outcome(self, permit: _Permit | None, failed: bool, slow: bool) -> None:
        event: _Event | None = None
        post: _Permit | None = None
        lock = self._lock
        lock.acquire()
        try:
            if slow:
                self._slow += 1
            ticketed = False
            if permit is None and self._state is CLOSED and self._override is None:
                ticket = next(self._seq)
                ticketed = True
                if failed:
                    self._fail_tickets.append(ticket)
                    self._ticketed_failures += 1
                if slow:
                    self._slow_tickets.append(ticket)
                self._roll_locked(time.perf_counter(), ticket)
                event = self._evaluate_locked()
            elif permit is not None and permit.kind != _PASS:
                if permit.kind == _PROBE_SHARED:
                    post = permit
                elif permit.generation == self._generation and self._state is HALF_OPEN:
                    event = self._probe_outcome_locked(failed, slow)
            if failed:
                self._failures += 1
            elif not ticketed:
                self._successes += 1
        finally:
            lock.release()
        if post is not None:
            self._post_probe(post, _outcome(failed, slow), failed, slow)
        if event is not None:
            self._after(event)

    def _release(self, permit: _Permit | None) -> None:
        """The call ended with an ignored exception: it counts as neither."""
        try:
            self._release_permit(permit)
        except Exception:
            self._internal_error("releasing a permit")

    def _release_permit(self, permit: _Permit | None) -> None:
        post = None
        with self._lock:
            self._ignored += 1
            if permit is not None and permit.kind == _PROBE_SHARED:
                post = permit
            elif (
                permit is not None
                and permit.kind == _PROBE_LOCAL
                and permit.generation == self._generation
            ):
                self._probes_taken = max(0, self._probes_taken - 1)
        if post is not None:
            self._post_probe(post, "release", False, False)

    # The window

    def _reset_window_locked(self) -> None:
        self._tickets_retired += _count_value(self._seq)
        self._seq = itertools.count()
        self._fail_tickets = []
        self._slow_tickets = []
        settings = self._settings
        self._eval_at = settings.minimum_calls - 1
        if settings.window_type == "time":
            self._buckets = min(settings.window_size, _MAX_TIME_BUCKETS)
            self._bucket_width = settings.window_size / self._buckets
            bucket = int(time.perf_counter() // self._bucket_width)
            self._marks = deque([(bucket, 0)])
            self._roll_at = (bucket + 1) * self._bucket_width
        else:
            self._marks = None
            self._roll_at = math.inf

    def _rates_locked(self) -> tuple[int, float, float]:
        """Calls in the window and its failure and slow-call rates (percent).

        The window is the tickets from ``oldest`` on: the last window_size tickets
        (count), or those taken since the first bucket of the time window began.
        """
        issued = _count_value(self._seq)
        marks = self._marks
        if marks is None:
            oldest = max(0, issued - self._settings.window_size)
        else:
            first = int(time.perf_counter() // self._bucket_width) - self._buckets + 1
            while marks and marks[0][0] < first:
                marks.popleft()
            oldest = marks[0][1] if marks else issued
            self._eval_at = oldest + self._settings.minimum_calls - 1
        for tickets in (self._fail_tickets, self._slow_tickets):
            expired = bisect.bisect_left(tickets, oldest)
            if expired:
                del tickets[:expired]
        calls = issued - oldest
        if calls <= 0:
            return 0, 0.0, 0.0
        failures, slow = len(self._fail_tickets), len(self._slow_tickets)
        return calls, failures * 100.0 / calls, slow * 100.0 / calls

    def _evaluate_locked(self) -> _Event | None:
        if self._state is not CLOSED or self._override is not None:
            return None
        calls, failure_rate, slow_rate = self._rates_locked()
        settings = self._settings
        if calls < settings.minimum_calls:
            return None
        if failure_rate >= settings.failure_rate:
            reason = "failure_rate"
        elif slow_rate >= settings.slow_rate:
            reason = "slow_call_rate"
        else:
            return None
        return self._open_locked(CLOSED, reason, failure_rate, slow_rate)

    # Transitions (under the lock; the returned event is handled after releasing it)

    def _visible(self) -> str:
        if self._override is not None:
            expires = self._override_expires
            if expires is None or time.time() < expires:
                return self._override
        if self._state is OPEN and time.monotonic() >= self._open_until:
            return HALF_OPEN
        return self._state

    def _open_locked(
        self,
        from_state: str,
        reason: str,
        failure_rate: float | None,
        slow_rate: float | None,
    ) -> _Event:
        before = self._visible()
        open_for = self._settings.open_for
        self._state = OPEN
        self._fast = False
        self._generation += 1
        self._open_until = time.monotonic() + open_for
        self._reset_window_locked()
        self._reset_probes_locked()
        proposal = _Proposal(
            from_state, OPEN, self._epoch, reason, failure_rate, slow_rate, open_for
        )
        self._pending = proposal
        return _Event(before, self._visible(), reason, failure_rate, slow_rate, proposal)

    def _close_locked(
        self, reason: str, failure_rate: float | None, slow_rate: float | None
    ) -> _Event:
        before = self._visible()
        self._state = CLOSED
        self._fast = self._override is None
        self._generation += 1
        self._reset_window_locked()
        self._reset_probes_locked()
        proposal = _Proposal(HALF_OPEN, CLOSED, self._epoch, reason, failure_rate, slow_rate, 0.0)
        self._pending = proposal
        return _Event(before, self._visible(), reason, failure_rate, slow_rate, proposal)

    def _half_open_locked(self) -> _Event | None:
        if self._state is not OPEN or time.monotonic() < self._open_until:
            return None
        before = self._visible() if self._override is not None else OPEN
        self._state = HALF_OPEN
        self._generation += 1
        self._reset_probes_locked()
        return _Event(before, self._visible(), "open_for_elapsed")

    def _reset_probes_locked(self) -> None:
        self._probe_shared = True
        self._probe_recheck = 0.0
        self._probes_taken = self._probes_done = self._probes_failed = self._probes_slow = 0

    def _probe_outcome_locked(self, failed: bool, slow: bool) -> _Event | None:
        """A probe limited by this process completed; decide when all of them did."""
        self._probes_done += 1
        self._probes_failed += failed
        self._probes_slow += slow
        settings = self._settings
        if self._probes_done < settings.half_open_calls:
            return None
        failure_rate = self._probes_failed * 100.0 / self._probes_done
        slow_rate = self._probes_slow * 100.0 / self._probes_done
        if failure_rate >= settings.failure_rate or slow_rate >= settings.slow_rate:
            return self._open_locked(HALF_OPEN, "probes_failed", failure_rate, slow_rate)
        return self._close_locked("probes_succeeded", failure_rate, slow_rate)

    def _after(self, event: _Event) -> None:
        """Report a transition, update the gauge, share it with the fleet; never raises."""
        try:
            if event.before != event.after:
                data: dict[str, Any] = {
                    "from_state": event.before,
                    "to_state": event.after,
                    "reason": event.reason,
                    "failure_rate": event.failure_rate,
                    "slow_call_rate": event.slow_call_rate,
                    "source": event.source,
                    "epoch": self._epoch,
                }
                if event.instance:
                    data["instance"] = event.instance
                self.client.reporter.transition(BREAKER, self.name, **data)
                self._set_gauge(event.after)
                log = logger.warning if event.after in (OPEN, FORCED_OPEN) else logger.info
                log("Breaker %s: %s -> %s (%s)", self.name, event.before, event.after, event.reason)
            proposal = event.proposal
            if proposal is not None:
                self._hub.submit(lambda: self._share(proposal))
        except Exception:
            self._errors.exception("Breaker %s: cannot report a transition", self.name)

    def _set_gauge(self, current: str) -> None:
        gauge = self.client.metrics.breaker_state
        for state in STATES:
            gauge.labels(self.name, state).set(1 if state == current else 0)

    # The shared state (Redis), on the writer thread or rare slow paths

    def _share(self, proposal: _Proposal) -> None:
        """Write a local transition into the shared state (writer thread)."""
        keys = self.client.keys
        try:
            accepted, raw, now = self._hub.run(
                "transition",
                [keys.breakers, keys.breaker_probes(self.name)],
                [
                    self.name,
                    proposal.from_state,
                    proposal.to_state,
                    proposal.base_epoch,
                    repr(max(proposal.open_for, 0.001)),
                    self.client.instance_id,
                    proposal.reason,
                    "" if proposal.failure_rate is None else repr(proposal.failure_rate),
                    "" if proposal.slow_call_rate is None else repr(proposal.slow_call_rate),
                    keys.breaker_events,
                ],
            )
        except (redis.RedisError, OSError) as exc:
            self._redis_failed("share", exc)
            return  # kept in _pending: written again after the next resync
        with self._lock:
            if self._pending is proposal:
                self._pending = None
        if raw is not None:
            self._adopt_raw(raw, float(now), "self" if accepted else "fleet")

    def _retry_pending(self) -> None:
        """After a resync: write a transition that Redis missed, if it still holds."""
        with self._lock:
            proposal = self._pending
            if proposal is None:
                return
            if proposal.base_epoch != self._epoch or self._visible() != proposal.to_state:
                self._pending = None
                return
            if proposal.to_state == OPEN:
                proposal.open_for = self._open_until - time.monotonic()
        self._hub.submit(lambda: self._share(proposal))

    def _adopt_raw(self, raw: str | bytes, server_now: float, source: str) -> None:
        try:
            shared = BreakerState.decode(raw)
        except ValueError as exc:
            self._hub._malformed(exc)
            return
        self._adopt(shared, server_now, source)

    def _adopt(self, shared: BreakerState, server_now: float, source: str) -> None:
        """Apply a shared state newer than the one this view comes from."""
        if shared.name != self.name:
            return
        with self._lock:
            if shared.epoch <= self._epoch:
                return
            before = self._visible()
            local = self._state
            if local is OPEN and time.monotonic() >= self._open_until:
                local = HALF_OPEN
            self._epoch = shared.epoch
            if self._pending is not None and self._pending.base_epoch < shared.epoch:
                self._pending = None
            state, remaining = shared.effective(server_now)
            if state == OPEN:
                self._open_until = time.monotonic() + remaining
                if local != OPEN:
                    self._state = OPEN
                    self._generation += 1
                    self._reset_window_locked()
                    self._reset_probes_locked()
            elif state == HALF_OPEN:
                if local == CLOSED:
                    self._reset_window_locked()
                self._state = HALF_OPEN
                self._open_until = 0.0
                self._generation += 1  # a new half-open: new probes, fleet-wide ones
                self._reset_probes_locked()
            else:
                # A newer closed state always starts afresh: after half-open probes, and
                # after an operator's reset of a breaker that was already closed.
                self._state = CLOSED
                self._generation += 1
                self._reset_window_locked()
                self._reset_probes_locked()
            self._fast = self._state is CLOSED and self._override is None
            event = _Event(
                before,
                self._visible(),
                shared.reason,
                shared.failure_rate,
                shared.slow_call_rate,
                source="fleet" if source != "self" else "local",
                instance=shared.instance,
            )
        self._after(event)

    # The slow path: open, half-open, overrides

    def _acquire(self) -> _Permit | None:
        try:
            step = self._permit_step()
            tries = 0
            while isinstance(step, _ProbeRequest):
                tries += 1
                step = self._probe_reply(step, self._probe_sync(step), tries)
            return step
        except CircuitOpenError:
            raise
        except Exception:
            return self._internal_error("deciding on a call")

    async def _aacquire(self) -> _Permit | None:
        try:
            step = self._permit_step()
            tries = 0
            while isinstance(step, _ProbeRequest):
                tries += 1
                step = self._probe_reply(step, await self._probe_async(step), tries)
            return step
        except CircuitOpenError:
            raise
        except Exception:
            return self._internal_error("deciding on a call")

    def _internal_error(self, doing: str) -> _Permit:
        """A bug of ours: log it and let the call through rather than fail the caller."""
        self.client.metrics.redis_errors.labels("breaker_internal").inc()
        # `doing` (a literal of the caller) is part of the message: one cause per call site.
        self._errors.exception(f"Breaker %s: internal error while {doing}", self.name)
        return _PASS_PERMIT

    def _permit_step(self) -> _Permit | _ProbeRequest | None:
        """Decide locally, or say that Redis must be asked (half-open, fleet-wide probes)."""
        override = self._override
        if override is not None:
            expires = self._override_expires
            if expires is not None and time.time() >= expires:
                self._lift_expired_override()
            elif override == FORCED_OPEN:
                with self._lock:
                    self._rejected += 1
                retry_after = None if expires is None else max(0.0, expires - time.time())
                raise CircuitOpenError(self.name, FORCED_OPEN, retry_after)
            else:
                return _PASS_PERMIT  # forced_closed and disabled: through, metrics only
        for _ in range(3):
            state = self._state
            if state is CLOSED:
                return None
            now = time.monotonic()
            if state is OPEN:
                if now < self._open_until:
                    return self._reject(OPEN, self._open_until - now)
                with self._lock:
                    event = self._half_open_locked()
                if event is not None:
                    self._after(event)
                continue
            with self._lock:
                if self._state is not HALF_OPEN:
                    continue
                if not self._probe_shared:
                    if self._probes_taken < self._settings.half_open_calls:
                        self._probes_taken += 1
                        return _Permit(_PROBE_LOCAL, self._generation)
                elif now >= self._probe_recheck:
                    return _ProbeRequest(self._generation, self._epoch)
            return self._reject(HALF_OPEN, None)
        return self._reject(self._state, None)

    def _reject(self, state: str, retry_after: float | None) -> _Permit:
        """Enforce: raise CircuitOpenError. Observe: count it and let the call through."""
        if self._settings.observe:
            with self._lock:
                self._would_reject += 1
            return _PASS_PERMIT
        with self._lock:
            self._rejected += 1
        raise CircuitOpenError(self.name, state, retry_after)

    def _probe_args(self, request: _ProbeRequest) -> tuple[list[str], list[Any]]:
        settings = self._settings
        keys = self.client.keys
        ttl_ms = math.ceil(max(settings.open_for, settings.slow_duration, 1.0) * 1000)
        return (
            [keys.breakers, keys.breaker_probes(self.name)],
            [self.name, request.epoch, settings.half_open_calls, ttl_ms],
        )

    def _probe_sync(self, request: _ProbeRequest) -> Any:
        keys, args = self._probe_args(request)
        try:
            return self._hub.run("probe", keys, args)
        except (redis.RedisError, OSError) as exc:
            return exc

    async def _probe_async(self, request: _ProbeRequest) -> Any:
        keys, args = self._probe_args(request)
        try:
            return await scripts.arun(self.client.async_redis(), _SCRIPTS["probe"], keys, args)
        except (redis.RedisError, OSError) as exc:
            return exc

    def _probe_reply(
        self, request: _ProbeRequest, reply: Any, tries: int
    ) -> _Permit | _ProbeRequest | None:
        if isinstance(reply, BaseException):
            self._redis_failed("probe", reply)
            with self._lock:
                if self._generation == request.generation:
                    self._probe_shared = False  # this half-open goes on with local probes
            return self._permit_step()
        try:
            status, detail, now = int(reply[0]), reply[1], float(reply[2])
        except (TypeError, ValueError, IndexError):
            self._warn("Unexpected probe reply %r", reply)
            status, detail, now = -3, None, 0.0
        if status == 1:
            with self._lock:
                if self._generation == request.generation:
                    self._probes_taken += 1
            return _Permit(_PROBE_SHARED, request.generation, request.epoch)
        if status == 0:
            with self._lock:
                if self._generation == request.generation:
                    pttl = int(detail) / 1000 if detail is not None and int(detail) > 0 else 0
                    wait = min(_PROBE_RECHECK, pttl) if pttl else _PROBE_RECHECK
                    self._probe_recheck = time.monotonic() + wait
            return self._reject(HALF_OPEN, None)
        if status == -1 and detail is not None and tries < 3:
            self._adopt_raw(detail, now, "fleet")
            return self._permit_step()
        if status == -2 and detail is not None:
            try:
                shared = BreakerState.decode(detail)
            except ValueError:
                shared = None
            if shared is not None:
                state, remaining = shared.effective(now)
                if state == OPEN:
                    with self._lock:  # Redis's clock says it is not time yet
                        if self._generation == request.generation:
                            self._state = OPEN
                            self._open_until = time.monotonic() + remaining
                            self._generation += 1
                    return self._reject(OPEN, remaining)
        # No usable shared state (never written, Redis lost it, or it disagrees with
        # a local transition Redis has not seen): limit the probes in this process.
        with self._lock:
            if self._generation == request.generation:
                self._probe_shared = False
        return self._permit_step() if tries < 3 else self._reject(HALF_OPEN, None)

    def _post_probe(self, permit: _Permit, outcome: str, failed: bool, slow: bool) -> None:
        settings = self._settings
        keys = self.client.keys

        def job() -> None:
            try:
                status, raw, now = self._hub.run(
                    "probe_done",
                    [keys.breakers, keys.breaker_probes(self.name)],
                    [
                        self.name,
                        permit.epoch,
                        outcome,
                        settings.half_open_calls,
                        repr(settings.failure_rate),
                        repr(settings.slow_rate),
                        repr(max(settings.open_for, 0.001)),
                        self.client.instance_id,
                        keys.breaker_events,
                    ],
                )
            except (redis.RedisError, OSError) as exc:
                self._redis_failed("probe result", exc)
                self._probe_post_failed(permit, outcome, failed, slow)
                return
            if int(status) == 2 and raw is not None:
                self._adopt_raw(raw, float(now), "self")

        self._hub.submit(job)

    def _probe_post_failed(self, permit: _Permit, outcome: str, failed: bool, slow: bool) -> None:
        """Redis could not take a probe's result: go on deciding in this process."""
        event = None
        with self._lock:
            if permit.generation != self._generation or self._state is not HALF_OPEN:
                return
            self._probe_shared = False
            if outcome == "release":
                self._probes_taken = max(0, self._probes_taken - 1)
            else:
                event = self._probe_outcome_locked(failed, slow)
        if event is not None:
            self._after(event)

    # Policies and overrides

    def _policy_changed(self, kind: str, name: str) -> None:
        self._refresh(report=True)

    def _refresh(self, report: bool) -> None:
        spec = self.client.policy_spec(BREAKER, self.name)
        try:
            settings = _Settings.build(spec) if spec is not None else self._code_settings
        except (KeyError, TypeError, ValueError) as exc:
            self._warn("Ignoring an unusable breaker policy: %s", exc)
            settings = self._settings
        event = None
        with self._lock:
            old = self._settings
            self._settings = settings
            if (old.window_type, old.window_size) != (
                settings.window_type,
                settings.window_size,
            ) or (self._marks is None) != (settings.window_type == "count"):
                self._reset_window_locked()  # a resized window starts empty
            self._slow_s = self._tick_below = settings.slow_duration
            if self._marks is None:
                self._eval_at = settings.minimum_calls - 1
            if report:
                event = self._evaluate_locked()
        if event is not None:
            self._after(event)
        self._apply_override(self.client.state.override(BREAKER, self.name), report)

    def _apply_override(self, document: OverrideDocument | None, report: bool) -> None:
        state = document.state if document is not None else None
        expires = document.expires_at if document is not None else None
        with self._lock:
            before = self._visible()
            was = self._override
            self._override = state
            self._override_expires = expires
            if was is not None and state is None:
                self._back_to_closed_locked()
            self._fast = state is None and self._state is CLOSED
            event = _Event(before, self._visible(), "override" if state else "override_lifted")
        if report:
            self._after(event)

    def _lift_expired_override(self) -> None:
        if self._override is not None:
            self._lift_if_expired()

    def _lift_if_expired(self) -> None:
        with self._lock:
            expires = self._override_expires
            if self._override is None or expires is None or time.time() < expires:
                return
            before = self._visible_ignoring_expiry()
            self._override = None
            self._override_expires = None
            self._back_to_closed_locked()
            self._fast = self._state is CLOSED
            event = _Event(before, self._visible(), "override_expired")
        self._after(event)

    def _visible_ignoring_expiry(self) -> str:
        return self._override if self._override is not None else self._visible()

    def _back_to_closed_locked(self) -> None:
        """Leaving a manual state starts afresh, closed."""
        if self._state is not CLOSED:
            self._generation += 1
        self._state = CLOSED
        self._pending = None
        self._reset_window_locked()
        self._reset_probes_locked()

    def _maybe_discover(self) -> None:
        if self._discovered or self.client.policy_spec(BREAKER, self.name) is not None:
            return
        self._discovered = True
        self.client.reporter.discovered(BREAKER, self.name, dict(self._code_spec))

    # Counters

    def _totals_locked(self) -> dict[str, int]:
        tickets = self._tickets_retired + _count_value(self._seq)
        successes = tickets - self._ticketed_failures + self._successes
        return {
            "calls": successes + self._failures + self._ignored,
            "successes": successes,
            "failures": self._failures,
            "slow": self._slow,
            "ignored": self._ignored,
            "rejected": self._rejected,
            "would_reject": self._would_reject,
        }

    def _collect(self) -> dict[str, dict[str, Any]]:
        """Counters since the last call (the reporter calls this once a second)."""
        with self._lock:
            totals = self._totals_locked()
            delta = {key: value - self._reported.get(key, 0) for key, value in totals.items()}
            self._reported = totals
        calls = self.client.metrics.breaker_calls
        for outcome, key in (
            ("success", "successes"),
            ("failure", "failures"),
            ("ignored", "ignored"),
            ("rejected", "rejected"),
            ("would_reject", "would_reject"),
        ):
            if delta[key] > 0:
                calls.labels(self.name, outcome).inc(delta[key])
        if delta["slow"] > 0:
            self.client.metrics.breaker_slow_calls.labels(self.name).inc(delta["slow"])
        if not any(delta.values()):
            return {}
        return {f"{BREAKER}:{self.name}": {**delta, "state": self.state}}

    # Errors

    def _redis_failed(self, operation: str, exc: BaseException) -> None:
        self.client.metrics.redis_errors.labels("breaker").inc()
        self._warn(
            "Breaker %s: Redis unavailable for %s (%s); working locally", self.name, operation, exc
        )

    def _warn(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _LOG_EVERY:
            self._last_warning = now
            logger.warning(message, *args)
        else:
            logger.debug(message, *args)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()


def _outcome(failed: bool, slow: bool) -> str:
    if slow:
        return "slow_failure" if failed else "slow_success"
    return "failure" if failed else "success"
