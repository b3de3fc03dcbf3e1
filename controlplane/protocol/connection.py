"""Open Redis connections from a URL: one server or a cluster.

One server: ``redis://``, ``rediss://`` (TLS) or ``unix://``, as redis-py reads them.

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
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio
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
        owners.append(getattr(client, "connection_pool", None))
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
    address, cluster = split_cluster_url(url)
    _tolerate_undecodable(options)
    if not cluster:
        return redis.asyncio.Redis.from_url(address, **options)
    options.pop("health_check_interval", None)
    return cast(redis.asyncio.Redis, AsyncClusterClient.from_url(address, **options))


# The policy store in one atomic read (lua/read_store.lua): its three keys share a slot.
