"""Circuit breakers with Resilience4j semantics: ``CircuitBreaker``, its window and state machine.

Hot path: a closed breaker never touches Redis and holds no lock while the
protected call runs. With a count-based window a successful call costs one
attribute check, two ``perf_counter`` readings and one ``next()`` on an
``itertools.count`` (atomic under the GIL): the window only stores the tickets
of failed and slow calls, and successes are the tickets in between. Failures,
slow calls and time-based windows take a short lock to record. The decision on
a call that is not closed is a sans-IO step (``_permit_step``) with a sync and
an async driver; what needs Redis (half-open probes, transitions shared with
the other instances, adopting theirs) is in ``breaker_fleet``, and the settings
(code defaults, policy spec, exception classification) are in
``breaker_settings``.
"""

from __future__ import annotations

import bisect
import contextvars
import functools
import inspect
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar, cast

from controlplane.client.breaker_fleet import (
    PASS,
    PASS_PERMIT,
    PROBE_LOCAL,
    PROBE_SHARED,
    BreakerHub,
    Permit,
    ProbeRequest,
    Proposal,
    Transition,
)
from controlplane.client.breaker_settings import (
    FAILURE,
    IGNORE,
    KWARG_FIELDS,
    BreakerSettings,
    code_defaults,
    exception_name,
)
from controlplane.client.error_log import ErrorLog
from controlplane.client.errors import CircuitOpenError
from controlplane.client.metrics import LATENCY_BUCKETS, LatencyCounts
from controlplane.protocol.breaker_state import CLOSED, FORCED_OPEN, HALF_OPEN, OPEN, STATES
from controlplane.protocol.documents import OverrideDocument
from controlplane.protocol.schema import BREAKER, validate_name

if TYPE_CHECKING:
    from types import TracebackType

    from controlplane.client.client import Client

# STATES, KWARG_FIELDS, code_defaults and exception_name moved; still importable from here.
__all__ = ["KWARG_FIELDS", "STATES", "CircuitBreaker", "code_defaults", "exception_name"]

logger = logging.getLogger("controlplane.client")

P = ParamSpec("P")
R = TypeVar("R")

_MAX_TIME_BUCKETS: Final = 600  # time windows longer than this use wider buckets
_LOG_EVERY: Final = 10.0  # at most one warning per breaker and this many seconds


def _count_value(counter: itertools.count[int]) -> int:
    """The next value ``counter`` will return (without taking it)."""
    text = repr(counter)  # "count(42)"
    return int(text[text.index("(") + 1 : -1])


