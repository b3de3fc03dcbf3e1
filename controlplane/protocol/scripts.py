"""Every Lua script of the project, and the one way to run them on Redis.

The scripts are the files of ``controlplane/protocol/lua/``. Both sides run them
here, with a redis-py client (``protocol.connection.connect`` or
``connect_async``, one server or a cluster), never a ``controlplane.client.Client``.

API::

    load(name) -> LuaScript
        The script ``lua/<name>.lua``, read once per process. A ``breaker_*``
        script is preceded by ``breaker_common.lua`` (its helpers), so every
        script that needs those helpers gets them from this one loader.

    run(client, script, keys, args, *, raw=False) -> reply
        Run on a synchronous client: ``EVALSHA``, one round trip (``EVAL`` once
        more after ``NOSCRIPT``, when Redis restarted and lost its scripts). On
        a cluster it goes to the node of ``keys[0]``. ``raw=True`` reads the
        reply as bytes whatever the client's ``decode_responses``. Raises what
        redis-py raises (``RedisError`` and its subclasses; an error reply of
        the script is a ``ResponseError``).

    await arun(client, script, keys, args) -> reply
        Run on an asyncio client, batched with every other call of the same
        event-loop iteration (one round trip for all), on a cluster one write
        per node. Same errors as ``run``.

    runner_for(client) / batcher_for(async_client)
        What ``run`` and ``arun`` use, for a hot path that keeps it at hand
        (the rate limiter): ``runner_for(client).run(script, keys, args)``,
        ``await batcher_for(async_client).submit(script, keys, args)``.

``script`` is a :class:`LuaScript` (from ``load``, or built from source in tests).
Arguments are ``str``, ``bytes``, ``int`` or ``float`` as redis-py encodes them.

How it stays cheap. Sync: :class:`ScriptRunner` sends one ``EVALSHA`` per call
on a connection of the client's pool, kept checked out between calls (see the
class). Async: every ``EVALSHA`` submitted during one event-loop iteration is
queued; at the end of the iteration (``loop.call_soon``), or as soon as
``max_batch`` calls are waiting, they go out together, as a pipeline without
``MULTI`` does: one write on one connection, then the replies in order (one
round trip). Each script still runs atomically on its own; the pipeline only
saves round trips. 64 coroutines each checking a rate limit cost one round
trip, not 64.

Both go below redis-py's client API, to its connection pools, connections and
cluster nodes. What they use of those differs between the redis-py versions we
support (``pyproject.toml``): :data:`INTERNALS` finds it once, at import, and
each use has a fallback through the public API where this redis-py lacks it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import os
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any, Final

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.client import NEVER_DECODE

from controlplane.protocol.connection import is_cluster

_pack_command: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _pack_command
except ImportError:  # hiredis comes with redis[hiredis]; redis-py packs without it
    _pack_command = None

Arg = str | bytes | int | float

MAX_BATCH = 256
MAX_IDLE = 32  # connections a ScriptRunner keeps between calls; more go back to the pool

_LUA_DIR: Final = files("controlplane.protocol").joinpath("lua")
# Scripts whose name starts with a prefix here are preceded by the helpers of that file.
_PRELUDES: Final = {"breaker_": "breaker_common"}


@dataclass(frozen=True)
class LuaScript:
    """A Lua script and its SHA1, run with ``EVALSHA`` and sent whole on ``NOSCRIPT``."""

    source: str
    name: str = ""
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())

    def run(
        self, client: redis.Redis, keys: Sequence[str], args: Sequence[Arg], raw: bool = False
    ) -> Any:
        """Run through redis-py's client API (each command checks a connection out)."""
        options = {NEVER_DECODE: True} if raw else {}
        try:
            return client.execute_command(  # type: ignore[no-untyped-call]
                "EVALSHA", self.sha, len(keys), *keys, *args, **options
            )
        except redis.exceptions.NoScriptError:
            return client.execute_command(  # type: ignore[no-untyped-call]
                "EVAL", self.source, len(keys), *keys, *args, **options
            )


@functools.cache
def load(name: str) -> LuaScript:
    """The script ``lua/<name>.lua`` (read once per process), with its prelude if any."""
    if not name.isidentifier():
        raise ValueError(f"script name {name!r}: letters, digits and underscores only")
    path = _LUA_DIR.joinpath(f"{name}.lua")
    if not path.is_file():
        raise ValueError(f"script name {name!r}: no such script in controlplane/protocol/lua")
    source = path.read_text()
    for prefix, prelude in _PRELUDES.items():
        if name.startswith(prefix) and name != prelude:
            source = _LUA_DIR.joinpath(f"{prelude}.lua").read_text() + "\n" + source
    return LuaScript(source, name)


