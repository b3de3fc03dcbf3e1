"""Distributed rate limits: one atomic Lua script, one Redis round trip per check.

Each algorithm is a Lua script (``protocol/lua/limit_<algorithm>.lua``) run by SHA on the
Redis server's clock. It decides, updates the subject's state and returns
everything a response needs (remaining quota, reset and retry times) in the same
reply; a rejected request consumes nothing. The policy travels in the script's
arguments, so a change published by the control plane applies to the next call.

When Redis cannot answer within the client's timeout, the policy's
``on_redis_error`` decides: admit, reject, or limit each process with a local
token bucket. The client's Redis health state (``health.py``) is then marked
down, and every limiter decides without Redis until its probe sees Redis
answer again: a hung Redis costs one timeout, not one per limiter. Nothing but
:class:`RateLimitExceeded` (from the decorator) reaches the caller.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar, cast

import redis

from controlplane.client.error_log import ErrorLog
from controlplane.client.errors import RateLimitExceeded
from controlplane.protocol.schema import RATE_LIMIT, validate_spec
from controlplane.protocol.scripts import AsyncBatcher, LuaScript, Runner, batcher_for, runner_for
from controlplane.protocol.scripts import load as load_script

if TYPE_CHECKING:
    from controlplane.client.client import Client

logger = logging.getLogger("controlplane.client")

P = ParamSpec("P")
R = TypeVar("R")

SCRIPTS: Final[dict[str, LuaScript]] = {
    algorithm: load_script(f"limit_{algorithm}")
    for algorithm in ("token_bucket", "gcra", "fixed_window", "sliding_window")
}
# Each algorithm keeps its state under its own suffix of the base key (same hash
# slot), so switching a policy's algorithm live starts clean instead of misreading.
KEY_SUFFIXES: Final = {
    "token_bucket": ":tb",
    "gcra": ":gcra",
    "fixed_window": ":fw",
    "sliding_window": ":sw",
}
GLOBAL_SUBJECT: Final = "global"
LOCAL_SUBJECTS: Final = 10_000  # subjects the local fallback remembers (LRU)
KEYS_CACHED: Final = 10_000  # subjects whose key a limiter remembers (forgotten all at once)
TOP_SUBJECTS_TRACKED: Final = 1_000  # distinct rejected subjects counted per interval
REDIS_LOG_EVERY: Final = 10.0  # seconds between two warnings of the same error reply
DENY_RETRY_AFTER: Final = 1.0


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one check, with what ``RateLimit-*`` response headers need.

    ``limit`` is the most ``remaining`` can be: the burst (bucket capacity) for
    ``token_bucket`` and ``gcra``, the limit for the window algorithms.
    ``reset_after`` is the number of seconds until the subject's quota is whole
    again, ``retry_after`` the seconds until a rejected request would be admitted
    (``0`` when allowed).

    In observe mode ``allowed`` stays ``True``; ``observed_rejection`` says that
    enforcing the policy would have rejected this request (``remaining`` and
    ``retry_after`` are then the enforced decision's). ``source`` tells who
    decided: ``redis``, ``local`` (per-process fallback bucket), ``allow`` or
    ``deny`` (``on_redis_error`` without Redis), ``bypass`` or ``block_all``
    (an operator's override).
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float
    observed_rejection: bool = False
    source: str = "redis"


# A frozen dataclass's __init__ sets each field through object.__setattr__; the
# hot path writes the slots directly instead (the same object, in a third of the time).
_new_object = object.__new__
(
    _set_allowed,
    _set_limit,
    _set_remaining,
    _set_reset_after,
    _set_retry_after,
    _set_observed_rejection,
    _set_source,
) = (
    getattr(Decision, name).__set__
    for name in (
        "allowed",
        "limit",
        "remaining",
        "reset_after",
        "retry_after",
        "observed_rejection",
        "source",
    )
)


def _redis_decision(reply: Any) -> Decision:
    """The decision of a script reply: ``{allowed, limit, remaining, reset_ms, retry_ms}``."""
    allowed, limit, remaining, reset_ms, retry_ms = reply
    decision: Decision = _new_object(Decision)
    _set_allowed(decision, allowed == 1)
    _set_limit(decision, int(limit))
    _set_remaining(decision, int(remaining))
    _set_reset_after(decision, reset_ms / 1000.0)
    _set_retry_after(decision, retry_ms / 1000.0)
    _set_observed_rejection(decision, False)
    _set_source(decision, "redis")
    return decision


@dataclass(frozen=True)
class LimiterSettings:
    """A limiter's effective policy, swapped as a whole when the policy changes."""

    algorithm: str
    limit: int
    period: float  # seconds
    burst: int | None
    key: str
    custom_key: str
    on_redis_error: str
    mode: str
    managed: bool  # True when the control plane publishes this policy

    @property
    def capacity(self) -> int:
        """The most requests admitted at once (the burst, or the limit for windows)."""
        return self.burst if self.burst is not None else self.limit

    @property
    def observe(self) -> bool:
        return self.mode == "observe"

    @property
    def script(self) -> LuaScript:
        return SCRIPTS[self.algorithm]

    @functools.cached_property
    def argv(self) -> tuple[str, str, str]:
        return (str(self.limit), repr(self.period * 1000.0), str(self.capacity))


