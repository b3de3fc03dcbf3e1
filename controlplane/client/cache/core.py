"""The cache's logic, written once for threads and asyncio, without doing any I/O.

Each step of the cache is a generator: it decides from the cache's state and the
clocks, and yields a request whenever it needs the outside world (a Redis command,
the store script, the user's function, a pause, a background refresh, the shared
lookup of concurrent callers). A driver (``drivers.py``: one for threads, one for
asyncio) performs the request and sends its result back in, or throws its
exception in at the ``yield``, so a step reads like plain code with its I/O marked.
A Redis error never leaves a step. The user's function's own exception travels as
``_FunctionFailed`` and is raised bare only by the driver, outside any generator
(where a ``StopIteration`` of the user's would turn into ``RuntimeError``).
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any, Final, NamedTuple, TypeAlias, TypeVar, cast

import redis

from controlplane.client.error_log import ErrorLog
from controlplane.client.keywords import CACHE_RENAMED, policy_fields
from controlplane.protocol import cache_entries
from controlplane.protocol.cache_entries import (
    ENVELOPE_HEADER,
    ENVELOPE_VERSION,
    SERIALIZERS,
    Entry,
    EnvelopeError,
    Serializer,
    decode_envelope,
    decode_invalidation,
    encode_envelope,
    encode_invalidation,
    entry_ttl_ms,
    type_name,
)
from controlplane.protocol.schema import CACHE, validate_name, validate_spec
from controlplane.protocol.scripts import load

if TYPE_CHECKING:
    from controlplane.client.client import Client
    from controlplane.protocol.keys import KeyLayout

logger = logging.getLogger("controlplane.client")

T = TypeVar("T")
LocalKey = tuple[int, str]  # (generation, digest)

STORE_SCRIPT: Final = load("cache_store")

HIT: Final = "hit"
MISS: Final = "miss"
STALE_HIT: Final = "stale_hit"
LOCAL_HIT: Final = "local_hit"
BYPASS: Final = "bypass"
_COUNTERS: Final = ("hits", "misses", "stale_hits", "local_hits", "errors")
# The counter in reports of each result (a bypass is only in Prometheus).
_COUNTER_OF: Final = {HIT: "hits", MISS: "misses", STALE_HIT: "stale_hits", LOCAL_HIT: "local_hits"}

MAX_BACKGROUND_REFRESHES: Final = 16  # per cache and process, sync and async together
_POLL_FIRST: Final = 0.005
_POLL_MAX: Final = 0.05
_LOG_EVERY: Final = 10.0


def serializer_of(value: Any) -> Serializer:
    """The serializer a cache was given: a name of ``SERIALIZERS`` or an object."""
    if isinstance(value, str):
        if value not in SERIALIZERS:
            raise ValueError(f"serializer: choose one of {', '.join(SERIALIZERS)}")
        return SERIALIZERS[value]
    code = getattr(value, "code", None)
    if (
        not isinstance(code, int)
        or isinstance(code, bool)
        or not 0 <= code <= 255
        or not callable(getattr(value, "dumps", None))
        or not callable(getattr(value, "loads", None))
    ):
        raise ValueError("serializer: give 'pickle', 'json' or an object with code, dumps, loads")
    return cast(Serializer, value)


_identity_repr_warned: set[type] = set()


def _warn_identity_repr(kind: type, text: str) -> None:
    if kind not in _identity_repr_warned:
        _identity_repr_warned.add(kind)
        logger.warning(
            "Cache keys use repr() of %s, which differs for every object (%s); "
            "pass key= to decorate() so equal calls share an entry",
            type_name(kind),
            text,
        )


def make_digest(namespace: str, key: Any) -> str:
    """Return the digest of ``key`` in ``namespace``: stable across Python processes.

    ``docs/protocol.md`` 11.3 defines it (``controlplane.protocol.cache_entries``);
    a key part whose ``repr`` differs in every process is logged once per type.
    """
    return cache_entries.make_digest(namespace, key, _warn_identity_repr)


def invalidation_channel(keys: KeyLayout, name: str) -> str:
    """Pub/sub channel on which invalidations of cache ``name`` reach in-process tiers."""
    return keys.cache_invalidations(name)


# The in-process tier


class LocalTier:
    """A thread-safe LRU of entries by (generation, digest)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[LocalKey, Entry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: LocalKey) -> Entry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: LocalKey, entry: Entry) -> None:
        with self._lock:
            if self.size <= 0:
                return
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def discard(self, key: LocalKey) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def resize(self, size: int) -> None:
        with self._lock:
            self.size = size
            while len(self._entries) > max(size, 0):
                self._entries.popitem(last=False)

    def after_fork(self) -> None:
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)


