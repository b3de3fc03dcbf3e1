"""A Redis cache with stampede protection, driven by the control plane's cache policies.

``client.cached("prices", ttl=30)`` decorates sync and async functions;
``client.cache("prices")`` returns the :class:`Cache` itself (``get``/``set``/``delete``).

What happens on a call (``docs/_sections/cache.md`` has the Redis layout):

1. Disabled by policy: the function is called, nothing else.
2. The in-process tier (``local_size > 0``): a fresh entry is returned without Redis.
3. Concurrent callers of the same entry in this process share one lookup and at most
   one computation (threads wait on an event, asyncio tasks await one task).
4. ``GET`` the entry. Fresh: returned. Stale but inside the stale window: returned at
   once, and one caller fleet-wide (elected by ``SET NX PX`` on the lock key) recomputes
   it in the background (a daemon thread for sync functions, a task for async ones).
5. Missing: the caller that takes the lock computes and stores it; the others poll the
   entry for up to ``lock_timeout`` (or until the lock is freed, and then take it), and
   compute it themselves as a last resort.

Redis failures never reach the caller: the cache degrades to calling the function
(and to the in-process tier). An exception raised by the function is never cached.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import datetime
import decimal
import enum
import functools
import hashlib
import inspect
import json
import logging
import math
import os
import pathlib
import pickle
import struct
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar, cast

import redis
from redis.exceptions import NoScriptError

from controlplane.client.error_log import ErrorLog
from controlplane.protocol.schema import CACHE, validate_name, validate_spec

if TYPE_CHECKING:
    from controlplane.client.client import Client
    from controlplane.protocol.keys import KeyLayout

logger = logging.getLogger("controlplane.client")

F = TypeVar("F", bound=Callable[..., Any])
LocalKey = tuple[int, str]  # (generation, digest)

ENVELOPE_VERSION: Final = 1
# version (uint8), serializer code (uint8), created_at, fresh_until, stale_until
# (IEEE 754 doubles, unix seconds of the writer's clock), big-endian; then the payload.
ENVELOPE_HEADER: Final = struct.Struct(">BBddd")
DIGEST_DOMAIN: Final = b"rcp-cache-key-v1\x00"
DIGEST_LENGTH: Final = 32  # hex characters of the SHA-256 digest kept in the key

_STORE_LUA: Final = (pathlib.Path(__file__).with_name("lua") / "cache_store.lua").read_text()
_STORE_SHA: Final = hashlib.sha1(_STORE_LUA.encode()).hexdigest()

_ALIASES: Final = {"stale": "stale_ttl"}
_COUNTERS: Final = ("hits", "misses", "stale_hits", "local_hits", "errors")
_COUNTER_OF: Final = {
    "hit": "hits",
    "miss": "misses",
    "stale_hit": "stale_hits",
    "local_hit": "local_hits",
}
HIT: Final = "hit"
MISS: Final = "miss"
STALE_HIT: Final = "stale_hit"
LOCAL_HIT: Final = "local_hit"
BYPASS: Final = "bypass"

MAX_BACKGROUND_REFRESHES: Final = 16  # per cache and process, sync and async together
REDIS_DOWN_BACKOFF: Final = 1.0  # seconds without trying Redis after a connection failure
_POLL_FIRST: Final = 0.005
_POLL_MAX: Final = 0.05
_LOG_EVERY: Final = 10.0


# Serializers


class Serializer(Protocol):
    """Turns values into bytes and back. ``code`` (0-255) is stored in every envelope.

    Codes 0-127 are reserved for the library (1 pickle, 2 json); use 128-255 for
    your own. A cache only decodes entries written with its own serializer's code.
    """

    code: int
    name: str

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class PickleSerializer:
    """Any picklable value. Unpickling trusts whoever can write to Redis."""

    code = 1
    name = "pickle"

    def dumps(self, value: Any) -> bytes:
        return pickle.dumps(value, protocol=5)

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)


class JsonSerializer:
    """JSON values (UTF-8, compact); tuples come back as lists."""

    code = 2
    name = "json"

    def dumps(self, value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()

    def loads(self, data: bytes) -> Any:
        return json.loads(data)


SERIALIZERS: Final[dict[str, Serializer]] = {"pickle": PickleSerializer(), "json": JsonSerializer()}


def _serializer(value: Any) -> Serializer:
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


# Envelopes


class EnvelopeError(ValueError):
    """A value found in Redis is not an envelope this cache can read."""


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """A cached value with the times (unix seconds) it was written and stays usable."""

    value: Any
    created: float
    fresh_until: float
    stale_until: float


def encode_envelope(serializer: Serializer, entry: Entry) -> bytes:
    """Return the bytes stored in Redis for ``entry``."""
    header = ENVELOPE_HEADER.pack(
        ENVELOPE_VERSION, serializer.code, entry.created, entry.fresh_until, entry.stale_until
    )
    return header + serializer.dumps(entry.value)


def decode_envelope(data: bytes, serializer: Serializer) -> Entry:
    """Return the entry stored in ``data`` or raise ``EnvelopeError``."""
    if len(data) < ENVELOPE_HEADER.size:
        raise EnvelopeError(f"{len(data)} bytes, shorter than the header")
    version, code, created, fresh_until, stale_until = ENVELOPE_HEADER.unpack_from(data)
    if version != ENVELOPE_VERSION:
        raise EnvelopeError(f"envelope version {version}")
    if code != serializer.code:
        raise EnvelopeError(f"serializer code {code}, this cache uses {serializer.code}")
    if not all(math.isfinite(t) for t in (created, fresh_until, stale_until)):
        raise EnvelopeError("times are not finite")
    try:
        value = serializer.loads(data[ENVELOPE_HEADER.size :])
    except Exception as exc:
        raise EnvelopeError(f"payload does not decode: {exc!r}") from exc
    return Entry(value, created, fresh_until, stale_until)


# Digests of call arguments


def make_digest(namespace: str, key: Any) -> str:
    """Return the digest of ``key`` in ``namespace``: stable across Python processes.

    ``SHA-256(DIGEST_DOMAIN + utf8(namespace) + b"\\0" + canonical(key))``, first 32
    hex characters; ``canonical`` is the type-tagged encoding of :func:`_encode`.
    """
    parts: list[bytes] = [DIGEST_DOMAIN, namespace.encode("utf-8", "surrogatepass"), b"\x00"]
    _encode(key, parts, 0)
    return hashlib.sha256(b"".join(parts)).hexdigest()[:DIGEST_LENGTH]


def _type_name(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


def _blob(out: list[bytes], tag: bytes, data: bytes) -> None:
    out.append(tag + str(len(data)).encode() + b":" + data)


def _text(out: list[bytes], tag: bytes, text: str) -> None:
    _blob(out, tag, text.encode("utf-8", "surrogatepass"))


def _encoded(value: Any, depth: int) -> bytes:
    parts: list[bytes] = []
    _encode(value, parts, depth)
    return b"".join(parts)


_default_repr_warned: set[type] = set()


def _encode(value: Any, out: list[bytes], depth: int) -> None:
    if depth > 64:
        raise ValueError("cache key nested too deeply")
    depth += 1
    if value is None:
        out.append(b"N")
    elif value is True:
        out.append(b"T")
    elif value is False:
        out.append(b"F")
    elif isinstance(value, enum.Enum):
        _text(out, b"e", _type_name(type(value)))
        _encode(value.value, out, depth)
    elif isinstance(value, int):
        _text(out, b"i", str(int(value)))
    elif isinstance(value, float):
        _text(out, b"f", float(value).hex())
    elif isinstance(value, str):
        _text(out, b"s", str(value))
    elif isinstance(value, bytes | bytearray | memoryview):
        _blob(out, b"b", bytes(value))
    elif isinstance(value, tuple | list):
        out.append((b"(" if isinstance(value, tuple) else b"[") + str(len(value)).encode() + b":")
        for item in value:
            _encode(item, out, depth)
    elif isinstance(value, Mapping):
        items = sorted((_encoded(k, depth), _encoded(v, depth)) for k, v in value.items())
        out.append(b"{" + str(len(items)).encode() + b":")
        for encoded_key, encoded_value in items:
            out.append(encoded_key)
            out.append(encoded_value)
    elif isinstance(value, set | frozenset):
        members = sorted(_encoded(item, depth) for item in value)
        out.append(b"<" + str(len(members)).encode() + b":")
        out.extend(members)
    elif isinstance(value, datetime.date | datetime.time):
        _text(out, b"d", _type_name(type(value)) + "|" + value.isoformat())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        _text(out, b"D", _type_name(type(value)))
        fields = [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
        _encode(fields, out, depth)
    elif isinstance(value, decimal.Decimal | uuid.UUID | pathlib.PurePath | complex):
        _text(out, b"r", _type_name(type(value)) + "|" + str(value))
    else:
        text = repr(value)
        if " at 0x" in text and type(value) not in _default_repr_warned:
            _default_repr_warned.add(type(value))
            logger.warning(
                "Cache keys use repr() of %s, which differs for every object (%s); "
                "pass key= to decorate() so equal calls share an entry",
                _type_name(type(value)),
                text,
            )
        _text(out, b"o", _type_name(type(value)) + "|" + text)


def _call_key(signature: inspect.Signature | None, args: tuple[Any, ...], kwargs: Any) -> Any:
    """What a call's digest covers: its arguments bound by name, defaults applied."""
    if signature is None:
        return (args, kwargs)
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    return tuple(bound.arguments.items())