class _Prepared:
    """What a check needs from one version of the settings, computed once per version.

    Swapped as a whole with the settings, so a check never mixes two versions
    (a key cached under one algorithm's suffix is never used under another).
    """

    __slots__ = ("settings", "script", "hit_args", "peek_args", "keys")

    def __init__(self, settings: LimiterSettings) -> None:
        self.settings = settings
        self.script = settings.script
        self.hit_args = (*settings.argv, "1", "0")  # cost 1
        self.peek_args = (*settings.argv, "1", "1")
        self.keys: dict[str, str] = {}  # subject -> key, at most KEYS_CACHED


class _LocalBuckets:
    """Per-process token buckets, one per subject, bounded by LRU eviction."""

    def __init__(self, max_subjects: int = LOCAL_SUBJECTS) -> None:
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_subjects

    def __len__(self) -> int:
        return len(self._buckets)

    def hit(self, settings: LimiterSettings, subject: str, cost: int, peek: bool) -> Decision:
        capacity = float(settings.capacity)
        rate = settings.limit / settings.period  # tokens per second
        now = time.monotonic()
        with self._lock:
            state = self._buckets.get(subject)
            if state is None:
                tokens = capacity
            else:
                tokens = min(capacity, state[0] + max(0.0, now - state[1]) * rate)
                self._buckets.move_to_end(subject)
            allowed = tokens >= cost
            retry = 0.0 if allowed else (cost - tokens) / rate
            if allowed and not peek:
                tokens -= cost
                self._buckets[subject] = (tokens, now)
                while len(self._buckets) > self._max:
                    self._buckets.popitem(last=False)
        return Decision(
            allowed=allowed,
            limit=settings.capacity,
            remaining=max(0, math.floor(tokens)),
            reset_after=(capacity - tokens) / rate,
            retry_after=retry,
            source="local",
        )

    def clear(self) -> None:
        with self._lock:
            self._buckets.clear()


