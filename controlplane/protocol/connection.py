"""Open Redis connections from a URL: one server, a Sentinel-managed primary or a cluster.

One server: ``redis://``, ``rediss://`` (TLS) or ``unix://``, as redis-py reads them.

A primary that Redis Sentinel watches (and replaces with a replica when it
fails): ``redis+sentinel://[[user]:password@]host1:26379,host2:26379/<service>[/<db>]``
(``rediss+sentinel://`` for TLS to the data nodes), read by
:func:`parse_sentinel_url`. The client asks the sentinels for the primary's
address whenever it opens a connection, and drops its connections when the
primary changes (a ``READONLY`` reply from a demoted primary, or the connections
Sentinel closes on failover). Like redis-py's own client it connects on first
use: a process starts while no sentinel answers.

A URL names a Redis Cluster with the query parameter ``cluster=true``, for example
``rediss://:secret@redis-0.internal:6379/0?cluster=true``: the host is one node
to start from, the client discovers the others. Every other part of the URL is
redis-py's (password, TLS with ``rediss://`` and its ``ssl_*`` parameters).

Both the control plane and the client library connect through here, so they read
the same URLs. Two differences of redis-py's cluster client are evened out:

* it connects to the cluster when it is created, and raises if no node answers.
  Here it is created on first use instead, so a process starts while the cluster
  is down and connects once it is back, as it would with one server;
* where no node can be reached it raises ``RedisClusterException``, which is not
  a ``RedisError``. Here that becomes ``redis.ConnectionError``, so the callers'
  ``except redis.RedisError`` covers a cluster outage as it covers a server's.

Reading an environment's policy store is :mod:`controlplane.protocol.store`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, cast
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.connection
import redis.asyncio.sentinel
import redis.connection
import redis.sentinel
from redis.asyncio.cluster import ClusterPipeline as AsyncClusterPipeline
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import RedisClusterException

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def split_cluster_url(url: str) -> tuple[str, bool]:
    """Return ``url`` without its ``cluster`` parameter, and whether it names a cluster."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    values = [value.lower() for name, value in query if name == "cluster"]
    if not values:
        return url, False
    if values[-1] not in _TRUE | _FALSE:
        raise ValueError(f"cluster={values[-1]!r} in the Redis URL: use true or false")
    rest = urlencode([(name, value) for name, value in query if name != "cluster"])
    return urlunsplit(parts._replace(query=rest)), values[-1] in _TRUE


def is_cluster(client: object) -> bool:
    """Whether ``client`` (from :func:`connect` or :func:`connect_async`) talks to a cluster."""
    return isinstance(client, _LazyCluster | AsyncRedisCluster)


def _unreachable(exc: RedisClusterException) -> redis.ConnectionError:
    return redis.ConnectionError(f"Redis Cluster unreachable: {exc}")


class ClusterClient(RedisCluster):
    """redis-py's cluster client raising ``ConnectionError`` where no node answers."""

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]
        except RedisClusterException as exc:
            raise _unreachable(exc) from exc

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        pipe: ClusterPipeline = super().pipeline(transaction, shard_hint)  # type: ignore[no-untyped-call]
        pipe.__class__ = _Pipeline  # the same object, with execute() translating errors
        return pipe


class _Pipeline(ClusterPipeline):
    def execute(self, raise_on_error: bool = True) -> list[Any]:
        try:
            return super().execute(raise_on_error)
        except RedisClusterException as exc:
            raise _unreachable(exc) from exc


class _LazyCluster:
    """A :class:`ClusterClient` created on first use (see the module's documentation)."""

    def __init__(self, url: str, options: dict[str, Any]) -> None:
        self._url = url
        self._options = options
        self._client: ClusterClient | None = None
        self._lock = threading.Lock()

    def cluster_client(self) -> ClusterClient:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    try:
                        self._client = cast(
                            ClusterClient, ClusterClient.from_url(self._url, **self._options)
                        )
                    except RedisClusterException as exc:
                        raise _unreachable(exc) from exc
                client = self._client
        return client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cluster_client(), name)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


_NEW_LOCK = {type(threading.Lock()): threading.Lock, type(threading.RLock()): threading.RLock}


