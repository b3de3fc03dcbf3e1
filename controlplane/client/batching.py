"""Send concurrent Lua script calls of one event loop to Redis together.

Every ``EVALSHA`` submitted during one event-loop iteration is queued; at the
end of the iteration (``loop.call_soon``), or as soon as ``max_batch`` calls
are waiting, they go out together, as a pipeline without ``MULTI`` does: one
write on one connection, then the replies in order (one round trip).
Each script still runs atomically on its own; the pipeline only saves round
trips. 64 coroutines each checking a rate limit cost one round trip, not 64.
"""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis
from redis.asyncio import Redis as AsyncRedis

_pack_command: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _pack_command
except ImportError:  # hiredis comes with redis[hiredis]; redis-py packs without it
    _pack_command = None

if TYPE_CHECKING:
    from controlplane.client.client import Client

MAX_BATCH = 256


@dataclass(frozen=True)
class LuaScript:
    """A Lua script and its SHA1, run with ``EVALSHA`` and loaded again on ``NOSCRIPT``."""

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())

    def run(self, client: redis.Redis, keys: Sequence[str], args: Sequence[str]) -> Any:
        """Run the script in one round trip (two more only after a Redis restart)."""
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            client.script_load(self.source)
            return client.evalsha(self.sha, len(keys), *keys, *args)


@dataclass
class _Call:
    script: LuaScript
    keys: Sequence[str]
    args: Sequence[str]
    future: asyncio.Future[Any]


class AsyncBatcher:
    """Queue script calls of one event loop and flush them in one pipeline per iteration."""

    def __init__(self, client: AsyncRedis, max_batch: int = MAX_BATCH) -> None:
        self._redis = client
        self._max_batch = max_batch
        self._pending: list[_Call] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # pipelines sent, for tests and benchmarks
        self.calls = 0

    def submit(
        self, script: LuaScript, keys: Sequence[str], args: Sequence[str]
    ) -> asyncio.Future[Any]:
        """Queue one call; the future gets its reply or the Redis error."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append(_Call(script, keys, args, future))
        if len(self._pending) >= self._max_batch:
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
            if missing:  # Redis restarted and lost its scripts: load them, run those again
                for script in {batch[i].script for i in missing}:
                    await self._redis.script_load(script.source)
                again = await self._execute([batch[i] for i in missing])
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
        except BaseException as exc:  # the pipeline failed as a whole: every call fails
            for call in batch:
                if not call.future.done():
                    call.future.set_exception(_as_exception(exc))
            if not isinstance(exc, Exception):
                raise
            return
        for call, reply in zip(batch, replies, strict=True):
            if call.future.done():
                continue  # the caller gave up (cancelled)
            if isinstance(reply, Exception):
                call.future.set_exception(reply)
            else:
                call.future.set_result(reply)

    async def _execute(self, batch: list[_Call]) -> list[Any]:
        """Send every call in one write and read the replies: one round trip.

        Same as a redis-py pipeline without ``MULTI``, with less work per command
        (hiredis packs the commands when installed); an error reply of one call
        (``NOSCRIPT``, a script error) is returned in its place, not raised.
        """
        commands = [
            ("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args) for call in batch
        ]
        pool = self._redis.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            if _pack_command is not None:
                packed: bytes | list[bytes] = b"".join(
                    [_pack_command(command) for command in commands]
                )
            else:
                packed = connection.pack_commands(commands)
            await connection.send_packed_command(packed, check_health=False)
            return await self._read_replies(connection, len(commands))
        except BaseException:
            # Replies may be left unread on this connection: never reuse it.
            await connection.disconnect(nowait=True)
            raise
        finally:
            await pool.release(connection)

    @staticmethod
    async def _read_replies(connection: Any, count: int) -> list[Any]:
        # One deadline for the whole batch: Connection.read_response would arm
        # and cancel a timer per reply. Error replies come back as values.
        parser = getattr(connection, "_parser", None)
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


def _as_exception(exc: BaseException) -> Exception:
    if isinstance(exc, Exception):
        return exc
    return redis.exceptions.ConnectionError(f"batch interrupted: {exc!r}")


_batchers: weakref.WeakKeyDictionary[
    Client, weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncBatcher]
] = weakref.WeakKeyDictionary()


def batcher_for(client: Client) -> AsyncBatcher:
    """Return the batcher of ``client`` for the running event loop (one per loop)."""
    loop = asyncio.get_running_loop()
    per_loop = _batchers.get(client)
    if per_loop is None:
        per_loop = _batchers[client] = weakref.WeakKeyDictionary()
    batcher = per_loop.get(loop)
    if batcher is None or batcher._redis is not client.async_redis():
        batcher = per_loop[loop] = AsyncBatcher(client.async_redis())
    return batcher