# What a step asks its driver for


class RedisCommand(NamedTuple):
    """Run ``method(*args, **options)`` of the Redis client; its reply is sent back."""

    method: str
    args: tuple[Any, ...]
    options: Mapping[str, Any] | None = None


class StoreScript(NamedTuple):
    """Run ``cache_store.lua`` (``STORE_SCRIPT``) with these keys and arguments."""

    keys: tuple[str, str]
    args: tuple[bytes, int, str]


class Invoke(NamedTuple):
    """Call the user's function (awaiting it under asyncio); its value is sent back."""

    function: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class Pause(NamedTuple):
    """Sleep this many seconds (``time.sleep`` or ``asyncio.sleep``)."""

    seconds: float


class Share(NamedTuple):
    """Run ``_load(key, call)`` once for every concurrent caller of ``key`` in this
    process (threads wait on an event, tasks await one task); its result is sent back."""

    key: LocalKey
    call: Invoke


class Spawn(NamedTuple):
    """Drive ``steps`` in the background (a daemon thread, or a task on the loop)."""

    steps: Generator[Request, Any, None]


Request: TypeAlias = RedisCommand | StoreScript | Invoke | Pause | Share | Spawn
Steps: TypeAlias = Generator[Request, Any, T]
DigestOf: TypeAlias = Callable[[tuple[Any, ...], dict[str, Any]], str]