def take_over_after_fork(client: redis.Redis) -> None:
    """In a forked child: give the locks of ``client``'s pools back to this process.

    redis-py resets a connection pool inherited through ``fork()`` under the pool's
    own locks (on its first use in the child, or when the client is closed or
    collected). A lock that another thread of the parent held at ``fork()`` stays
    held in the child forever, and that reset would wait for it: the child hangs.
    Call this in an at-fork hook, before the child drops or uses the parent's client.
    """
    owners: list[Any] = [client]
    if isinstance(client, _LazyCluster):
        cluster = client._client
        if cluster is not None:
            nodes = getattr(cluster, "nodes_manager", None)
            owners += [cluster, nodes]
            for node in list(getattr(nodes, "nodes_cache", {}).values()):
                owners.append(getattr(node.redis_connection, "connection_pool", None))
    else:
        pool = getattr(client, "connection_pool", None)
        owners.append(pool)
        # A Sentinel-managed client: its pool's sentinel clients have pools too.
        for sentinel in getattr(getattr(pool, "sentinel_manager", None), "sentinels", ()):
            owners += [sentinel, sentinel.connection_pool]
    for owner in owners:
        for name, value in list(getattr(owner, "__dict__", {}).items()):
            new_lock = _NEW_LOCK.get(type(value))
            if new_lock is not None:
                setattr(owner, name, new_lock())


class AsyncClusterClient(AsyncRedisCluster):
    """redis-py's asyncio cluster client (connects on first use) raising ``ConnectionError``."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except RedisClusterException as exc:
            raise _unreachable(exc) from exc

    def pipeline(self, transaction: bool | None = None, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        pipe.__class__ = _AsyncPipeline  # type: ignore[type-abstract]
        return pipe


class _AsyncPipeline(AsyncClusterPipeline):
    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        try:
            return await super().execute(raise_on_error, allow_redirections)
        except RedisClusterException as exc:
            raise _unreachable(exc) from exc


# Redis Sentinel

SENTINEL_SCHEMES: Final = {"redis+sentinel": False, "rediss+sentinel": True}  # scheme: TLS
SENTINEL_PORT: Final = 26379
# Query options that are the sentinels', not the data nodes'.
_SENTINEL_OPTIONS: Final = ("sentinel_username", "sentinel_password")
# Connection options given to the sentinels too (the password is theirs: sentinel_password).
_SHARED_WITH_SENTINELS: Final = (
    "socket_timeout",
    "socket_connect_timeout",
    "socket_keepalive",
    "retry",
)


@dataclass(frozen=True)
class SentinelUrl:
    """A ``redis+sentinel://`` URL, read (see :func:`parse_sentinel_url`)."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    # The other query options, as redis-py reads them in a redis:// URL.
    options: tuple[tuple[str, str], ...] = ()

    def connection_options(self, parse: Callable[[str], Any]) -> dict[str, Any]:
        """The data nodes' connection options: auth, db, TLS and the query's options.

        ``parse`` is redis-py's ``parse_url`` (synchronous or asyncio), which
        reads and checks the options as it does in a ``redis://`` URL.
        """
        scheme = "rediss" if self.tls else "redis"
        options = dict(parse(f"{scheme}://sentinel/{self.db}?{urlencode(self.options)}"))
        for name in ("host", "port", "connection_class"):
            options.pop(name, None)
        if self.tls:
            options["ssl"] = True  # SentinelConnectionPool's switch to TLS connections
        if self.username is not None:
            options["username"] = self.username
        if self.password is not None:
            options["password"] = self.password
        return options

    def sentinel_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The sentinels' connection options: the timeouts and retry of ``options``, their auth."""
        chosen = {name: options[name] for name in _SHARED_WITH_SENTINELS if name in options}
        if self.sentinel_username is not None:
            chosen["username"] = self.sentinel_username
        if self.sentinel_password is not None:
            chosen["password"] = self.sentinel_password
        return chosen


def is_sentinel_url(url: str) -> bool:
    """Whether ``url`` names a Sentinel-managed Redis (``redis+sentinel://``, ``rediss+sentinel://``)."""
    return url.partition("://")[0].lower() in SENTINEL_SCHEMES