def run(
    client: redis.Redis,
    script: LuaScript,
    keys: Sequence[str],
    args: Sequence[Arg],
    *,
    raw: bool = False,
) -> Any:
    """Run ``script`` on a synchronous client (see the module's documentation)."""
    return runner_for(client).run(script, keys, args, raw)


async def arun(
    client: AsyncRedis, script: LuaScript, keys: Sequence[str], args: Sequence[Arg]
) -> Any:
    """Run ``script`` on an asyncio client, batched (see the module's documentation)."""
    return await batcher_for(client).submit(script, keys, args)


# What the installed redis-py offers below its client API.


def _wants_command_name(get_connection: Callable[..., Any]) -> bool:
    """Whether a pool's ``get_connection`` must be given a command name.

    redis-py before 5.3 requires one; from 5.3 it is optional and passing it is
    deprecated (a ``DeprecationWarning`` on every call).
    """
    try:
        parameter = inspect.signature(get_connection).parameters.get("command_name")
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.default is inspect.Parameter.empty


def _async_connections_have_a_parser() -> bool:
    """Whether an asyncio connection reads replies through ``_parser.read_response()``."""
    try:
        connection = redis.asyncio.Connection()
    except Exception:
        return False
    return inspect.iscoroutinefunction(
        getattr(getattr(connection, "_parser", None), "read_response", None)
    )


@dataclass(frozen=True)
class RedisInternals:
    """What the installed redis-py offers below its client API (each with a fallback).

    ``pool_wants_command_name``, ``async_pool_wants_command_name``: the pools'
    ``get_connection`` requires the command's name (before 5.3); it is then given
    ``"EVALSHA"``, else nothing.
    ``node_release``: an asyncio cluster node takes a connection back with
    ``release()`` (7.0); without it a batch goes through redis-py's cluster
    pipeline instead of straight to each node's connection.
    ``node_disconnect_if_needed``: a node drops a connection that a maintenance
    event marked for reconnection (7.2); before, a node marks none.
    ``async_parser``: an asyncio connection's replies are read with
    ``_parser.read_response()`` under one deadline for the whole batch; without
    it, with the public ``read_response()``, one deadline per reply.
    """

    pool_wants_command_name: bool
    async_pool_wants_command_name: bool
    node_release: bool
    node_disconnect_if_needed: bool
    async_parser: bool

    @classmethod
    def of_installed_redis(cls) -> RedisInternals:
        return cls(
            pool_wants_command_name=_wants_command_name(redis.ConnectionPool.get_connection),
            async_pool_wants_command_name=_wants_command_name(
                redis.asyncio.ConnectionPool.get_connection
            ),
            node_release=callable(getattr(AsyncClusterNode, "release", None)),
            node_disconnect_if_needed=callable(
                getattr(AsyncClusterNode, "disconnect_if_needed", None)
            ),
            async_parser=_async_connections_have_a_parser(),
        )


INTERNALS: Final = RedisInternals.of_installed_redis()
_GET_CONNECTION_ARGS: Final[tuple[str, ...]] = (
    ("EVALSHA",) if INTERNALS.pool_wants_command_name else ()
)
_ASYNC_GET_CONNECTION_ARGS: Final[tuple[str, ...]] = (
    ("EVALSHA",) if INTERNALS.async_pool_wants_command_name else ()
)


# Synchronous


