"""The fleet side of circuit breakers: the state every instance shares through Redis.

When a breaker opens or closes, a background thread writes the new state into
the breakers hash and publishes it in one Lua script that compares epochs, so
two instances tripping at once produce one epoch. Every instance applies what
it hears on the breaker-events channel, reads the hash when it starts and on
every resync, and takes half-open probe permits from one Redis counter, so
``half_open_calls`` is a limit for the whole fleet. When Redis is unreachable
everything keeps working per process: while the client's Redis health state
(``health.py``) says Redis is down, no breaker waits on Redis (probes are
limited locally), and the transitions Redis missed are written as soon as it
answers again. ``BreakerHub`` (one per client) does all
of this for the client's breakers, under each breaker's lock; it also defines
the records a breaker and its hub exchange (permits, probe requests, proposed
transitions). ``docs/protocol.md`` ("Shared breaker state") describes the Redis
side.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import redis

from controlplane.client.error_log import ErrorLog
from controlplane.protocol import scripts
from controlplane.protocol.breaker_state import CLOSED, HALF_OPEN, OPEN, BreakerState

if TYPE_CHECKING:
    from controlplane.client.breaker import CircuitBreaker
    from controlplane.client.client import Client

logger = logging.getLogger("controlplane.client")

# Kinds of permit handed out by the slow path (None is "closed, record in the window").
PASS: Final = 1  # let through, count in the metrics only
PROBE_LOCAL: Final = 2  # half-open probe limited by this process
PROBE_SHARED: Final = 3  # half-open probe permitted by the fleet-wide counter

_PROBE_RECHECK: Final = 1.0  # seconds between asking Redis again once probes ran out
_HUB_IDLE: Final = 2.0  # the writer thread exits after this long without work

# What a probe "fails" with while the client knows Redis is down (it is not tried).
_REDIS_DOWN: Final = redis.ConnectionError("Redis is down (the client's health state)")

_SCRIPTS: Final = {
    name: scripts.load(f"breaker_{name}") for name in ("transition", "probe", "probe_done", "read")
}


@dataclass(frozen=True)
class Permit:
    kind: int
    generation: int
    epoch: int = 0


PASS_PERMIT: Final = Permit(PASS, -1)


@dataclass(frozen=True)
class ProbeRequest:
    """The slow path needs Redis: ask the fleet for a half-open probe permit."""

    generation: int
    epoch: int


@dataclass
class Proposal:
    """A local transition to write into the shared state."""

    from_state: str
    to_state: str
    base_epoch: int
    reason: str
    failure_rate: float | None
    slow_call_rate: float | None
    open_for: float


@dataclass
class Transition:
    """What a transition needs done once the lock is released."""

    before: str
    after: str
    reason: str
    failure_rate: float | None = None
    slow_call_rate: float | None = None
    proposal: Proposal | None = None
    source: str = "local"
    instance: str = ""


class BreakerHub:
    """Per client: the events subscription, resync reads, a small writer thread, probes."""

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
        client.health.on_up(self.on_redis_back)

    @classmethod
    def of(cls, client: Client) -> BreakerHub:
        with cls._hubs_lock:
            hub: BreakerHub | None = getattr(client, "_breaker_hub", None)
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

    # Transitions going out, on the writer thread.

    def share(self, breaker: CircuitBreaker, proposal: Proposal) -> None:
        """Write a local transition into the shared state, on the writer thread."""
        self.submit(lambda: self._write(breaker, proposal))

    def _write(self, breaker: CircuitBreaker, proposal: Proposal) -> None:
        """The writer thread's job for ``share``: one compare-and-set on the epoch."""
        if self.client.health.down:
            return  # kept in _pending: written when Redis answers again (on_redis_back)
        keys = self.client.keys
        try:
            _, raw, now = self.run(
                "transition",
                [keys.breakers, keys.breaker_probes(breaker.name)],
                [
                    breaker.name,
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
            self._redis_failed(breaker, "share", exc)
            return  # kept in _pending: written again when Redis is back, or after a resync
        with breaker._lock:
            if breaker._pending is proposal:
                breaker._pending = None
        if raw is not None:
            self.adopt_raw(breaker, raw, float(now))

    def _retry_pending(self, breaker: CircuitBreaker) -> None:
        """After a resync: write a transition that Redis missed, if it still holds."""
        with breaker._lock:
            proposal = breaker._pending
            if proposal is None:
                return
            if proposal.base_epoch != breaker._epoch or breaker._visible() != proposal.to_state:
                breaker._pending = None
                return
            if proposal.to_state == OPEN:
                proposal.open_for = breaker._open_until - time.monotonic()
        self.submit(lambda: self._write(breaker, proposal))

    def on_redis_back(self) -> None:
        """Redis answers again: write at once the transitions it missed."""
        for breaker in list(self.breakers.values()):
            self._retry_pending(breaker)

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
            self.adopt(breaker, shared, shared.since)

    def on_resync(self) -> None:
        """After every snapshot read: read the shared state of every breaker here."""
        breakers = list(self.breakers.values())
        self.read_shared(breakers)
        for breaker in breakers:
            breaker._maybe_discover()
            self._retry_pending(breaker)

    def read_shared(self, breakers: list[CircuitBreaker]) -> None:
        if not breakers or self.client.health.down:
            return
        try:
            now, raws = self.run("read", [self.client.keys.breakers], [b.name for b in breakers])
        except (redis.RedisError, OSError) as exc:
            self.client.metrics.redis_errors.labels("breaker").inc()
            self.client.health.failed(exc, "breaker states")
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
            self.adopt(breaker, shared, server_now)

    def _redis_failed(self, breaker: CircuitBreaker, operation: str, exc: BaseException) -> None:
        self.client.metrics.redis_errors.labels("breaker").inc()
        if exc is _REDIS_DOWN:
            return  # not tried: the health state logged the outage
        if self.client.health.failed(exc, f"breaker {breaker.name!r}"):
            return  # unreachable or too slow: logged once for the client
        breaker._warn(
            "Breaker %s: Redis unavailable for %s (%s); working locally",
            breaker.name,
            operation,
            exc,
        )

    def _malformed(self, exc: Exception) -> None:
        self.client.metrics.malformed.labels(self.client.environment).inc()
        # Every resync meets it again until someone repairs it: once a minute is enough.
        self._malformed_log.log(logging.ERROR, "Ignoring a malformed shared breaker state: %s", exc)

    def adopt_raw(self, breaker: CircuitBreaker, raw: str | bytes, server_now: float) -> None:
        try:
            shared = BreakerState.decode(raw)
        except ValueError as exc:
            self._malformed(exc)
            return
        self.adopt(breaker, shared, server_now)

    def adopt(self, breaker: CircuitBreaker, shared: BreakerState, server_now: float) -> None:
        """Apply a shared state newer than the one this view comes from.

        The transition is reported as ``local`` when this instance wrote the state
        (its own trip or its last probe), else as ``fleet``: the same whether the
        script's reply or the channel's message gets here first.
        """
        if shared.name != breaker.name:
            return
        with breaker._lock:
            if shared.epoch <= breaker._epoch:
                return
            before = breaker._visible()
            local = breaker._state
            if local is OPEN and time.monotonic() >= breaker._open_until:
                local = HALF_OPEN
            breaker._epoch = shared.epoch
            if breaker._pending is not None and breaker._pending.base_epoch < shared.epoch:
                breaker._pending = None
            state, remaining = shared.effective(server_now)
            if state == OPEN:
                breaker._open_until = time.monotonic() + remaining
                if local != OPEN:
                    breaker._state = OPEN
                    breaker._generation += 1
                    breaker._reset_window_locked()
                    breaker._reset_probes_locked()
            elif state == HALF_OPEN:
                if local == CLOSED:
                    breaker._reset_window_locked()
                breaker._state = HALF_OPEN
                breaker._open_until = 0.0
                breaker._generation += 1  # a new half-open: new probes, fleet-wide ones
                breaker._reset_probes_locked()
            else:
                # A newer closed state always starts afresh: after half-open probes, and
                # after an operator's reset of a breaker that was already closed.
                breaker._state = CLOSED
                breaker._generation += 1
                breaker._reset_window_locked()
                breaker._reset_probes_locked()
            breaker._fast = breaker._state is CLOSED and breaker._override is None
            event = Transition(
                before,
                breaker._visible(),
                shared.reason,
                shared.failure_rate,
                shared.slow_call_rate,
                source="local" if shared.instance == self.client.instance_id else "fleet",
                instance=shared.instance,
            )
        breaker._after(event)

    # Half-open probes, limited fleet-wide by one Redis counter.

    def _probe_args(
        self, breaker: CircuitBreaker, request: ProbeRequest
    ) -> tuple[list[str], list[Any]]:
        settings = breaker._settings
        keys = self.client.keys
        ttl_ms = math.ceil(max(settings.open_for, settings.slow_duration, 1.0) * 1000)
        return (
            [keys.breakers, keys.breaker_probes(breaker.name)],
            [breaker.name, request.epoch, settings.half_open_calls, ttl_ms],
        )

    def probe(self, breaker: CircuitBreaker, request: ProbeRequest) -> Any:
        if self.client.health.down:
            self.client.health.fell_back()
            return _REDIS_DOWN  # probes are limited in this process meanwhile
        keys, args = self._probe_args(breaker, request)
        try:
            return self.run("probe", keys, args)
        except (redis.RedisError, OSError) as exc:
            return exc

    async def aprobe(self, breaker: CircuitBreaker, request: ProbeRequest) -> Any:
        if self.client.health.down:
            self.client.health.fell_back()
            return _REDIS_DOWN
        keys, args = self._probe_args(breaker, request)
        try:
            return await scripts.arun(self.client.async_redis(), _SCRIPTS["probe"], keys, args)
        except (redis.RedisError, OSError) as exc:
            return exc

    def probe_reply(
        self, breaker: CircuitBreaker, request: ProbeRequest, reply: Any, tries: int
    ) -> Permit | ProbeRequest | None:
        if isinstance(reply, BaseException):
            self._redis_failed(breaker, "probe", reply)
            with breaker._lock:
                if breaker._generation == request.generation:
                    breaker._probe_shared = False  # this half-open goes on with local probes
            return breaker._permit_step()
        try:
            status, detail, now = int(reply[0]), reply[1], float(reply[2])
        except (TypeError, ValueError, IndexError):
            breaker._warn("Unexpected probe reply %r", reply)
            status, detail, now = -3, None, 0.0
        if status == 1:
            with breaker._lock:
                if breaker._generation == request.generation:
                    breaker._probes_taken += 1
            return Permit(PROBE_SHARED, request.generation, request.epoch)
        if status == 0:
            with breaker._lock:
                if breaker._generation == request.generation:
                    pttl = int(detail) / 1000 if detail is not None and int(detail) > 0 else 0
                    wait = min(_PROBE_RECHECK, pttl) if pttl else _PROBE_RECHECK
                    breaker._probe_recheck = time.monotonic() + wait
            return breaker._reject(HALF_OPEN, None)
        if status == -1 and detail is not None and tries < 3:
            self.adopt_raw(breaker, detail, now)
            return breaker._permit_step()
        if status == -2 and detail is not None:
            try:
                shared = BreakerState.decode(detail)
            except ValueError:
                shared = None
            if shared is not None:
                state, remaining = shared.effective(now)
                if state == OPEN:
                    with breaker._lock:  # Redis's clock says it is not time yet
                        if breaker._generation == request.generation:
                            breaker._state = OPEN
                            breaker._open_until = time.monotonic() + remaining
                            breaker._generation += 1
                    return breaker._reject(OPEN, remaining)
        # No usable shared state (never written, Redis lost it, or it disagrees with
        # a local transition Redis has not seen): limit the probes in this process.
        with breaker._lock:
            if breaker._generation == request.generation:
                breaker._probe_shared = False
        return breaker._permit_step() if tries < 3 else breaker._reject(HALF_OPEN, None)

    def post_probe(
        self, breaker: CircuitBreaker, permit: Permit, outcome: str, failed: bool, slow: bool
    ) -> None:
        settings = breaker._settings
        keys = self.client.keys

        def job() -> None:
            if self.client.health.down:
                self._probe_post_failed(breaker, permit, outcome, failed, slow)
                return
            try:
                status, raw, now = self.run(
                    "probe_done",
                    [keys.breakers, keys.breaker_probes(breaker.name)],
                    [
                        breaker.name,
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
                self._redis_failed(breaker, "probe result", exc)
                self._probe_post_failed(breaker, permit, outcome, failed, slow)
                return
            if int(status) == 2 and raw is not None:
                self.adopt_raw(breaker, raw, float(now))

        self.submit(job)

    def _probe_post_failed(
        self, breaker: CircuitBreaker, permit: Permit, outcome: str, failed: bool, slow: bool
    ) -> None:
        """Redis could not take a probe's result: go on deciding in this process."""
        event = None
        with breaker._lock:
            if permit.generation != breaker._generation or breaker._state is not HALF_OPEN:
                return
            breaker._probe_shared = False
            if outcome == "release":
                breaker._probes_taken = max(0, breaker._probes_taken - 1)
            else:
                event = breaker._probe_outcome_locked(failed, slow)
        if event is not None:
            breaker._after(event)