class CircuitBreaker:
    """A circuit breaker; use it as a decorator, a context manager, or with ``call``.

    ``client.breaker("payments", failure_rate_threshold=50, open_for=30)``. Keyword
    arguments are the code defaults; a policy published by the control plane
    replaces them live, and an override set on the dashboard wins over both.
    """

    def __init__(self, client: Client, name: str, **defaults: Any) -> None:
        validate_name(name)
        self.client = client
        self.name = name
        self._code_settings = BreakerSettings.from_kwargs(defaults)
        self._lock = threading.Lock()
        self._frames: contextvars.ContextVar[tuple[tuple[float, Permit | None], ...]] = (
            contextvars.ContextVar(f"controlplane-breaker-{name}", default=())
        )
        # The state machine (written under the lock; read without it on the hot path).
        self._state: str = CLOSED
        self._fast = True  # closed and no override: the decorator's one check
        self._open_until = 0.0  # time.monotonic() deadline while open
        self._epoch = 0  # epoch of the shared state this view comes from
        self._generation = 0  # bumped on every local state change
        self._pending: Proposal | None = None  # a transition not yet written to Redis
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
        self._latency = LatencyCounts()  # moved into the histogram by _collect
        self._latency_metric = client.metrics.breaker_call_seconds.labels(name)
        self._settings = self._code_settings
        self._slow_s = self._settings.slow_duration
        self._tick_below = self._slow_s  # successes faster than this just take a ticket
        self._eval_at = self._settings.minimum_calls - 1
        self._refresh(report=False)
        self._hub = BreakerHub.of(client)
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

    def __call__(self, function: Callable[P, R]) -> Callable[P, R]:
        """Decorate a sync or async function (its signature is kept for type checkers)."""
        if inspect.iscoroutinefunction(function):
            return cast(Callable[P, R], self._wrap_async(function))
        return cast(Callable[P, R], self._wrap_sync(function))

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
            self._back_to_closed_locked()
            self._fast = self._override is None
            event = Transition(before, self._visible(), "reset")
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
        bucket, bounds, first = bisect.bisect_left, LATENCY_BUCKETS, LATENCY_BUCKETS[0]
        counts, total = self._latency.counts, self._latency.total

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
                elapsed = end - start
                if elapsed <= first:  # LatencyCounts.add, inline; the bisection costs
                    counts[0] += 1  # 100 ns, a tenth of what the first bucket holds
                else:
                    counts[bucket(bounds, elapsed)] += 1
                total[0] += elapsed
                if elapsed < breaker._tick_below:
                    ticket = next(breaker._seq)
                    if ticket == breaker._eval_at or end >= breaker._roll_at:
                        breaker._checkpoint(end, ticket)
                else:
                    breaker._record(None, False, True)
                return result
            return breaker.call(function, *args, **kwargs)  # open, half-open or overridden

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

    def _succeed(self, start: float, permit: Permit | None) -> None:
        end = time.perf_counter()
        self._latency.add(end - start)
        if permit is None and end - start < self._tick_below:
            ticket = next(self._seq)
            if ticket == self._eval_at or end >= self._roll_at:
                self._checkpoint(end, ticket)
            return
        self._record(permit, False, end - start >= self._slow_s)

    def _fail(self, exc: Exception, start: float, permit: Permit | None) -> None:
        elapsed = time.perf_counter() - start
        self._latency.add(elapsed)
        try:
            verdict = self._settings.classify(type(exc))
        except Exception:  # a bug in matching must not replace the caller's exception
            self._warn("Cannot classify %r", exc)
            verdict = FAILURE
        if verdict == IGNORE:
            self._release(permit)
        else:
            self._record(permit, verdict == FAILURE, elapsed >= self._slow_s)

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

    def _record(self, permit: Permit | None, failed: bool, slow: bool) -> None:
        try:
            self._record_outcome(permit, failed, slow)
        except Exception:
            self._internal_error("recording an outcome")

    def _record_outcome(self, permit: Permit | None, failed: bool, slow: bool) -> None:
        event: Transition | None = None
        post: Permit | None = None
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
            elif permit is not None and permit.kind != PASS:
                if permit.kind == PROBE_SHARED:
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
            self._hub.post_probe(self, post, _outcome(failed, slow), failed, slow)
        if event is not None:
            self._after(event)

    def _release(self, permit: Permit | None) -> None:
        """The call ended with an ignored exception: it counts as neither."""
        try:
            self._release_permit(permit)
        except Exception:
            self._internal_error("releasing a permit")

    def _release_permit(self, permit: Permit | None) -> None:
        post = None
        with self._lock:
            self._ignored += 1
            if permit is not None and permit.kind == PROBE_SHARED:
                post = permit
            elif (
                permit is not None
                and permit.kind == PROBE_LOCAL
                and permit.generation == self._generation
            ):
                self._probes_taken = max(0, self._probes_taken - 1)
        if post is not None:
            self._hub.post_probe(self, post, "release", False, False)

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

    def _evaluate_locked(self) -> Transition | None:
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
    ) -> Transition:
        before = self._visible()
        open_for = self._settings.open_for
        self._state = OPEN
        self._fast = False
        self._generation += 1
        self._open_until = time.monotonic() + open_for
        self._reset_window_locked()
        self._reset_probes_locked()
        proposal = Proposal(
            from_state, OPEN, self._epoch, reason, failure_rate, slow_rate, open_for
        )
        self._pending = proposal
        return Transition(before, self._visible(), reason, failure_rate, slow_rate, proposal)

    def _close_locked(
        self, reason: str, failure_rate: float | None, slow_rate: float | None
    ) -> Transition:
        before = self._visible()
        self._state = CLOSED
        self._fast = self._override is None
        self._generation += 1
        self._reset_window_locked()
        self._reset_probes_locked()
        proposal = Proposal(HALF_OPEN, CLOSED, self._epoch, reason, failure_rate, slow_rate, 0.0)
        self._pending = proposal
        return Transition(before, self._visible(), reason, failure_rate, slow_rate, proposal)

    def _half_open_locked(self) -> Transition | None:
        if self._state is not OPEN or time.monotonic() < self._open_until:
            return None
        before = self._visible() if self._override is not None else OPEN
        self._state = HALF_OPEN
        self._generation += 1
        self._reset_probes_locked()
        return Transition(before, self._visible(), "open_for_elapsed")

    def _reset_probes_locked(self) -> None:
        self._probe_shared = True
        self._probe_recheck = 0.0
        self._probes_taken = self._probes_done = self._probes_failed = self._probes_slow = 0

    def _probe_outcome_locked(self, failed: bool, slow: bool) -> Transition | None:
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

    def _after(self, event: Transition) -> None:
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
                self._hub.share(self, proposal)
        except Exception:
            self._errors.exception("Breaker %s: cannot report a transition", self.name)

    def _set_gauge(self, current: str) -> None:
        gauge = self.client.metrics.breaker_state
        for state in STATES:
            gauge.labels(self.name, state).set(1 if state == current else 0)

    # The slow path: open, half-open, overrides

    def _acquire(self) -> Permit | None:
        try:
            step = self._permit_step()
            hub, tries = self._hub, 0
            while isinstance(step, ProbeRequest):
                tries += 1
                step = hub.probe_reply(self, step, hub.probe(self, step), tries)
            return step
        except CircuitOpenError:
            raise
        except Exception:
            return self._internal_error("deciding on a call")

    async def _aacquire(self) -> Permit | None:
        try:
            step = self._permit_step()
            hub, tries = self._hub, 0
            while isinstance(step, ProbeRequest):
                tries += 1
                step = hub.probe_reply(self, step, await hub.aprobe(self, step), tries)
            return step
        except CircuitOpenError:
            raise
        except Exception:
            return self._internal_error("deciding on a call")

    def _internal_error(self, doing: str) -> Permit:
        """A bug of ours: log it and let the call through rather than fail the caller."""
        self.client.metrics.redis_errors.labels("breaker_internal").inc()
        # `doing` (a literal of the caller) is part of the message: one cause per call site.
        self._errors.exception(f"Breaker %s: internal error while {doing}", self.name)
        return PASS_PERMIT

    def _permit_step(self) -> Permit | ProbeRequest | None:
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
                return PASS_PERMIT  # forced_closed and disabled: through, metrics only
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
                        return Permit(PROBE_LOCAL, self._generation)
                elif now >= self._probe_recheck:
                    return ProbeRequest(self._generation, self._epoch)
            return self._reject(HALF_OPEN, None)
        return self._reject(self._state, None)

    def _reject(self, state: str, retry_after: float | None) -> Permit:
        """Enforce: raise CircuitOpenError. Observe: count it and let the call through."""
        if self._settings.observe:
            with self._lock:
                self._would_reject += 1
            return PASS_PERMIT
        with self._lock:
            self._rejected += 1
        raise CircuitOpenError(self.name, state, retry_after)

    # Policies and overrides

    def _policy_changed(self, kind: str, name: str) -> None:
        self._refresh(report=True)

    def _refresh(self, report: bool) -> None:
        spec = self.client.policy_spec(BREAKER, self.name)
        try:
            settings = BreakerSettings.build(spec) if spec is not None else self._code_settings
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
        # An override that expired before anything looked at the breaker (the control
        # plane's tombstone may be the first news) is reported as expired first.
        self._lift_expired_override()
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
            event = Transition(before, self._visible(), "override" if state else "override_lifted")
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
            before = self._override  # still visible: expiry is what is being handled
            self._override = None
            self._override_expires = None
            self._back_to_closed_locked()
            self._fast = self._state is CLOSED
            event = Transition(before, self._visible(), "override_expired")
        self._after(event)

    def _back_to_closed_locked(self) -> None:
        """Closed afresh: after a reset, and when leaving a manual state."""
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
        self.client.reporter.discovered(BREAKER, self.name, dict(self._code_settings.spec))

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
        self._latency.flush(self._latency_metric)
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

    def _warn(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _LOG_EVERY:
            self._last_warning = now
            logger.warning(message, *args)
        else:
            logger.debug(message, *args)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._latency.after_fork()


def _outcome(failed: bool, slow: bool) -> str:
    if slow:
        return "slow_failure" if failed else "slow_success"
    return "failure" if failed else "success"