class _FunctionFailed(Exception):
    """Carries the decorated function's own exception through the cache machinery."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(repr(error))
        self.error = error


class _Busy:
    """The lock is held by another caller."""


class _Down:
    """Redis did not answer."""


class _Uncached:
    """The call goes to the function, uncached (disabled, or the cache itself failed)."""


_BUSY: Final = _Busy()
_DOWN: Final = _Down()
UNCACHED: Final = _Uncached()
LockOutcome = str | _Busy | _Down


class CacheCore:
    """One cache policy's settings, counters and steps; ``Cache`` adds the drivers.

    ``serializer`` is ``"json"`` (the default), an object with ``code``, ``dumps``
    and ``loads``, or ``"pickle"``. Pickle is opt-in because unpickling runs code:
    anyone who can write to the Redis server then runs code in every service that
    reads the cache. A value the serializer cannot encode is returned uncached.
    """

    kind = CACHE

    def __init__(
        self,
        client: Client,
        name: str,
        *,
        serializer: str | Serializer = "json",
        lock_timeout: float | datetime.timedelta = 5.0,
        **defaults: Any,
    ) -> None:
        self.name = validate_name(name)
        self._client = client
        self.serializer = serializer_of(serializer)
        if isinstance(lock_timeout, datetime.timedelta):
            lock_timeout = lock_timeout.total_seconds()
        if isinstance(lock_timeout, bool) or not isinstance(lock_timeout, int | float):
            raise ValueError("lock_timeout: give a number of seconds")
        if not 0 < lock_timeout <= 3600:
            raise ValueError("lock_timeout: give a number of seconds between 0 and 3600")
        self.lock_timeout = float(lock_timeout)
        self.code_defaults = validate_spec(CACHE, policy_fields(defaults, CACHE_RENAMED))
        # Effective settings: plain attributes, read by the hot path without a lock.
        self.ttl = 0.0
        self.stale_ttl = 0.0
        self.local_size = 0
        self.enabled = True
        self.generation = 0
        self.managed = False
        self._local = LocalTier(0)
        self._subscribed = False
        self._channel = invalidation_channel(client.keys, self.name)
        self._init_runtime()
        self._counts_lock = threading.Lock()
        self._interval = dict.fromkeys(_COUNTERS, 0)
        self._totals = dict.fromkeys(_COUNTERS, 0)
        self._results = {
            result: client.metrics.cache_requests.labels(self.name, result)
            for result in (*_COUNTER_OF, BYPASS)
        }
        self._redis_errors = client.metrics.redis_errors.labels("cache")
        self._logged: dict[str, float] = {}
        self._errors = ErrorLog(logger, client.metrics.internal_errors.labels("cache"))
        self._serializer_log = ErrorLog(logger)  # one line per cause and minute
        client.watch(CACHE, self.name, self._policy_changed)
        self._apply(client.policy_spec(CACHE, self.name))
        client.reporter.add_collector(self._collect)
        if not self.managed:
            client.reporter.discovered(CACHE, self.name, dict(self.code_defaults))

    def _init_runtime(self) -> None:
        """State of this process's callers (new in a forked child); the drivers add theirs."""
        self._refreshing: set[LocalKey] = set()
        self._refresh_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Cache {self.name!r} ttl={self.ttl} generation={self.generation}>"

    # Settings

    def _apply(self, spec: Mapping[str, Any] | None) -> None:
        self.managed = spec is not None
        settings = self.code_defaults if spec is None else spec
        generation = int(settings["generation"])
        local_size = int(settings["local_size"])
        self.ttl = float(settings["ttl"])
        self.stale_ttl = float(settings["stale_ttl"])
        self.enabled = bool(settings["enabled"])
        if generation != self.generation:
            self.generation = generation
            self._local.clear()  # entries of the old generation are unreachable anyway
        if local_size != self.local_size:
            self._local.resize(local_size)
            self.local_size = local_size
        if local_size > 0 and not self._subscribed:
            self._subscribed = True
            self._client.on_channel(self._channel, self._on_invalidation)

    def _policy_changed(self, kind: str, name: str) -> None:
        old_generation = self.generation
        self._apply(self._client.policy_spec(CACHE, self.name))
        if self.generation != old_generation:
            logger.info(
                "Cache %s moved to generation %d; every earlier entry is invalid",
                self.name,
                self.generation,
            )

    def _after_fork(self) -> None:
        self._init_runtime()
        self._counts_lock = threading.Lock()
        self._local.after_fork()

    # Counters

    def _count(self, result: str) -> None:
        counter = _COUNTER_OF.get(result)
        if counter is not None:
            with self._counts_lock:
                self._interval[counter] += 1
                self._totals[counter] += 1
        self._results[result].inc()

    def _count_error(self) -> None:
        with self._counts_lock:
            self._interval["errors"] += 1
            self._totals["errors"] += 1

    def _collect(self) -> dict[str, dict[str, Any]]:
        with self._counts_lock:
            counts, self._interval = self._interval, dict.fromkeys(_COUNTERS, 0)
        return {f"{CACHE}:{self.name}": counts}

    def stats(self) -> dict[str, int]:
        """Counts since this cache was created: hits, misses, stale_hits, local_hits, errors."""
        with self._counts_lock:
            return dict(self._totals)

    @property
    def local_entries(self) -> int:
        """How many entries the in-process tier holds now."""
        return len(self._local)

    def clear_local(self) -> None:
        """Drop every entry of this process's in-process tier."""
        self._local.clear()

    def _log(self, what: str, message: str, *args: Any, level: int = logging.WARNING) -> None:
        now = time.monotonic()
        if now - self._logged.get(what, -_LOG_EVERY) >= _LOG_EVERY:
            self._logged[what] = now
            logger.log(level, message, *args)

    def _internal_error(self, what: str) -> None:
        self._count_error()
        # `what` (a literal of the caller) is part of the message: one cause per call site.
        self._errors.exception(f"Cache %s: {what}; calling the function uncached", self.name)

    # Entries, keys and the in-process tier

    def _is_fresh(self, entry: Entry, now: float) -> bool:
        return entry.is_fresh(now, self.ttl)

    def _is_servable(self, entry: Entry, now: float) -> bool:
        return entry.is_servable(now, self.ttl, self.stale_ttl)

    def _key(self, key: Any) -> LocalKey:
        """The entry of ``key`` given to ``get``/``set``/``delete`` (namespace "")."""
        return (self.generation, make_digest("", key))

    def _entry_key(self, key: LocalKey) -> str:
        return self._client.keys.cache_entry(self.name, key[0], key[1])

    def _lock_key(self, key: LocalKey) -> str:
        return self._client.keys.cache_lock(self.name, key[0], key[1])

    def _remember(self, key: LocalKey, entry: Entry) -> None:
        if self.local_size > 0:
            self._local.put(key, entry)

    def _local_fresh(self, key: LocalKey) -> Entry | None:
        if self.local_size <= 0:
            return None
        entry = self._local.get(key)
        if entry is None:
            return None
        if self._is_fresh(entry, time.time()):
            return entry
        return None

    def _token(self) -> str:
        return f"{self._client.instance_id}:{os.urandom(6).hex()}"

    # Redis failures and what Redis holds

    def _redis_down(self) -> bool:
        """Whether the client's Redis health state says Redis is down (health.py)."""
        return self._client.health.down

    def _redis_failed(self, operation: str, exc: BaseException) -> None:
        self._count_error()
        self._redis_errors.inc()
        if self._client.health.failed(exc, f"cache {self.name!r}"):
            return  # unreachable or too slow: logged once for the client
        self._log(
            "redis",
            "Cache %s: Redis %s failed (%s); calling the function instead",
            self.name,
            operation,
            exc,
        )

    def _decode(self, key: str, raw: Any) -> Entry | None:
        if raw is None:
            return None
        data = bytes(raw)
        readable = len(data) >= ENVELOPE_HEADER.size and data[0] == ENVELOPE_VERSION
        code = data[1] if readable else self.serializer.code
        if code != self.serializer.code:
            # Written with another serializer (pickle, the default of earlier versions): a miss,
            # never decoded; the next store replaces it.
            self._serializer_log.log(
                logging.INFO,
                "Cache %s: an entry written with serializer code %d (this cache uses %s) "
                "counts as a miss",
                self.name,
                code,
                self.serializer.name,
            )
            return None
        try:
            return decode_envelope(data, self.serializer)
        except EnvelopeError as exc:
            self._count_error()
            self._log("envelope", "Cache %s: ignoring unreadable entry %s: %s", self.name, key, exc)
            return None

    def _envelope(self, entry: Entry) -> bytes | None:
        try:
            return encode_envelope(self.serializer, entry)
        except Exception as exc:
            self._count_error()
            self._serializer_log.log(
                logging.WARNING,
                "Cache %s: cannot serialize a %s with %s (%r); returned to the caller, not cached",
                self.name,
                type(entry.value).__name__,
                self.serializer.name,
                exc,
                exc=exc,
            )
            return None

    # Background refreshes: at most one per entry, MAX_BACKGROUND_REFRESHES in all

    def _claim_refresh(self, key: LocalKey) -> bool:
        with self._refresh_lock:
            if key in self._refreshing or len(self._refreshing) >= MAX_BACKGROUND_REFRESHES:
                return False
            self._refreshing.add(key)
            return True

    def _end_refresh(self, key: LocalKey) -> None:
        with self._refresh_lock:
            self._refreshing.discard(key)

    # Steps on Redis: a Redis error never leaves them

    def _read(self, key: LocalKey) -> Steps[tuple[Entry | None, bool]]:
        """Return (entry or None, whether Redis answered)."""
        if self._redis_down():
            self._count_error()
            self._client.health.fell_back()
            return None, False
        entry_key = self._entry_key(key)
        try:
            raw = yield RedisCommand("get", (entry_key,))
        except (redis.RedisError, OSError) as exc:
            self._redis_failed("GET", exc)
            return None, False
        return self._decode(entry_key, raw), True

    def _try_lock(self, key: LocalKey) -> Steps[LockOutcome]:
        if self._redis_down():
            return _DOWN
        token = self._token()
        try:
            taken = yield RedisCommand(
                "set",
                (self._lock_key(key), token),
                {"nx": True, "px": math.ceil(self.lock_timeout * 1000)},
            )
        except (redis.RedisError, OSError) as exc:
            self._redis_failed("SET NX", exc)
            return _DOWN
        return token if taken else _BUSY

    def _run_store(self, key: LocalKey, envelope: bytes, token: str | None) -> Steps[None]:
        if self._redis_down():
            return
        keys = (self._entry_key(key), self._lock_key(key))
        try:
            yield StoreScript(keys, (envelope, entry_ttl_ms(self.ttl, self.stale_ttl), token or ""))
        except (redis.RedisError, OSError) as exc:
            self._redis_failed("store", exc)

    def _store(self, key: LocalKey, value: Any, token: str | None) -> Steps[None]:
        try:
            entry = Entry.written(value, time.time(), self.ttl, self.stale_ttl)
            self._remember(key, entry)
            envelope = self._envelope(entry)
            if envelope is not None or token:
                yield from self._run_store(key, envelope or b"", token)
        except Exception:
            self._internal_error("storing a value failed")

    def _release(self, key: LocalKey, token: str | None) -> Steps[None]:
        if token:
            yield from self._run_store(key, b"", token)

    def _delete(self, key: LocalKey) -> Steps[None]:
        self._local.discard(key)
        message = encode_invalidation(key[0], key[1], self._client.instance_id)
        try:  # two commands, not a pipeline: a cluster pipeline cannot PUBLISH
            yield RedisCommand("delete", (self._entry_key(key),))
            yield RedisCommand("publish", (self._channel, message))
        except (redis.RedisError, OSError) as exc:
            self._redis_failed("DEL", exc)

    # Steps of a lookup

    def _compute(self, call: Invoke) -> Steps[Any]:
        try:
            return (yield call)
        except Exception as exc:
            raise _FunctionFailed(exc) from exc

    def _begin_call(
        self, digest_of: DigestOf, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> LocalKey | Entry | _Uncached:
        """A call of a decorated function up to its first I/O: UNCACHED (call the
        function directly), a fresh entry of the in-process tier (its value is the
        answer), or the key to look up with ``_call``."""
        if not self.enabled:
            self._count(BYPASS)
            return UNCACHED
        try:
            key: LocalKey = (self.generation, digest_of(args, kwargs))
        except TypeError:  # arguments that do not fit the signature: let the function say so
            return UNCACHED
        except Exception:
            self._internal_error("cannot compute the cache key")
            return UNCACHED
        entry = self._local_fresh(key)
        if entry is not None:
            self._count(LOCAL_HIT)
            return entry
        return key

    def _call(self, key: LocalKey, call: Invoke) -> Steps[Any]:
        """The lookup of a decorated call: its value, UNCACHED (call the function
        directly) or the ``_FunctionFailed`` carrying the function's own exception,
        for the driver to raise outside any generator."""
        try:
            value, result = yield Share(key, call)
        except _FunctionFailed as failed:
            self._count(MISS)
            return failed
        except Exception:
            self._internal_error("the cache lookup failed")
            return UNCACHED
        self._count(result)
        return value

    def _load(self, key: LocalKey, call: Invoke) -> Steps[tuple[Any, str]]:
        """The lookup that concurrent callers of ``key`` in this process share."""
        now = time.time()
        local = self._local.get(key) if self.local_size > 0 else None
        if local is not None and self._is_fresh(local, now):
            return local.value, LOCAL_HIT  # stored by the lookup that just ended
        found, answered = yield from self._read(key)
        if found is not None:
            if self._is_fresh(found, now):
                self._remember(key, found)
                return found.value, HIT
            if self._is_servable(found, now):
                yield from self._revalidate(key, call, use_lock=True)
                return found.value, STALE_HIT
        if not answered and local is not None and self._is_servable(local, now):
            yield from self._revalidate(key, call, use_lock=False)
            return local.value, STALE_HIT
        token: str | None = None
        if answered:
            outcome = yield from self._try_lock(key)
            deadline = time.monotonic() + self.lock_timeout
            delay = _POLL_FIRST
            while isinstance(outcome, _Busy):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break  # the holder is too slow: compute without the lock
                yield Pause(min(delay, remaining))
                delay = min(delay * 2, _POLL_MAX)
                found, answered = yield from self._read(key)
                if not answered:
                    break
                now = time.time()
                if found is not None and self._is_servable(found, now):
                    if self._is_fresh(found, now):
                        self._remember(key, found)
                        return found.value, HIT
                    return found.value, STALE_HIT
                outcome = yield from self._try_lock(key)  # free again if its holder failed
            token = outcome if isinstance(outcome, str) else None
        try:
            value = yield from self._compute(call)
        except _FunctionFailed:
            yield from self._release(key, token)
            raise
        yield from self._store(key, value, token)
        return value, MISS

    def _revalidate(self, key: LocalKey, call: Invoke, *, use_lock: bool) -> Steps[None]:
        """Recompute a stale entry in the background, if this caller is the elected one."""
        if not self._claim_refresh(key):
            return
        token: str | None = None
        if use_lock:
            outcome = yield from self._try_lock(key)
            if isinstance(outcome, _Busy):
                self._end_refresh(key)
                return  # another process recomputes it
            token = outcome if isinstance(outcome, str) else None
        try:
            yield Spawn(self._refresh(key, call, token))
        except RuntimeError:  # cannot start a thread (interpreter shutting down)
            yield from self._release(key, token)
            self._end_refresh(key)

    def _refresh(self, key: LocalKey, call: Invoke, token: str | None) -> Steps[None]:
        try:
            value = yield call
        except Exception as exc:
            yield from self._release(key, token)
            self._log(
                "refresh",
                "Cache %s: background refresh raised %r; the stale value stays",
                self.name,
                exc,
            )
        else:
            yield from self._store(key, value, token)
        finally:
            self._end_refresh(key)

    def _lookup(self, key: Any, default: Any) -> Steps[Any]:
        """``get``: the fresh value under ``key``, or ``default``."""
        if not self.enabled:
            return default
        local_key = self._key(key)
        local = self._local_fresh(local_key)
        if local is not None:
            self._count(LOCAL_HIT)
            return local.value
        found, _ = yield from self._read(local_key)
        if found is not None and self._is_fresh(found, time.time()):
            self._remember(local_key, found)
            self._count(HIT)
            return found.value
        self._count(MISS)
        return default

    # Invalidation messages

    def _on_invalidation(self, data: bytes) -> None:
        try:
            generation, digest = decode_invalidation(data)
        except ValueError as exc:
            self._log("message", "Cache %s: ignoring invalidation %r: %s", self.name, data, exc)
            return
        self._local.discard((generation, digest))