def _sentinel_address(text: str) -> tuple[str, int]:
    if not text:
        raise ValueError("an empty sentinel address in the Redis URL (two commas in a row?)")
    if text.startswith("["):  # [IPv6]:port
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"sentinel address {text!r} in the Redis URL: use [IPv6]:port")
        port_text = rest[1:] if rest else ""
    else:
        host, colon, port_text = text.partition(":")
        if colon and not port_text:
            raise ValueError(f"sentinel address {text!r} in the Redis URL: no port after ':'")
    if not host:
        raise ValueError(f"sentinel address {text!r} in the Redis URL: no host")
    if not port_text:
        return host, SENTINEL_PORT
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(
            f"sentinel address {text!r} in the Redis URL: the port must be a number from 1 to 65535"
        )
    return host, int(port_text)


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Read a Sentinel URL; raise ``ValueError`` naming what is wrong.

    ``redis+sentinel://[[user]:password@]host1:26379,host2:26379/<service>[/<db>][?options]``:
    the sentinels (port 26379 if none), the name of the monitored primary (the
    service), the database. The user and password are the data nodes'; the
    sentinels' are the options ``sentinel_username`` and ``sentinel_password``
    (none if not given). ``rediss+sentinel://`` speaks TLS to the data nodes. The
    other options are those of a ``redis://`` URL.
    """
    scheme, separator, rest = url.partition("://")
    if scheme.lower() not in SENTINEL_SCHEMES or not separator:
        raise ValueError(
            "not a Sentinel URL: it must start with redis+sentinel:// or rediss+sentinel://"
        )
    rest = rest.partition("#")[0]
    rest, _, query_text = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user_text, colon, password_text = userinfo.partition(":")
        username = unquote(user_text) or None
        password = unquote(password_text) if colon else None
    if not hosts:
        raise ValueError("no sentinel host in the Redis URL: list them as host1:26379,host2:26379")
    sentinels = tuple(_sentinel_address(text) for text in hosts.split(","))
    segments = path.split("/") if slash else []
    if segments and segments[-1] == "" and len(segments) > 1:
        segments.pop()  # a trailing slash
    if not segments or not segments[0]:
        raise ValueError(
            "no service name in the Redis URL: put the name Sentinel monitors the primary "
            "under after the hosts, as in redis+sentinel://host:26379/mymaster"
        )
    if len(segments) > 2:
        raise ValueError(f"path {'/' + path!r} in the Redis URL: use /<service name>[/<db>]")
    service = unquote(segments[0])
    db = 0
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise ValueError(
                f"database {segments[1]!r} in the Redis URL: use a number (0 if unsure)"
            )
        db = int(segments[1])
    query = parse_qsl(query_text, keep_blank_values=True)
    for name, value in query:
        if name == "cluster" and value.lower() not in _FALSE:
            raise ValueError(
                "cluster=true with a Sentinel URL: Sentinel manages one primary and its "
                "replicas, not a Redis Cluster; use one or the other"
            )
        if name == "db":
            raise ValueError("db= in a Sentinel URL: put the database after the service name")
    chosen = {name: value for name, value in query if name in _SENTINEL_OPTIONS}
    address = SentinelUrl(
        sentinels=sentinels,
        service=service,
        db=db,
        username=username,
        password=password,
        tls=SENTINEL_SCHEMES[scheme.lower()],
        sentinel_username=chosen.get("sentinel_username") or None,
        sentinel_password=chosen.get("sentinel_password") or None,
        options=tuple(
            (name, value) for name, value in query if name not in _SENTINEL_OPTIONS + ("cluster",)
        ),
    )
    address.connection_options(redis.connection.parse_url)  # the options' values, checked now
    return address


def check_url(url: str) -> None:
    """Raise ``ValueError`` naming what is wrong with a Redis URL (for settings' checks)."""
    if is_sentinel_url(url):
        parse_sentinel_url(url)
    else:
        split_cluster_url(url)


def channel_layer_host(url: str) -> str | dict[str, Any]:
    """``url`` as channels-redis takes a host: itself, or for Sentinel a dict of its options."""
    if not is_sentinel_url(url):
        return url
    address = parse_sentinel_url(url)
    options = address.connection_options(redis.asyncio.connection.parse_url)
    return {
        "sentinels": list(address.sentinels),
        "master_name": address.service,
        "sentinel_kwargs": address.sentinel_options(options),
        **options,
    }


def check_primary(client: redis.Redis) -> bool:
    """Ask the sentinels where ``client``'s primary is now; whether it moved.

    redis-py asks the sentinels only when it opens a connection, so after a
    failover that left the old primary up (``SENTINEL FAILOVER``, a network
    split) pooled connections would go on writing to it until Sentinel demotes
    it, which can take ten seconds and more: writes that are then lost. Called
    every second or so on a background thread (the client's follower, the
    control plane's reconciler), this closes the pool's idle connections as soon
    as the sentinels name another primary; the next ones go to the new one.
    False for a client that does not use Sentinel, and when no sentinel answers
    (the connections then stay where they are).
    """
    pool = getattr(client, "connection_pool", None)
    if not isinstance(pool, redis.sentinel.SentinelConnectionPool):
        return False
    before = pool.master_address
    try:
        after = pool.get_master_address()  # type: ignore[no-untyped-call]
    except (redis.ConnectionError, redis.TimeoutError):
        return False
    return before is not None and before != after


def forget_primary(client: redis.asyncio.Redis) -> None:
    """After :func:`check_primary` found the primary moved: tell an asyncio client too.

    Safe from any thread. Its script calls then reconnect their connections
    through the sentinels (controlplane.protocol.scripts); nothing for a client
    that does not use Sentinel.
    """
    pool = getattr(client, "connection_pool", None)
    if isinstance(pool, redis.asyncio.sentinel.SentinelConnectionPool):
        pool.master_address = None  # no connection matches: each asks the sentinels again


def _tolerate_undecodable(options: dict[str, Any]) -> None:
    # Whoever can write to Redis can store any bytes. With decode_responses, redis-py
    # raises UnicodeDecodeError (no RedisError) for a reply that is not UTF-8, into
    # every caller; read it with escapes instead (b"\xff" as "\\xff"): the value is
    # then malformed for its reader, as any other bad value. Exact bytes, where a
    # repair needs them, are read undecoded (controlplane.protocol.store.read_policy_store).
    if options.get("decode_responses"):
        options.setdefault("encoding_errors", "backslashreplace")


def connect(url: str, **options: Any) -> redis.Redis:
    """Return a synchronous client of ``url`` (see the module's documentation).

    ``options`` are redis-py's (timeouts, ``retry``, ``decode_responses``...). A
    cluster client has the same commands as ``redis.Redis`` and is typed as one.
    """
    if is_sentinel_url(url):
        sentinel = parse_sentinel_url(url)
        _tolerate_undecodable(options)
        node_options = {**sentinel.connection_options(redis.connection.parse_url), **options}
        sentinel_class: Any = redis.sentinel.Sentinel  # untyped in redis-py
        manager = sentinel_class(
            sentinel.sentinels, sentinel_kwargs=sentinel.sentinel_options(node_options)
        )
        return cast(redis.Redis, manager.master_for(sentinel.service, **node_options))
    address, cluster = split_cluster_url(url)
    _tolerate_undecodable(options)
    if not cluster:
        return redis.Redis.from_url(address, **options)
    # Not passed to a cluster's nodes: redis-py's cluster clients accept it, but
    # it has not been tried there.
    options.pop("health_check_interval", None)
    return cast(redis.Redis, _LazyCluster(address, options))


def connect_async(url: str, **options: Any) -> redis.asyncio.Redis:
    """Return an asyncio client of ``url`` (see :func:`connect`)."""
    if is_sentinel_url(url):
        sentinel = parse_sentinel_url(url)
        _tolerate_undecodable(options)
        node_options = {
            **sentinel.connection_options(redis.asyncio.connection.parse_url),
            **options,
        }
        sentinel_class: Any = redis.asyncio.sentinel.Sentinel  # untyped in redis-py
        manager = sentinel_class(
            sentinel.sentinels, sentinel_kwargs=sentinel.sentinel_options(node_options)
        )
        return cast(redis.asyncio.Redis, manager.master_for(sentinel.service, **node_options))
    address, cluster = split_cluster_url(url)
    _tolerate_undecodable(options)
    if not cluster:
        return redis.asyncio.Redis.from_url(address, **options)
    options.pop("health_check_interval", None)
    return cast(redis.asyncio.Redis, AsyncClusterClient.from_url(address, **options))


# The policy store in one atomic read (lua/read_store.lua): its three keys share a slot.
