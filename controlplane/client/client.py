"""The client: one per process and environment, shared by every breaker, limiter and cache."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypedDict, TypeVar, Unpack

import redis
import redis.asyncio.retry
from redis.asyncio import Redis as AsyncRedis
from redis.backoff import NoBackoff
from redis.retry import Retry

from controlplane.client.breaker import CircuitBreaker
from controlplane.client.cache import Cache
from controlplane.client.client_settings import (
    ENVIRONMENT_VARIABLE,
    REDIS_URL_VARIABLE,
    required,
    service_name,
)
from controlplane.client.config import ConfigView
from controlplane.client.error_log import ErrorLog
from controlplane.client.health import RedisHealth, shown_url
from controlplane.client.limiter import RateLimiter
from controlplane.client.metrics import ClientMetrics
from controlplane.client.reporting import Reporter
from controlplane.client.snapshot import Listener, PolicyState, Snapshot
from controlplane.protocol.connection import (
    check_primary,
    connect,
    connect_async,
    forget_primary,
    take_over_after_fork,
)
from controlplane.protocol.keys import DEFAULT_PREFIX, KeyLayout
from controlplane.protocol.store import decode_policy_store, read_policy_store

if TYPE_CHECKING:
    from controlplane.client.cache import CachedFunction, Serializer

# The keyword arguments of ``Client.breaker``, ``limiter`` and ``cache`` (their code
# defaults, docs/client.md), typed so an editor completes them and mypy catches a
# misspelt one; the values are still validated against the policy schema at run time.
Duration = float | timedelta | str  # seconds, a timedelta, or text such as "1h30m"
Exceptions = type[BaseException] | str | Iterable[type[BaseException] | str]
Mode = Literal["enforce", "observe"]


class BreakerOptions(TypedDict, total=False):
    failure_rate_threshold: float
    slow_call_duration: Duration
    slow_call_rate_threshold: float
    window_type: Literal["count", "time"]
    window_size: int
    minimum_calls: int
    open_for: Duration
    half_open_calls: int
    record_exceptions: Exceptions
    ignore_exceptions: Exceptions
    mode: Mode
    # Deprecated spellings (a DeprecationWarning at run time), kept so old code type-checks.
    failure_rate: float  # deprecated: failure_rate_threshold
    slow_call_rate: float  # deprecated: slow_call_rate_threshold
    window: Literal["count", "time"]  # deprecated: window_type
    record: Exceptions  # deprecated: record_exceptions
    ignore: Exceptions  # deprecated: ignore_exceptions


class RateLimitedOptions(TypedDict, total=False):
    """``LimiterOptions`` but ``key``, which ``rate_limited`` takes as its key function."""

    algorithm: Literal["token_bucket", "gcra", "fixed_window", "sliding_window"]
    limit: int
    period: Duration
    burst: int | None
    custom_key: str
    on_redis_error: Literal["allow", "deny", "local"]
    mode: Mode


class LimiterOptions(RateLimitedOptions, total=False):
    key: Literal["global", "user", "ip", "endpoint", "custom"]


class CacheOptions(TypedDict, total=False):
    ttl: Duration
    enabled: bool
    stale_ttl: Duration
    local_size: int
    generation: int
    # "json" (the default), your own, or "pickle": whoever can write to Redis then
    # runs code in every service that reads the cache (docs/client.md, Caches).
    serializer: Literal["json", "pickle"] | Serializer
    lock_timeout: float | timedelta
    stale: Duration  # deprecated spelling of stale_ttl (a DeprecationWarning at run time)


logger = logging.getLogger("controlplane.client")

LIBRARY_VERSION = "0.1.0"
# Resyncs while Redis is behind the revisions this client knows (docs/protocol.md, 6.3).
CATCH_UP_FIRST = 1.0
CATCH_UP_MAX = 8.0
# With a Sentinel URL: how often the follower asks the sentinels where the primary is.
PRIMARY_CHECK_INTERVAL = 1.0
_clients: weakref.WeakSet[Client] = weakref.WeakSet()
_P = ParamSpec("_P")
_R = TypeVar("_R")


class Client:
    """Follows an environment's policies through Redis and hands out enforcers.

    ``redis_url`` and ``environment`` have no defaults: give them, or set
    ``CONTROLPLANE_REDIS_URL`` and ``CONTROLPLANE_ENVIRONMENT``. ``service`` is
    ``CONTROLPLANE_SERVICE`` when not given, else the program's name.

    ``start()`` loads the policies and follows their changes in a background
    thread; nothing on the caller's hot path waits for the control plane. If
    Redis is down, everything works on the last known policies (from
    ``snapshot_path`` if given) or the code defaults, and catches up later.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        environment: str | None = None,
        service: str | None = None,
        *,
        key_prefix: str = DEFAULT_PREFIX,
        timeout: float = 0.25,
        resync_interval: float = 30.0,
        heartbeat_interval: float = 5.0,
        report_interval: float = 1.0,
        snapshot_path: str | os.PathLike[str] | None = None,
        start_timeout: float = 1.0,
        metrics: ClientMetrics | None = None,
    ) -> None:
        environment = required(environment, "environment", ENVIRONMENT_VARIABLE)
        self.keys = KeyLayout(environment, key_prefix)
        self.environment = environment
        self.service = service_name(service)
        self.redis_url = required(redis_url, "redis_url", REDIS_URL_VARIABLE)
        self.timeout = timeout
        self.resync_interval = resync_interval
        self.start_timeout = start_timeout
        self.snapshot_path = Path(snapshot_path) if snapshot_path is not None else None
        self.metrics = metrics or ClientMetrics.shared()
        self._errors = ErrorLog(logger, self.metrics.internal_errors.labels("client"))
        self.health = RedisHealth(self)
        self.state = PolicyState(on_malformed=self._count_malformed)
        self.instance_id = self._new_instance_id()
        self.reporter = Reporter(self, heartbeat_interval, report_interval)
        self._redis = self._connect()
        self._async_redis: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncRedis] = (
            weakref.WeakKeyDictionary()
        )
        self._listeners: dict[str, list[Listener]] = {}
        self._channel_handlers: dict[str, Callable[[bytes], None]] = {}
        self._resync_hooks: list[Callable[[], None]] = []
        self._catch_up_delay = CATCH_UP_FIRST
        self._components: dict[tuple[str, str], Any] = {}
        self._components_lock = threading.Lock()
        self._follower: threading.Thread | None = None
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._first_attempt = threading.Event()  # the follower's first try ended, either way
        self._follow_wake = threading.Event()  # Redis is back, or the client closes
        self._resync_requested = threading.Event()
        self._pubsub: Any = None
        self._connecting = False  # the follower has not yet subscribed on this attempt
        self.published: bool | None = None  # whether Redis has the environment's meta key
        self._unmanaged_announced: set[tuple[str, str]] = set()
        self.health.on_up(self._redis_back)
        self._started = False
        self._closed = False
        self.connected = False
        self._config: ConfigView | None = None
        _clients.add(self)

    # Lifecycle

    def start(self, *, wait: bool = True) -> Client:
        """Load the policies and follow their changes; safe to call twice.

        Waits at most ``start_timeout`` for the first snapshot (not at all with
        ``wait=False``, nor after a first attempt that found Redis unusable),
        then goes on with what it has: a Redis outage never stops the service
        from starting. A Redis that cannot be used (down, a
        wrong port, TLS or password refused, a URL option redis-py does not
        take) or an environment never published is logged once, loudly, with
        what to fix (docs/client.md, "When Redis is slow, down or misconfigured").
        """
        if self._started:
            return self
        self._started = True
        self._closed = False
        if self.snapshot_path is not None:
            self._load_snapshot_file()
        self._stop.clear()
        self.health.reopen()
        self._follower = threading.Thread(
            target=self._follow, name=f"controlplane-follow-{self.environment}", daemon=True
        )
        self._follower.start()
        self.reporter.start()
        if wait:
            self._first_attempt.wait(self.start_timeout)
        return self

    async def astart(self) -> Client:
        """``start()`` for an event loop: the wait runs in a thread, never on the loop."""
        await asyncio.to_thread(self.start)
        return self

    def close(self) -> None:
        """Flush the last reports and stop the background work; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._started = False
        self._stop.set()
        self._follow_wake.set()
        self.health.close()
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                self._pubsub.close()
        if self._follower is not None and self._follower is not threading.current_thread():
            self._follower.join(timeout=2)
        self.reporter.stop()
        with contextlib.suppress(Exception):
            self._redis.close()

    def __enter__(self) -> Client:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _after_fork_in_child(self) -> None:
        # Threads do not survive fork: become a new instance and follow again.
        was_started = self._started and not self._closed
        self.instance_id = self._new_instance_id()
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._first_attempt = threading.Event()
        self._follow_wake = threading.Event()
        self._resync_requested = threading.Event()
        self._components_lock = threading.Lock()
        # The parent's client goes (its pub/sub connection with it): first free its
        # locks, which a thread of the parent may have held at fork().
        take_over_after_fork(self._redis)
        self._pubsub = None
        self._follower = None
        self._redis = self._connect()
        self._async_redis = weakref.WeakKeyDictionary()
        self.health.after_fork()
        self.reporter.after_fork()
        for component in list(self._components.values()):
            after_fork = getattr(component, "_after_fork", None)
            if after_fork is not None:
                after_fork()
        self._started = False
        if was_started:
            # Never wait here: this runs inside os.fork(), and Redis may be down.
            self.start(wait=False)

    @staticmethod
    def _new_instance_id() -> str:
        return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    # Redis connections

    def _connect(self) -> redis.Redis:
        return connect(
            self.redis_url,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=10,
        )

    @property
    def redis(self) -> redis.Redis:
        """The synchronous connection pool (bytes replies, short timeouts, no retries)."""
        return self._redis

    def async_redis(self) -> AsyncRedis:
        """The asyncio connection pool of the running event loop."""
        loop = asyncio.get_running_loop()
        client = self._async_redis.get(loop)
        if client is None:
            client = connect_async(
                self.redis_url,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
            )
            self._async_redis[loop] = client
        return client

    # Policies

    def policy_spec(self, kind: str, name: str) -> dict[str, Any] | None:
        """Return the published spec of a policy, or None when the control plane has none."""
        return self.state.spec(kind, name)

    def watch(self, kind: str, name: str, listener: Listener) -> None:
        """Call ``listener(kind, name)`` on the follower thread when the policy changes."""
        self._listeners.setdefault(f"{kind}:{name}", []).append(listener)

    def on_channel(self, channel: str, handler: Callable[[bytes], None]) -> None:
        """Also subscribe to ``channel`` and pass its messages to ``handler``."""
        self._channel_handlers[channel] = handler
        self._resync_requested.set()  # resubscribe with the new channel

    def on_resync(self, hook: Callable[[], None]) -> None:
        """Call ``hook()`` after every snapshot read (start, reconnection, timer)."""
        self._resync_hooks.append(hook)

    def component(self, kind: str, name: str, factory: Callable[[], Any]) -> Any:
        """Return the enforcer of ``kind:name``, creating it once."""
        key = (kind, name)
        existing = self._components.get(key)
        if existing is not None:
            return existing
        with self._components_lock:
            created = key not in self._components
            if created:
                self._components[key] = factory()
            component = self._components[key]
        if created and self.published:
            self._announce_unmanaged([key])
        return component

    def breaker(self, name: str, **defaults: Unpack[BreakerOptions]) -> CircuitBreaker:
        breaker: CircuitBreaker = self.component(
            "breaker", name, lambda: CircuitBreaker(self, name, **defaults)
        )
        return breaker

    def limiter(self, name: str, **defaults: Unpack[LimiterOptions]) -> RateLimiter:
        limiter: RateLimiter = self.component(
            "rate_limit", name, lambda: RateLimiter(self, name, **defaults)
        )
        return limiter

    def cache(self, name: str, **defaults: Unpack[CacheOptions]) -> Cache:
        cache: Cache = self.component("cache", name, lambda: Cache(self, name, **defaults))
        return cache

    def rate_limited(
        self,
        name: str,
        key: Callable[..., object] | None = None,
        **defaults: Unpack[RateLimitedOptions],
    ) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
        """Decorate a function so each call is checked against the limiter ``name``."""
        return self.limiter(name, **defaults).decorate(key)

    def cached(
        self,
        name: str,
        key: Callable[..., object] | None = None,
        **defaults: Unpack[CacheOptions],
    ) -> Callable[[Callable[_P, _R]], CachedFunction[_P, _R]]:
        """Decorate a function so its results are cached under the cache policy ``name``.

        The decorated function has ``invalidate(*args, **kwargs)`` (and ``ainvalidate``).
        """
        return self.cache(name, **defaults).decorate(key)

    @property
    def config(self) -> ConfigView:
        if self._config is None:
            self._config = ConfigView(self)
        return self._config

    # Following changes (background thread)

    def read_snapshot(self) -> Snapshot:
        """Read the policy store; a malformed value is reported in it, never raised."""
        return read_policy_store(self._redis, self.keys)

    def resync(self) -> None:
        """Re-read the whole snapshot now (normally done by the follower thread)."""
        snapshot = self.read_snapshot()
        self._notify(self.state.install_snapshot(snapshot))
        self._check_published(snapshot.meta is not None)
        self.metrics.resyncs.labels(self.environment).inc()
        for hook in list(self._resync_hooks):
            try:
                hook()
            except Exception:
                self._errors.exception("Resync hook %r failed", hook)
        self._synced.set()
        self._save_snapshot_file()

    def _notify(self, fields: set[str]) -> None:
        for field in fields:
            kind, _, name = field.partition(":")
            for listener in self._listeners.get(field, ()):
                try:
                    listener(kind, name)
                except Exception:
                    self._errors.exception("Policy listener for %s failed", field)
        if fields:
            self.metrics.applied_revision.labels(self.environment).set(self.state.revision)

    def _follow(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            self._connecting = True
            try:
                self._follow_once()
                backoff = 0.05
            except Exception as exc:
                if self._stop.is_set():  # closing: the pubsub was closed under our feet
                    return
                self.connected = False
                if self._connecting or isinstance(exc, redis.RedisError | OSError):
                    # Redis cannot be used (down, slow, TLS, password, a URL redis-py
                    # refuses): the health state logs it once and probes for us.
                    self.metrics.redis_errors.labels("follow").inc()
                    self.health.failed(exc, "follow")
                else:
                    self._errors.exception("Policy follower failed; restarting it")
                self._first_attempt.set()
                self._wait_for_redis(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                if self._pubsub is not None:
                    with contextlib.suppress(Exception):
                        self._pubsub.close()
                    self._pubsub = None

    def _wait_for_redis(self, backoff: float) -> None:
        """After a failure: the backoff, then as long as the health state says Redis is down."""
        self._follow_wake.wait(backoff)
        while self.health.down and not self._stop.is_set():
            self._follow_wake.clear()
            if self.health.down:  # the probe sets the event when Redis answers
                self._follow_wake.wait(self.resync_interval)

    def _redis_back(self) -> None:
        self._follow_wake.set()
        self.reporter.wake()

    def _follow_once(self) -> None:
        pubsub = self._pubsub = self._redis.pubsub(ignore_subscribe_messages=False)  # type: ignore[no-untyped-call]
        channels = [self.keys.changes, *self._channel_handlers]
        pubsub.subscribe(*channels)
        confirmed = 0
        deadline = time.monotonic() + 5
        while confirmed < len(channels):  # subscribe before reading: nothing is missed
            message = pubsub.get_message(timeout=self.timeout)
            if message is not None and message["type"] == "subscribe":
                confirmed += 1
            elif message is None and time.monotonic() > deadline:
                raise redis.TimeoutError("no subscription confirmation")
        self._connecting = False
        self._resync_requested.clear()
        self.resync()
        self.health.recovered()
        self._first_attempt.set()
        if not self.connected:
            logger.info("Following %s policies through Redis", self.environment)
        self.connected = True
        next_resync = self._next_resync()
        next_primary_check = time.monotonic() + PRIMARY_CHECK_INTERVAL
        subscribed = set(channels)
        while not self._stop.is_set():
            if time.monotonic() >= next_primary_check:
                next_primary_check = time.monotonic() + PRIMARY_CHECK_INTERVAL
                if check_primary(self._redis):
                    # A Sentinel failover: subscribe on the new primary and read the
                    # snapshot there (the old one may have had writes it never got).
                    logger.info("The Redis primary moved (Sentinel failover); following it")
                    with contextlib.suppress(RuntimeError):  # another loop added one
                        for async_client in list(self._async_redis.values()):
                            forget_primary(async_client)
                    return
            if self._resync_requested.is_set():
                missing = set(self._channel_handlers) - subscribed
                if missing:
                    pubsub.subscribe(*missing)
                    subscribed |= missing
                self._resync_requested.clear()
                self.resync()
                next_resync = self._next_resync()
            message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message is not None and message["type"] == "message":
                self._dispatch(message["channel"], message["data"])
            if time.monotonic() >= next_resync:
                self.resync()
                next_resync = self._next_resync()

    def _next_resync(self) -> float:
        """When to resync next: on the backstop timer, or soon while Redis is behind.

        A snapshot that was not authoritative (docs/protocol.md, 6.3) is read again
        after 1 s, then 2, 4 and 8 s, until Redis has caught up.
        """
        if not self.state.behind:
            self._catch_up_delay = CATCH_UP_FIRST
            return time.monotonic() + self.resync_interval
        delay = self._catch_up_delay
        self._catch_up_delay = min(delay * 2, CATCH_UP_MAX)
        return time.monotonic() + min(delay, self.resync_interval)

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        name = channel.decode()
        if name == self.keys.changes:
            changed, gap = self.state.apply_change(data)
            self._notify(changed)
            if gap:
                self._resync_requested.set()
            elif changed:
                self._save_snapshot_file()
            return
        handler = self._channel_handlers.get(name)
        if handler is not None:
            try:
                handler(data)
            except Exception:
                logger.exception("Handler of channel %s failed", name)

    def request_resync(self) -> None:
        self._resync_requested.set()

    def wait_synced(self, timeout: float) -> bool:
        """Wait until a snapshot was read from Redis; return whether one was."""
        return self._synced.wait(timeout)

    # The local snapshot file: policies survive a start while Redis is down.

    def _save_snapshot_file(self) -> None:
        if self.snapshot_path is None:
            return
        try:
            temporary = self.snapshot_path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps(self.state.to_dict()))
            os.replace(temporary, self.snapshot_path)
        except OSError as exc:
            logger.warning("Cannot write the policy snapshot %s: %s", self.snapshot_path, exc)

    def _load_snapshot_file(self) -> None:
        assert self.snapshot_path is not None
        try:
            saved = json.loads(self.snapshot_path.read_text())
            policies, overrides = saved["policies"], saved["overrides"]
            if not isinstance(policies, dict) or not isinstance(overrides, dict):
                raise TypeError("policies and overrides must be objects")
            snapshot = decode_policy_store(policies, overrides, None)
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
            logger.warning(
                "Ignoring the unreadable policy snapshot %s: %s", self.snapshot_path, exc
            )
            return
        self._notify(self.state.install_snapshot(snapshot))
        revision = saved.get("revision")
        if isinstance(revision, int):
            self.state.revision = revision

    # Start-up diagnostics: said once, loudly, with what to fix.

    def _check_published(self, published: bool) -> None:
        """After a snapshot read: say so when Redis has never had this environment."""
        was, self.published = self.published, published
        if published:
            self._announce_unmanaged(list(self._components))
            return
        if was is False:
            return  # said already
        self.metrics.problems.labels("unpublished_environment").inc()
        others = [name for name in self.published_environments() if name != self.environment]
        listed = ", ".join(others) if others else "none"
        self.health.log(
            logging.ERROR,
            f"Environment {self.environment!r} has never been published to "
            f"{shown_url(self.redis_url)} (key prefix {self.keys.prefix!r}); published "
            f"environments: {listed}. Running on code defaults.".replace("%", "%%"),
        )

    def published_environments(self, most: int = 20, within: float = 1.0) -> list[str]:
        """The environments with a meta key under this key prefix, sorted.

        A bounded SCAN (at most ``most`` names, ``within`` seconds) for a hint in a log
        line or a system check: ``[]`` when Redis cannot answer, never an exception.
        """
        head = "{" + self.keys.prefix + ":"
        found: set[str] = set()
        deadline = time.monotonic() + within
        try:
            for key in self._redis.scan_iter(match=head + "*}:meta", count=1000):
                text = key.decode(errors="replace") if isinstance(key, bytes) else str(key)
                found.add(text[len(head) : -len("}:meta")])
                if len(found) >= most or time.monotonic() > deadline:
                    break
        except Exception as exc:  # a listing for a hint never fails its caller
            logger.debug("Cannot list the published environments (%s)", exc)
        return sorted(found)

    def _announce_unmanaged(self, keys: list[tuple[str, str]]) -> None:
        """One line per enforcer named in code that the control plane does not manage."""
        for kind, name in keys:
            if self.policy_spec(kind, name) is not None:
                self._unmanaged_announced.discard((kind, name))
                continue
            if (kind, name) in self._unmanaged_announced:
                continue
            self._unmanaged_announced.add((kind, name))
            self.metrics.problems.labels("unmanaged_policy").inc()
            component = self._components.get((kind, name))
            what = _KIND_NAMES.get(kind, kind)
            self.health.log(
                logging.WARNING,
                f"{what} {name!r} is not managed by the control plane in "
                f"{self.environment!r}: enforcing the code defaults "
                f"{_defaults_summary(kind, component)}".replace("%", "%%"),
            )

    def _count_malformed(self, what: str) -> None:
        self.metrics.malformed.labels(self.environment).inc()


_KIND_NAMES = {"breaker": "Breaker", "rate_limit": "Rate limit", "cache": "Cache"}


def _defaults_summary(kind: str, component: Any) -> str:
    """The code defaults of an enforcer in a few words, for a log line."""
    spec: Any = getattr(component, "code_defaults", None)
    if spec is None:
        spec = getattr(getattr(component, "_code_settings", None), "spec", None)
    if not isinstance(spec, dict):
        return "given in code"
    try:
        if kind == "rate_limit":
            keyed = spec["custom_key"] if spec["key"] == "custom" else spec["key"]
            return f"{spec['algorithm']} {spec['limit']}/{spec['period']:g} s keyed by {keyed}"
        if kind == "breaker":
            return (
                f"failure_rate_threshold {spec['failure_rate_threshold']:g}% over a "
                f"{spec['window_type']} window of {spec['window_size']}, "
                f"open_for {spec['open_for']:g} s"
            )
        if kind == "cache":
            return f"ttl {spec['ttl']:g} s"
    except (KeyError, TypeError, ValueError):
        pass
    return ", ".join(f"{field} {value}" for field, value in sorted(spec.items()))


def _after_fork_in_child() -> None:
    for client in list(_clients):
        try:
            client._after_fork_in_child()
        except Exception:
            logger.exception("Could not restart the control-plane client after fork")


def _close_all() -> None:
    for client in list(_clients):
        with contextlib.suppress(Exception):
            client.close()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all)