class ScriptRunner:
    """Run Lua scripts on a synchronous client's pool: one ``EVALSHA``, one round trip per call.

    (A cluster client has a pool per node: :func:`runner_for` gives it a
    :class:`ClusterScriptRunner` instead.)

    ``client.evalsha`` checks a connection out of the pool and back in for every
    command; on this path that bookkeeping (locks, pool metrics and events, and
    three system calls to probe the socket) costs more than the script. A runner
    keeps up to ``max_idle`` connections of the pool checked out between its
    calls instead, on a stack that threads share (one call uses a connection at
    a time). Before reuse, a connection with anything to read (closed by the
    server, say) is disconnected and connects again, as the pool would do (one
    non-blocking read, ``can_read``). On any failure but an error reply the
    connection is disconnected and returned to the pool, so no reply is ever
    left unread on it. Timeouts and health checks are the connection's own.
    ``pool.disconnect()`` (``Redis.close()``) closes these connections too; a
    forked child forgets its parent's (``os.register_at_fork``).
    """

    def __init__(self, pool: redis.ConnectionPool, max_idle: int = MAX_IDLE) -> None:
        self.pool = pool
        self._max_idle = max_idle
        # A Sentinel-managed pool knows its primary's address: a kept connection to
        # another server (the primary before a failover) connects again first.
        self._sentinel = isinstance(pool, redis.sentinel.SentinelConnectionPool)
        self._idle: list[Any] = []
        _runners.add(self)

    def run(
        self, script: LuaScript, keys: Sequence[str], args: Sequence[Arg], raw: bool = False
    ) -> Any:
        """Run the script in one round trip (one more only after a Redis restart)."""
        try:
            return self.execute(("EVALSHA", script.sha, len(keys), *keys, *args), raw)
        except redis.exceptions.NoScriptError:
            return self.execute(("EVAL", script.source, len(keys), *keys, *args), raw)

    def execute(self, command: tuple[Any, ...], raw: bool = False) -> Any:
        """Send one command and return its reply (an error reply raises ``ResponseError``)."""
        try:
            connection = self._idle.pop()
        except IndexError:
            connection = self.pool.get_connection(*_GET_CONNECTION_ARGS)  # checked by the pool
        else:
            if self._sentinel and not self.pool.owns_connection(connection):
                # To the primary before a failover. A send would connect it again to
                # the same address: the pool drops it and connects a new one to the
                # primary the sentinels name.
                connection.disconnect()
                self.pool.release(connection)
                connection = self.pool.get_connection(*_GET_CONNECTION_ARGS)
            try:
                if connection.can_read(0):  # unexpected data, or closed by the server
                    connection.disconnect()  # the send below connects again
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
                connection.disconnect()
        try:
            if _pack_command is not None:
                connection.send_packed_command([_pack_command(command)])
            else:
                connection.send_command(*command)
            if raw:
                reply = connection.read_response(disable_decoding=True)
            else:
                reply = connection.read_response()
        except redis.exceptions.ResponseError as exc:
            if self._sentinel and "READONLY" in str(exc):
                # A script's write refused inside the script: the primary before a
                # failover, now a replica. Drop the connection; the next one asks
                # the sentinels. An outage for the caller, as while Redis is down.
                connection.disconnect()
                self.pool.release(connection)
                raise redis.exceptions.ConnectionError(
                    f"the Redis primary became a replica (Sentinel failover): {exc}"
                ) from exc
            self._keep(connection)  # an error reply, read whole: the connection is fine
            raise
        except BaseException:
            # Maybe half sent, or a reply left unread: never reuse this connection as is.
            connection.disconnect()
            self.pool.release(connection)
            raise
        self._keep(connection)
        return reply

    def _keep(self, connection: Any) -> None:
        if len(self._idle) < self._max_idle:
            self._idle.append(connection)
        else:
            self.pool.release(connection)

    def _forget(self) -> None:
        # In a forked child: the parent's sockets are not ours to use (nor to shut down).
        self._idle = []