class RateLimiter:
    """A named rate limit, enforced across every process that shares the Redis server.

    ``limiter.hit(subject)`` checks and consumes one request of ``subject``'s
    quota and returns a :class:`Decision`; ``await limiter.ahit(subject)`` does
    the same from async code, batched with the event loop's other checks.
    """

    def __init__(self, client: Client, name: str, **defaults: Any) -> None:
        self._client = client
        self.name = name
        self.code_defaults = validate_spec(RATE_LIMIT, defaults)
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._rejected_subjects: Counter[str] = Counter()
        self._local = _LocalBuckets()
        self._health = client.health
        self._errors = ErrorLog(logger, client.metrics.internal_errors.labels("rate_limit"))
        self._redis_errors = ErrorLog(logger, window=REDIS_LOG_EVERY)
        self._discovered = False
        # The metric's children, labelled once (labels() per check costs more than inc()).
        self._metric = {
            result: client.metrics.rate_limit_decisions.labels(name, result)
            for result in ("allowed", "rejected", "would_reject", "fallback")
        }
        self._allowed_metric = self._metric["allowed"]
        self._check_seconds = client.metrics.rate_limit_check_seconds.labels(name)
        self._override_field = f"{RATE_LIMIT}:{name}"
        self._batcher: tuple[asyncio.AbstractEventLoop, AsyncBatcher] | None = None
        self._runner: tuple[redis.Redis, Runner] | None = None
        self._prepared = _Prepared(self._load_settings())
        client.watch(RATE_LIMIT, name, self._policy_changed)
        client.reporter.add_collector(self._collect)

    # Settings

    @property
    def settings(self) -> LimiterSettings:
        """The effective policy (swapped as a whole when the policy changes)."""
        return self._prepared.settings

    @settings.setter
    def settings(self, settings: LimiterSettings) -> None:
        self._prepared = _Prepared(settings)

    def _load_settings(self) -> LimiterSettings:
        spec = self._client.policy_spec(RATE_LIMIT, self.name)
        managed = spec is not None
        if spec is None:
            spec = self.code_defaults
            if not self._discovered:
                self._discovered = True
                self._client.reporter.discovered(RATE_LIMIT, self.name, dict(spec))
        return LimiterSettings(
            algorithm=str(spec["algorithm"]),
            limit=int(spec["limit"]),
            period=float(spec["period"]),
            burst=None if spec.get("burst") is None else int(spec["burst"]),
            key=str(spec["key"]),
            custom_key=str(spec["custom_key"]),
            on_redis_error=str(spec["on_redis_error"]),
            mode=str(spec["mode"]),
            managed=managed,
        )

    def _policy_changed(self, kind: str, name: str) -> None:
        self.settings = self._load_settings()

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._local = _LocalBuckets()
        self._counts = Counter()
        self._rejected_subjects = Counter()
        self._batcher = None
        self._runner = None

    def key_for(self, subject: str, settings: LimiterSettings | None = None) -> str:
        """Return the Redis key holding ``subject``'s state under the current algorithm."""
        settings = settings or self.settings
        return self._client.keys.rate_limit(self.name, subject) + KEY_SUFFIXES[settings.algorithm]

    def _key(self, prepared: _Prepared, subject: str) -> str:
        keys = prepared.keys
        key = keys.get(subject)
        if key is None:
            key = self.key_for(subject, prepared.settings)
            if len(keys) >= KEYS_CACHED:
                keys.clear()
            keys[subject] = key
        return key

    # Checks

    def hit(self, subject: object = GLOBAL_SUBJECT, cost: int = 1) -> Decision:
        """Check ``subject`` against the limit and consume ``cost`` requests if admitted."""
        start = time.perf_counter()
        decision = self._check(subject, cost, peek=False)
        self._check_seconds.observe(time.perf_counter() - start)
        return decision

    def peek(self, subject: object = GLOBAL_SUBJECT, cost: int = 1) -> Decision:
        """Return what ``hit`` would decide now, consuming nothing.

        ``remaining`` is the quota left before this request.
        """
        start = time.perf_counter()
        decision = self._check(subject, cost, peek=True)
        self._check_seconds.observe(time.perf_counter() - start)
        return decision

    async def ahit(self, subject: object = GLOBAL_SUBJECT, cost: int = 1) -> Decision:
        """``hit`` for async code: the Redis call is batched with the loop's other checks."""
        start = time.perf_counter()
        decision = await self._acheck(subject, cost, peek=False)
        self._check_seconds.observe(time.perf_counter() - start)
        return decision

    async def apeek(self, subject: object = GLOBAL_SUBJECT, cost: int = 1) -> Decision:
        start = time.perf_counter()
        decision = await self._acheck(subject, cost, peek=True)
        self._check_seconds.observe(time.perf_counter() - start)
        return decision

    def _check(self, subject: object, cost: int, peek: bool) -> Decision:
        prepared = self._prepared
        settings = prepared.settings
        text = subject if type(subject) is str else _subject_text(subject)
        if type(cost) is not int or cost < 1:
            _check_cost(cost)
        try:
            decision = self._before_redis(settings)
            if decision is None:
                if self._health.down:
                    decision = self._fallback(settings, text, cost, peek)
                else:
                    try:
                        reply = self._sync_runner().run(
                            prepared.script,
                            (self._key(prepared, text),),
                            _args(prepared, cost, peek),
                        )
                        decision = _redis_decision(reply)
                    except (redis.RedisError, OSError) as exc:
                        self._redis_failed(exc)
                        decision = self._fallback(settings, text, cost, peek)
        except Exception:
            decision = self._internal_error(settings, text, cost, peek)
        if decision.allowed and not peek:
            self._count_allowed()
            return decision
        return self._finish(settings, text, decision, peek)

    async def _acheck(self, subject: object, cost: int, peek: bool) -> Decision:
        prepared = self._prepared
        settings = prepared.settings
        text = subject if type(subject) is str else _subject_text(subject)
        if type(cost) is not int or cost < 1:
            _check_cost(cost)
        try:
            decision = self._before_redis(settings)
            if decision is None:
                if self._health.down:
                    decision = self._fallback(settings, text, cost, peek)
                else:
                    try:
                        reply = await self._loop_batcher().submit(
                            prepared.script,
                            (self._key(prepared, text),),
                            _args(prepared, cost, peek),
                        )
                        decision = _redis_decision(reply)
                    except (redis.RedisError, OSError) as exc:
                        self._redis_failed(exc)
                        decision = self._fallback(settings, text, cost, peek)
        except asyncio.CancelledError:
            raise
        except Exception:
            decision = self._internal_error(settings, text, cost, peek)
        if decision.allowed and not peek:
            self._count_allowed()
            return decision
        return self._finish(settings, text, decision, peek)

    def _sync_runner(self) -> Runner:
        client = self._client.redis  # a new one after a fork
        cached = self._runner
        if cached is not None and cached[0] is client:
            return cached[1]
        runner = runner_for(client)
        self._runner = (client, runner)
        return runner

    def _loop_batcher(self) -> AsyncBatcher:
        loop = asyncio.get_running_loop()
        cached = self._batcher
        if cached is not None and cached[0] is loop:
            return cached[1]
        batcher = batcher_for(self._client.async_redis())
        self._batcher = (loop, batcher)
        return batcher

    def _before_redis(self, settings: LimiterSettings) -> Decision | None:
        """The override's decision, if an operator set one; None to ask Redis."""
        if self._override_field not in self._client.state.overrides:
            return None  # the common case, without building the field name
        override = self._client.state.override(RATE_LIMIT, self.name)
        if override is None:
            return None
        if override.state == "bypass":
            return Decision(True, settings.capacity, settings.capacity, 0.0, 0.0, source="bypass")
        if override.state == "block_all":
            wait = settings.period
            if override.expires_at is not None:
                wait = max(0.0, override.expires_at - time.time())
            return Decision(False, settings.capacity, 0, wait, wait, source="block_all")
        return None

    def _fallback(self, settings: LimiterSettings, subject: str, cost: int, peek: bool) -> Decision:
        action = settings.on_redis_error
        self._count("fallback")
        self._health.fell_back()
        if action == "allow":
            return Decision(True, settings.capacity, settings.capacity, 0.0, 0.0, source="allow")
        if action == "deny":
            return Decision(
                False, settings.capacity, 0, DENY_RETRY_AFTER, DENY_RETRY_AFTER, source="deny"
            )
        return self._local.hit(settings, subject, cost, peek)

    def _redis_failed(self, exc: BaseException) -> None:
        self._client.metrics.redis_errors.labels("rate_limit").inc()
        if self._health.failed(exc, f"rate limit {self.name!r}"):
            return  # unreachable or too slow: every enforcer skips Redis, logged once
        # An error reply is about one key (e.g. a foreign value under it): only this
        # call falls back.
        self._redis_errors.log(
            logging.WARNING,
            "Rate limit %r: Redis failed (%s); using on_redis_error",
            self.name,
            exc,
            exc=exc,
        )

    def _internal_error(
        self, settings: LimiterSettings, subject: str, cost: int, peek: bool
    ) -> Decision:
        self._errors.exception("Rate limit %r: internal error; using on_redis_error", self.name)
        try:
            return self._fallback(settings, subject, cost, peek)
        except Exception:
            return Decision(True, settings.capacity, settings.capacity, 0.0, 0.0, source="allow")

    def _finish(
        self, settings: LimiterSettings, subject: str, decision: Decision, peek: bool
    ) -> Decision:
        if decision.allowed:
            if not peek:
                self._count("allowed")
            return decision
        if settings.observe and decision.source != "block_all":
            if not peek:
                self._count("would_reject", subject)
            return replace(decision, allowed=True, observed_rejection=True)
        if not peek:
            self._count("rejected", subject)
        return decision

    # Counters

    def _count_allowed(self) -> None:
        self._allowed_metric.inc()
        with self._lock:
            self._counts["allowed"] += 1

    def _count(self, result: str, subject: str | None = None) -> None:
        self._metric[result].inc()
        with self._lock:
            self._counts[result] += 1
            if subject is not None and (
                subject in self._rejected_subjects
                or len(self._rejected_subjects) < TOP_SUBJECTS_TRACKED
            ):
                self._rejected_subjects[subject] += 1

    def _collect(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            counts, self._counts = self._counts, Counter()
            subjects, self._rejected_subjects = self._rejected_subjects, Counter()
        report: dict[str, Any] = {
            result: counts[result] for result in ("allowed", "rejected", "would_reject", "fallback")
        }
        report["top_rejected"] = dict(subjects.most_common(10))
        return {f"{RATE_LIMIT}:{self.name}": report}

    # Decorator

    def decorate(
        self, key: Callable[..., object] | None = None
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Check every call of the function; raise ``RateLimitExceeded`` when rejected.

        ``key`` receives the call's arguments and returns the subject; without
        it every call shares the ``global`` subject.
        """

        def subject_of(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> object:
            return GLOBAL_SUBJECT if key is None else key(*args, **kwargs)

        def decorator(function: Callable[P, R]) -> Callable[P, R]:
            if inspect.iscoroutinefunction(function):
                coroutine_function: Callable[..., Awaitable[Any]] = function

                @functools.wraps(function)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    decision = await self.ahit(subject_of(args, kwargs))
                    if not decision.allowed:
                        raise RateLimitExceeded(self.name, decision)
                    return await coroutine_function(*args, **kwargs)

                return cast(Callable[P, R], async_wrapper)

            @functools.wraps(function)
            def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
                decision = self.hit(subject_of(args, kwargs))
                if not decision.allowed:
                    raise RateLimitExceeded(self.name, decision)
                return function(*args, **kwargs)

            return wrapper

        return decorator

    def __repr__(self) -> str:
        s = self.settings
        return f"<RateLimiter {self.name!r} {s.algorithm} {s.limit}/{s.period:g}s {s.mode}>"


def _subject_text(subject: object) -> str:
    if subject is None:
        return GLOBAL_SUBJECT
    return subject if isinstance(subject, str) else str(subject)


def _check_cost(cost: object) -> None:
    if isinstance(cost, bool) or not isinstance(cost, int) or cost < 1:
        raise ValueError(f"cost must be a whole number >= 1, not {cost!r}")


def _args(prepared: _Prepared, cost: int, peek: bool) -> tuple[str, ...]:
    if cost == 1:
        return prepared.peek_args if peek else prepared.hit_args
    return (*prepared.settings.argv, str(cost), "1" if peek else "0")