def _qualified_name(function: Callable[..., Any]) -> str:
    """``module.qualname`` of a function (of its class for other callables)."""
    module = getattr(function, "__module__", None) or type(function).__module__
    qualname = getattr(function, "__qualname__", None) or type(function).__qualname__
    return f"{module}.{qualname}"


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


# Coalescing


class _FunctionFailed(Exception):
    """Carries the decorated function's own exception through the cache machinery."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(repr(error))
        self.error = error


class _Flight:
    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: tuple[Any, str] | None = None
        self.error: BaseException | None = None


@dataclasses.dataclass(slots=True)
class _Call:
    function: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    called: bool = False


class _Busy:
    """The lock is held by another caller."""


class _Down:
    """Redis did not answer."""


_BUSY: Final = _Busy()
_DOWN: Final = _Down()
LockOutcome = str | _Busy | _Down


class Cache:
    """One cache policy: settings that follow the control plane, and the caching itself."""

    kind = CACHE

    def __init__(
        self,
        client: Client,
        name: str,
        *,
        serializer: str | Serializer = "pickle",
        lock_timeout: float | datetime.timedelta = 5.0,
        **defaults: Any,
    ) -> None:
        self.name = validate_name(name)
        self._client = client
        self.serializer = _serializer(serializer)
        if isinstance(lock_timeout, datetime.timedelta):
            lock_timeout = lock_timeout.total_seconds()
        if isinstance(lock_timeout, bool) or not isinstance(lock_timeout, int | float):
            raise ValueError("lock_timeout: give a number of seconds")
        if not 0 < lock_timeout <= 3600:
            raise ValueError("lock_timeout: give a number of seconds between 0 and 3600")
        self.lock_timeout = float(lock_timeout)
        mapped: dict[str, Any] = {}
        for key, value in defaults.items():
            field = _ALIASES.get(key, key)
            if field in mapped:
                raise ValueError(f"{key}: given twice (as {field})")
            mapped[field] = value
        self.code_defaults = validate_spec(CACHE, mapped)
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
        client.watch(CACHE, self.name, self._policy_changed)
        self._apply(client.policy_spec(CACHE, self.name))
        client.reporter.add_collector(self._collect)
        if not self.managed:
            client.reporter.discovered(CACHE, self.name, dict(self.code_defaults))

    def _init_runtime(self) -> None:
        self._flights: dict[LocalKey, _Flight] = {}
        self._flights_lock = threading.Lock()
        self._async_flights: dict[tuple[int, LocalKey], asyncio.Task[tuple[Any, str]]] = {}
        self._refreshing: set[LocalKey] = set()
        self._refresh_lock = threading.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._redis_down_until = 0.0

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

    # Freshness (wall clock of this host against the writer's times)

    def _is_fresh(self, entry: Entry, now: float) -> bool:
        return now < entry.fresh_until and now < entry.created + self.ttl

    def _is_servable(self, entry: Entry, now: float) -> bool:
        return now < entry.stale_until and now < entry.created + self.ttl + self.stale_ttl

    def _new_entry(self, value: Any) -> Entry:
        now = time.time()
        return Entry(value, now, now + self.ttl, now + self.ttl + self.stale_ttl)

    def _entry_key(self, key: LocalKey) -> str:
        return self._client.keys.cache_entry(self.name, key[0], key[1])

    def _lock_key(self, key: LocalKey) -> str:
        return self._client.keys.cache_lock(self.name, key[0], key[1])

    def _px(self) -> int:
        return max(1, math.ceil((self.ttl + self.stale_ttl) * 1000))

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

    # Redis failures

    def _redis_down(self) -> bool:
        return bool(self._redis_down_until) and time.monotonic() < self._redis_down_until

    def _redis_failed(self, operation: str, exc: BaseException) -> None:
        self._count_error()
        self._redis_errors.inc()
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError | OSError):
            self._redis_down_until = time.monotonic() + REDIS_DOWN_BACKOFF
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
        try:
            return decode_envelope(bytes(raw), self.serializer)
        except EnvelopeError as exc:
            self._count_error()
            self._log("envelope", "Cache %s: ignoring unreadable entry %s: %s", self.name, key, exc)
            return None

    def _envelope(self, entry: Entry) -> bytes | None:
        try:
            return encode_envelope(self.serializer, entry)
        except Exception as exc:
            self._count_error()
            self._log(
                "serialize",
                "Cache %s: cannot serialize a %s with %s (%r); not stored in Redis",
                self.name,
                type(entry.value).__name__,
                self.serializer.name,
                exc,
            )
            return None

    def _token(self) -> str:
        return f"{self._client.instance_id}:{os.urandom(6).hex()}"

    # Sync Redis operations: never raise

    def _get(self, key: LocalKey) -> tuple[Entry | None, bool]:
        """Return (entry or None, whether Redis answered)."""
        if self._redis_down():
            self._count_error()
            return None, False
        entry_key = self._entry_key(key)
        try:
            raw = self._client.redis.get(entry_key)
        except (redis.RedisError, OSError) as exc:
            self._redis_failed("GET", exc)
            return None, False
        return self._decode(entry_key, raw), True

    def _try_lock(self, key: LocalKey) -> LockOutcome:
        if self._redis_down():
            return _DOWN
        token = self._token()
        try:
            taken = self._client.redis.set(
                self._lock_key(key), token, nx=True, px=math.ceil(self.lock_timeout * 1000)
            )
        except (redis.RedisError, OSError) as exc:
            self._redis_failed("SET NX", exc)
            return _DOWN
        return token if taken else _BUSY

    def _run_store(self, key: LocalKey, envelope: bytes, token: str | None) -> None:
        if self._redis_down():
            return
        keys_and_args = (
            self._entry_key(key),
            self._lock_key(key),
            envelope,
            self._px(),
            token or "",
        )
        try:
            try:
                self._client.redis.evalsha(_STORE_SHA, 2, *keys_and_args)
            except NoScriptError:
                self._client.redis.eval(_STORE_LUA, 2, *keys_and_args)
        except (redis.RedisError, OSError) as exc:
            self._redis_failed("store", exc)

    def _store(self, key: LocalKey, value: Any, token: str | None) -> None:
        try:
            entry = self._new_entry(value)
            self._remember(key, entry)
            envelope = self._envelope(entry)
            if envelope is not None or token:
                self._run_store(key, envelope or b"", token)
        except Exception:
            self._internal_error("storing a value failed")

    def _release(self, key: LocalKey, token: str | None) -> None:
        if token:
            self._run_store(key, b"", token)

    def _delete(self, key: LocalKey) -> None:
        self._local.discard(key)
        message = _invalidation_message(key, self._client.instance_id)
        try:  # two commands, not a pipeline: a cluster pipeline cannot PUBLISH
            client = self._client.redis
            client.delete(self._entry_key(key))
            client.publish(self._channel, message)
        except (redis.RedisError, OSError) as exc:
            self._redis_failed("DEL", exc)

    # Sync calls

    def _compute(self, call: _Call) -> Any:
        call.called = True
        try:
            return call.function(*call.args, **call.kwargs)
        except Exception as exc:
            raise _FunctionFailed(exc) from exc

    def _call(
        self,
        function: Callable[..., Any],
        digest_of: Callable[[tuple[Any, ...], dict[str, Any]], str],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        if not self.enabled:
            self._count(BYPASS)
            return function(*args, **kwargs)
        try:
            key: LocalKey = (self.generation, digest_of(args, kwargs))
        except TypeError:  # arguments that do not fit the signature: let the function say so
            return function(*args, **kwargs)
        except Exception:
            self._internal_error("cannot compute the cache key")
            return function(*args, **kwargs)
        entry = self._local_fresh(key)
        if entry is not None:
            self._count(LOCAL_HIT)
            return entry.value
        call = _Call(function, args, kwargs)
        try:
            value, result = self._coalesce(key, call)
        except _FunctionFailed as failed:
            error = failed.error
        except Exception:
            self._internal_error("the cache lookup failed")
            return function(*args, **kwargs)
        else:
            self._count(result)
            return value
        self._count(MISS)
        raise error

    def _coalesce(self, key: LocalKey, call: _Call) -> tuple[Any, str]:
        with self._flights_lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            assert flight.value is not None
            return flight.value
        try:
            flight.value = self._load(key, call)
            return flight.value
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._flights_lock:
                self._flights.pop(key, None)
            flight.done.set()

    def _load(self, key: LocalKey, call: _Call) -> tuple[Any, str]:
        now = time.time()
        local = self._local.get(key) if self.local_size > 0 else None
        if local is not None and self._is_fresh(local, now):
            return local.value, LOCAL_HIT  # stored by the flight that just ended
        found, answered = self._get(key)
        if found is not None:
            if self._is_fresh(found, now):
                self._remember(key, found)
                return found.value, HIT
            if self._is_servable(found, now):
                self._revalidate(key, call, use_lock=True)
                return found.value, STALE_HIT
        if not answered and local is not None and self._is_servable(local, now):
            self._revalidate(key, call, use_lock=False)
            return local.value, STALE_HIT
        token: str | None = None
        if answered:
            outcome = self._try_lock(key)
            deadline = time.monotonic() + self.lock_timeout
            delay = _POLL_FIRST
            while isinstance(outcome, _Busy):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break  # the holder is too slow: compute without the lock
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, _POLL_MAX)
                found, answered = self._get(key)
                if not answered:
                    break
                now = time.time()
                if found is not None and self._is_servable(found, now):
                    if self._is_fresh(found, now):
                        self._remember(key, found)
                        return found.value, HIT
                    return found.value, STALE_HIT
                outcome = self._try_lock(key)  # free again if its holder failed
            token = outcome if isinstance(outcome, str) else None
        try:
            value = self._compute(call)
        except _FunctionFailed:
            self._release(key, token)
            raise
        self._store(key, value, token)
        return value, MISS

    def _revalidate(self, key: LocalKey, call: _Call, *, use_lock: bool) -> None:
        """Recompute a stale entry in the background, if this caller is the elected one."""
        if not self._claim_refresh(key):
            return
        token: str | None = None
        if use_lock:
            outcome = self._try_lock(key)
            if isinstance(outcome, _Busy):
                self._end_refresh(key)
                return  # another process recomputes it
            token = outcome if isinstance(outcome, str) else None
        context = contextvars.copy_context()
        thread = threading.Thread(
            target=context.run,
            args=(self._refresh, key, call, token),
            name=f"controlplane-cache-{self.name}",
            daemon=True,
        )
        try:
            thread.start()
        except RuntimeError:  # cannot start a thread (interpreter shutting down)
            self._release(key, token)
            self._end_refresh(key)

    def _claim_refresh(self, key: LocalKey) -> bool:
        with self._refresh_lock:
            if key in self._refreshing or len(self._refreshing) >= MAX_BACKGROUND_REFRESHES:
                return False
            self._refreshing.add(key)
            return True

    def _end_refresh(self, key: LocalKey) -> None:
        with self._refresh_lock:
            self._refreshing.discard(key)

    def _refresh(self, key: LocalKey, call: _Call, token: str | None) -> None:
        try:
            value = call.function(*call.args, **call.kwargs)
        except Exception as exc:
            self._release(key, token)
            self._log(
                "refresh",
                "Cache %s: background refresh raised %r; the stale value stays",
                self.name,
                exc,
            )
        else:
            self._store(key, value, token)
        finally:
            self._end_refresh(key)

    # Async Redis operations: never raise

    async def _aget(self, key: LocalKey) -> tuple[Entry | None, bool]:
        if self._redis_down():
            self._count_error()
            return None, False
        entry_key = self._entry_key(key)
        try:
            raw = await self._client.async_redis().get(entry_key)
        except (redis.RedisError, OSError) as exc:
            self._redis_failed("GET", exc)
            return None, False
        return self._decode(entry_key, raw), True

    async def _atry_lock(self, key: LocalKey) -> LockOutcome:
        if self._redis_down():
            return _DOWN
        token = self._token()
        try:
            taken = await self._client.async_redis().set(
                self._lock_key(key), token, nx=True, px=math.ceil(self.lock_timeout * 1000)
            )
        except (redis.RedisError, OSError) as exc:
            self._redis_failed("SET NX", exc)
            return _DOWN
        return token if taken else _BUSY

    async def _arun_store(self, key: LocalKey, envelope: bytes, token: str | None) -> None:
        if self._redis_down():
            return
        keys_and_args = (
            self._entry_key(key),
            self._lock_key(key),
            envelope,
            self._px(),
            token or "",
        )
        connection = self._client.async_redis()
        try:
            try:
                await connection.evalsha(_STORE_SHA, 2, *keys_and_args)  # type: ignore[misc]
            except NoScriptError:
                await connection.eval(_STORE_LUA, 2, *keys_and_args)  # type: ignore[misc]
        except (redis.RedisError, OSError) as exc:
            self._redis_failed("store", exc)

    async def _astore(self, key: LocalKey, value: Any, token: str | None) -> None:
        try:
            entry = self._new_entry(value)
            self._remember(key, entry)
            envelope = self._envelope(entry)
            if envelope is not None or token:
                await self._arun_store(key, envelope or b"", token)
        except Exception:
            self._internal_error("storing a value failed")

    async def _arelease(self, key: LocalKey, token: str | None) -> None:
        if token:
            await self._arun_store(key, b"", token)

    async def _adelete(self, key: LocalKey) -> None:
        self._local.discard(key)
        message = _invalidation_message(key, self._client.instance_id)
        try:  # two commands, not a pipeline: a cluster pipeline cannot PUBLISH
            client = self._client.async_redis()
            await client.delete(self._entry_key(key))
            await client.publish(self._channel, message)
        except (redis.RedisError, OSError) as exc:
            self._redis_failed("DEL", exc)

    # Async calls

    async def _acompute(self, call: _Call) -> Any:
        call.called = True
        try:
            return await call.function(*call.args, **call.kwargs)
        except Exception as exc:
            raise _FunctionFailed(exc) from exc

    async def _acall(
        self,
        function: Callable[..., Awaitable[Any]],
        digest_of: Callable[[tuple[Any, ...], dict[str, Any]], str],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        if not self.enabled:
            self._count(BYPASS)
            return await function(*args, **kwargs)
        try:
            key: LocalKey = (self.generation, digest_of(args, kwargs))
        except TypeError:  # arguments that do not fit the signature: let the function say so
            return await function(*args, **kwargs)
        except Exception:
            self._internal_error("cannot compute the cache key")
            return await function(*args, **kwargs)
        entry = self._local_fresh(key)
        if entry is not None:
            self._count(LOCAL_HIT)
            return entry.value
        call = _Call(function, args, kwargs)
        try:
            value, result = await self._acoalesce(key, call)
        except _FunctionFailed as failed:
            error = failed.error
        except asyncio.CancelledError:
            raise  # this caller was cancelled; the shared lookup goes on
        except Exception:
            self._internal_error("the cache lookup failed")
            return await function(*args, **kwargs)
        else:
            self._count(result)
            return value
        self._count(MISS)
        raise error

    async def _acoalesce(self, key: LocalKey, call: _Call) -> tuple[Any, str]:
        # One task per entry and event loop does the lookup; every caller awaits it
        # shielded, so a cancelled caller never cancels the others' computation.
        loop = asyncio.get_running_loop()
        flight_key = (id(loop), key)
        task = self._async_flights.get(flight_key)
        if task is None or task.get_loop() is not loop:
            task = loop.create_task(self._aload(key, call))
            self._async_flights[flight_key] = task

            def landed(done: asyncio.Task[tuple[Any, str]]) -> None:
                if self._async_flights.get(flight_key) is done:
                    del self._async_flights[flight_key]
                if not done.cancelled():
                    done.exception()  # retrieved: no "never retrieved" warning

            task.add_done_callback(landed)
        return await asyncio.shield(task)

    async def _aload(self, key: LocalKey, call: _Call) -> tuple[Any, str]:
        now = time.time()
        local = self._local.get(key) if self.local_size > 0 else None
        if local is not None and self._is_fresh(local, now):
            return local.value, LOCAL_HIT
        found, answered = await self._aget(key)
        if found is not None:
            if self._is_fresh(found, now):
                self._remember(key, found)
                return found.value, HIT
            if self._is_servable(found, now):
                await self._arevalidate(key, call, use_lock=True)
                return found.value, STALE_HIT
        if not answered and local is not None and self._is_servable(local, now):
            await self._arevalidate(key, call, use_lock=False)
            return local.value, STALE_HIT
        token: str | None = None
        if answered:
            outcome = await self._atry_lock(key)
            deadline = time.monotonic() + self.lock_timeout
            delay = _POLL_FIRST
            while isinstance(outcome, _Busy):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                await asyncio.sleep(min(delay, remaining))
                delay = min(delay * 2, _POLL_MAX)
                found, answered = await self._aget(key)
                if not answered:
                    break
                now = time.time()
                if found is not None and self._is_servable(found, now):
                    if self._is_fresh(found, now):
                        self._remember(key, found)
                        return found.value, HIT
                    return found.value, STALE_HIT
                outcome = await self._atry_lock(key)
            token = outcome if isinstance(outcome, str) else None
        try:
            value = await self._acompute(call)
        except _FunctionFailed:
            await self._arelease(key, token)
            raise
        await self._astore(key, value, token)
        return value, MISS

    async def _arevalidate(self, key: LocalKey, call: _Call, *, use_lock: bool) -> None:
        if not self._claim_refresh(key):
            return
        token: str | None = None
        if use_lock:
            outcome = await self._atry_lock(key)
            if isinstance(outcome, _Busy):
                self._end_refresh(key)
                return
            token = outcome if isinstance(outcome, str) else None
        task = asyncio.get_running_loop().create_task(self._arefresh(key, call, token))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _arefresh(self, key: LocalKey, call: _Call, token: str | None) -> None:
        try:
            value = await call.function(*call.args, **call.kwargs)
        except Exception as exc:
            await self._arelease(key, token)
            self._log(
                "refresh",
                "Cache %s: background refresh raised %r; the stale value stays",
                self.name,
                exc,
            )
        else:
            await self._astore(key, value, token)
        finally:
            self._end_refresh(key)

    # Invalidation messages

    def _on_invalidation(self, data: bytes) -> None:
        try:
            message = json.loads(data)
            if not isinstance(message, dict) or message.get("schema") != 1:
                raise ValueError("not a schema 1 object")
            generation, digest = message["generation"], message["digest"]
            if not isinstance(generation, int) or not isinstance(digest, str):
                raise ValueError("generation or digest of the wrong type")
        except (ValueError, KeyError) as exc:
            self._log("message", "Cache %s: ignoring invalidation %r: %s", self.name, data, exc)
            return
        self._local.discard((generation, digest))

    # Public API

    def decorate(self, key: Callable[..., Any] | None = None) -> Callable[[F], F]:
        """Return a decorator caching a sync or async function's results in this cache.

        The entry of a call is the digest of the function's qualified name and its
        arguments bound by name (defaults applied), or of ``key(*args, **kwargs)``
        when given. The decorated function gets ``invalidate(*args, **kwargs)`` (and
        ``ainvalidate`` for async code) to drop one entry everywhere.
        """

        def decorator(function: F) -> F:
            namespace = _qualified_name(function)
            try:
                signature: inspect.Signature | None = inspect.signature(function)
            except (TypeError, ValueError):
                signature = None

            def digest_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
                if key is not None:
                    return make_digest(namespace, key(*args, **kwargs))
                return make_digest(namespace, _call_key(signature, args, kwargs))

            def invalidate(*args: Any, **kwargs: Any) -> None:
                """Drop the entry of this call, in Redis and in every in-process tier."""
                self._delete((self.generation, digest_of(args, kwargs)))

            async def ainvalidate(*args: Any, **kwargs: Any) -> None:
                """``invalidate`` through the event loop's Redis connection."""
                await self._adelete((self.generation, digest_of(args, kwargs)))

            wrapper: Any
            if inspect.iscoroutinefunction(function):

                @functools.wraps(function)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    return await self._acall(function, digest_of, args, kwargs)

                wrapper = async_wrapper
            else:

                @functools.wraps(function)
                def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                    return self._call(function, digest_of, args, kwargs)

                wrapper = sync_wrapper
            wrapper.invalidate = invalidate
            wrapper.ainvalidate = ainvalidate
            wrapper.cache = self
            return cast(F, wrapper)

        return decorator

    def __call__(self, function: F) -> F:
        """``@client.cache("prices")`` used directly as a decorator."""
        return self.decorate()(function)

    def _key(self, key: Any) -> LocalKey:
        return (self.generation, make_digest("", key))

    def get(self, key: Any, default: Any = None) -> Any:
        """Return the fresh value stored under ``key`` (any hashable-by-content value)."""
        if not self.enabled:
            return default
        local_key = self._key(key)
        local = self._local_fresh(local_key)
        if local is not None:
            self._count(LOCAL_HIT)
            return local.value
        found, _ = self._get(local_key)
        if found is not None and self._is_fresh(found, time.time()):
            self._remember(local_key, found)
            self._count(HIT)
            return found.value
        self._count(MISS)
        return default

    def set(self, key: Any, value: Any) -> None:
        """Store ``value`` under ``key`` for the cache's ttl (plus its stale window)."""
        if self.enabled:
            self._store(self._key(key), value, None)

    def delete(self, key: Any) -> None:
        """Drop ``key`` in Redis and in every process's in-process tier."""
        self._delete(self._key(key))

    async def aget(self, key: Any, default: Any = None) -> Any:
        """``get`` through the event loop's Redis connection."""
        if not self.enabled:
            return default
        local_key = self._key(key)
        local = self._local_fresh(local_key)
        if local is not None:
            self._count(LOCAL_HIT)
            return local.value
        found, _ = await self._aget(local_key)
        if found is not None and self._is_fresh(found, time.time()):
            self._remember(local_key, found)
            self._count(HIT)
            return found.value
        self._count(MISS)
        return default

    async def aset(self, key: Any, value: Any) -> None:
        """``set`` through the event loop's Redis connection."""
        if self.enabled:
            await self._astore(self._key(key), value, None)

    async def adelete(self, key: Any) -> None:
        """``delete`` through the event loop's Redis connection."""
        await self._adelete(self._key(key))


def _invalidation_message(key: LocalKey, instance: str) -> str:
    return json.dumps(
        {"digest": key[1], "generation": key[0], "instance": instance, "schema": 1},
        separators=(",", ":"),
        sort_keys=True,
    )