class ClusterScriptRunner:
    """Run Lua scripts on a Redis Cluster: on the node of their first key, one round trip.

    The node comes from redis-py's slot map, and the script goes out through a
    :class:`ScriptRunner` on that node's pool. When the map is wrong or the node
    cannot be used (``MOVED``, ``ASK``, a failover, a node gone), the call goes
    through redis-py's cluster client instead, which follows the redirection
    and refreshes the map for the next calls.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._client = weakref.ref(client)  # held by the client: no cycle through the registry
        self._runners: dict[str, ScriptRunner] = {}

    def run(
        self, script: LuaScript, keys: Sequence[str], args: Sequence[Arg], raw: bool = False
    ) -> Any:
        client: Any = self._client()
        if client is None:
            raise redis.exceptions.ConnectionError("the Redis client was closed")
        try:
            cluster = client.cluster_client()
            node = cluster.get_node_from_key(keys[0])
            runner = self._runners.get(node.name)
            if runner is None:
                pool = cluster.get_redis_connection(node).connection_pool
                runner = self._runners[node.name] = ScriptRunner(pool)
            return runner.run(script, keys, args, raw)
        except (
            redis.exceptions.AskError,  # MOVED too
            redis.exceptions.TryAgainError,
            redis.exceptions.ClusterDownError,
            redis.exceptions.ConnectionError,  # refused: the node may have failed over
            redis.exceptions.RedisClusterException,
        ):
            return script.run(client, keys, args, raw)


Runner = ScriptRunner | ClusterScriptRunner

_runners: weakref.WeakSet[ScriptRunner] = weakref.WeakSet()
# Runners hold the pool (or a weak reference), not the client, so a client's
# runner goes away with it.
_runner_of: weakref.WeakKeyDictionary[redis.Redis, Runner] = weakref.WeakKeyDictionary()


def runner_for(client: redis.Redis) -> Runner:
    """Return the script runner of a synchronous client (one per client)."""
    runner = _runner_of.get(client)
    if is_cluster(client):
        if runner is None:
            runner = _runner_of[client] = ClusterScriptRunner(client)
    elif not isinstance(runner, ScriptRunner) or runner.pool is not client.connection_pool:
        runner = _runner_of[client] = ScriptRunner(client.connection_pool)
    return runner


def _forget_connections_in_child() -> None:
    for runner in list(_runners):
        runner._forget()


os.register_at_fork(after_in_child=_forget_connections_in_child)


# Asynchronous

_Call = tuple[LuaScript, tuple[Any, ...], "asyncio.Future[Any]"]  # script, EVALSHA, future


class AsyncBatcher:
    """Queue script calls of one event loop and flush them in one pipeline per iteration."""

    def __init__(self, client: AsyncRedis, max_batch: int = MAX_BATCH) -> None:
        self._client = weakref.ref(client)  # held by the client: no cycle through the registry
        self._max_batch = max_batch
        self._pending: list[_Call] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # pipelines sent, for tests and benchmarks
        self.calls = 0

    @property
    def _redis(self) -> AsyncRedis:
        client = self._client()
        if client is None:
            raise redis.exceptions.ConnectionError("the Redis client was closed")
        return client

    def submit(
        self, script: LuaScript, keys: Sequence[str], args: Sequence[Arg]
    ) -> asyncio.Future[Any]:
        """Queue one call; the future gets its reply or the Redis error."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        pending = self._pending
        pending.append((script, ("EVALSHA", script.sha, len(keys), *keys, *args), future))
        if len(pending) >= self._max_batch:
            self._flush()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Call]) -> None:
        self.batches += 1
        self.calls += len(batch)
        try:
            replies = await self._execute(batch)
            missing = [
                i
                for i, reply in enumerate(replies)
                if isinstance(reply, redis.exceptions.NoScriptError)
            ]
            if missing:  # Redis restarted and lost its scripts: send those whole (EVAL)
                again = await self._execute(
                    [
                        (script, ("EVAL", script.source, *command[2:]), future)
                        for script, command, future in (batch[i] for i in missing)
                    ]
                )
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
        except BaseException as exc:  # the pipeline failed as a whole: every call fails
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(_as_exception(exc))
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue  # the caller gave up (cancelled)
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _execute(self, batch: list[_Call]) -> list[Any]:
        """Send every call in one write and read the replies: one round trip.

        Same as a redis-py pipeline without ``MULTI``, with less work per command
        (hiredis packs the commands when installed); an error reply of one call
        (``NOSCRIPT``, a script error) is returned in its place, not raised.
        """
        if is_cluster(self._redis):
            return await self._execute_on_cluster(batch)
        pool = self._redis.connection_pool
        get_connection: Any = pool.get_connection  # untyped in redis-py
        connection = await get_connection(*_ASYNC_GET_CONNECTION_ARGS)
        try:
            if isinstance(pool, redis.asyncio.sentinel.SentinelConnectionPool) and (
                pool.master_address != (connection.host, connection.port)
            ):
                # To the primary before a failover (see connection.forget_primary):
                # connect() asks the sentinels (a send would reconnect to the old one).
                # (The asyncio pool's owns_connection() fails in redis-py 7.)
                await connection.disconnect()
                await connection.connect()
            return await self._round_trip(connection, batch)
        finally:
            await pool.release(connection)

    async def _round_trip(self, connection: Any, batch: list[_Call]) -> list[Any]:
        """The round trip of :meth:`_execute` on one connection."""
        try:
            if _pack_command is not None:
                packed: bytes | list[bytes] = b"".join([_pack_command(call[1]) for call in batch])
            else:
                packed = connection.pack_commands([call[1] for call in batch])
            await connection.send_packed_command(packed, check_health=False)
            return await self._read_replies(connection, len(batch))
        except BaseException:
            # Replies may be left unread on this connection: never reuse it.
            await connection.disconnect(nowait=True)
            raise

    async def _execute_on_cluster(self, batch: list[_Call]) -> list[Any]:
        """:meth:`_execute` on a cluster: one write per node, to the nodes together.

        Each call goes to the node of its first key in redis-py's slot map. Calls
        that node refuses (``MOVED``, ``ASK``, ``TRYAGAIN``, cluster down) or that
        it cannot take (connection failed) go again through redis-py's cluster
        pipeline, which follows redirections and refreshes the map.
        """
        if not INTERNALS.node_release:  # no way back for a node's connection (before 7.0)
            return await self._through_cluster_pipeline(batch)
        cluster: Any = self._redis
        try:
            await cluster.initialize()  # the slot map; nothing to do once loaded
            groups: dict[Any, list[int]] = {}
            for index, call in enumerate(batch):
                node = cluster.get_node_from_key(call[1][3])  # EVALSHA sha numkeys key ...
                groups.setdefault(node, []).append(index)
        except redis.exceptions.RedisClusterException:  # no map, or a slot not covered
            return await self._through_cluster_pipeline(batch)
        replies: list[Any] = [None] * len(batch)
        again: list[int] = []

        async def on_node(node: Any, indexes: list[int]) -> None:
            connection = node.acquire_connection()
            try:
                if INTERNALS.node_disconnect_if_needed:
                    await node.disconnect_if_needed(connection)
                answers = await self._round_trip(connection, [batch[i] for i in indexes])
            except redis.exceptions.ConnectionError:
                again.extend(indexes)
                return
            finally:
                node.release(connection)
            for index, answer in zip(indexes, answers, strict=True):
                if isinstance(answer, _REDIRECTED):
                    again.append(index)
                else:
                    replies[index] = answer

        await asyncio.gather(*(on_node(node, indexes) for node, indexes in groups.items()))
        if again:
            answers = await self._through_cluster_pipeline([batch[i] for i in again])
            for index, answer in zip(again, answers, strict=True):
                replies[index] = answer
        return replies

    async def _through_cluster_pipeline(self, batch: list[_Call]) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for call in batch:
                pipe.execute_command(*call[1])
            return list(await pipe.execute(raise_on_error=False))

    @staticmethod
    async def _read_replies(connection: Any, count: int) -> list[Any]:
        # One deadline for the whole batch: Connection.read_response would arm
        # and cancel a timer per reply. Error replies come back as values.
        parser = getattr(connection, "_parser", None) if INTERNALS.async_parser else None
        if parser is None:  # another redis-py layout: the public, slower way
            replies: list[Any] = []
            for _ in range(count):
                try:
                    replies.append(await connection.read_response())
                except redis.exceptions.ResponseError as exc:
                    replies.append(exc)
            return replies
        try:
            async with asyncio.timeout(connection.socket_timeout):
                return [await parser.read_response() for _ in range(count)]
        except TimeoutError:
            raise redis.exceptions.TimeoutError("Timeout reading the batch's replies") from None
        except redis.exceptions.RedisError:
            raise
        except OSError as exc:
            raise redis.exceptions.ConnectionError(f"Error reading the batch: {exc}") from exc


# Error replies of a node that does not (or not yet) serve the slot: MOVED is an AskError.
_REDIRECTED = (
    redis.exceptions.AskError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
)


def _as_exception(exc: BaseException) -> Exception:
    if isinstance(exc, Exception):
        return exc
    return redis.exceptions.ConnectionError(f"batch interrupted: {exc!r}")


# An asyncio client belongs to one event loop, so one batcher per client is one per loop.
_batchers: weakref.WeakKeyDictionary[AsyncRedis, AsyncBatcher] = weakref.WeakKeyDictionary()


def batcher_for(client: AsyncRedis) -> AsyncBatcher:
    """Return the batcher of an asyncio client (one per client)."""
    batcher = _batchers.get(client)
    if batcher is None:
        batcher = _batchers[client] = AsyncBatcher(client)
    return batcher
