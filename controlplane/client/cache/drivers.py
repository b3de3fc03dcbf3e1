"""The cache's two drivers (threads and asyncio) and its public API.

The logic is in ``core.py``; a driver runs a step generator to its end, doing
each request it yields: a Redis command or the store script on the client's
synchronous pool or the event loop's, the user's function called or awaited, a
pause, the lookup shared by concurrent callers, a refresh in a daemon thread or a
task. What the request raised is thrown back into the step at its ``yield``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple, ParamSpec, Protocol, TypeVar, assert_never, cast

from controlplane.client.cache.core import (
    STORE_SCRIPT,
    UNCACHED,
    CacheCore,
    Invoke,
    LocalKey,
    Pause,
    RedisCommand,
    Request,
    Share,
    Spawn,
    Steps,
    StoreScript,
    _FunctionFailed,
    make_digest,
)
from controlplane.protocol.cache_entries import Entry, call_key, function_namespace
from controlplane.protocol.scripts import arun, run

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class CachedFunction(Protocol[P, R_co]):
    """A function decorated by a cache: called as before, plus ``invalidate``.

    ``price.invalidate("ABC-1")`` (or ``await price.ainvalidate("ABC-1")``) drops
    the entry of that call in Redis and in every process's in-process tier.
    """

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> None: ...

    async def ainvalidate(self, *args: P.args, **kwargs: P.kwargs) -> None: ...


class _Flight:
    """One lookup shared by the threads that ask for the same entry at once."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: tuple[Any, str] | None = None
        self.error: BaseException | None = None


class _Raised(NamedTuple):
    """What a request raised, to be thrown into the step that made it."""

    error: BaseException


def _next_request(steps: Steps[Any], reply: Any) -> Request:
    """Send ``reply`` into ``steps`` (throw it in if ``_Raised``); return their next
    request. Raises ``StopIteration`` with their value once they are done."""
    if isinstance(reply, _Raised):
        return steps.throw(reply.error)
    return steps.send(reply)


def _settled(outcome: Any) -> Any:
    """The value a decorated call returns, or the function's own exception raised."""
    if isinstance(outcome, _FunctionFailed):
        raise outcome.error
    return outcome


class Cache(CacheCore):
    """One cache policy: settings that follow the control plane, and the caching itself."""

    def _init_runtime(self) -> None:
        super()._init_runtime()
        self._flights: dict[LocalKey, _Flight] = {}
        self._flights_lock = threading.Lock()
        self._async_flights: dict[tuple[int, LocalKey], asyncio.Task[tuple[Any, str]]] = {}
        self._background: set[asyncio.Task[None]] = set()

    # The thread driver

    def _run(self, steps: Steps[T]) -> T:
        """Run ``steps`` to their end in this thread, doing each request they yield."""
        reply: Any = None
        try:
            while True:
                reply = self._perform(_next_request(steps, reply))
        except StopIteration as done:
            return cast(T, done.value)

    def _perform(self, request: Request) -> Any:
        """Do one request in this thread: its result, or what it raised as ``_Raised``."""
        try:
            match request:
                case RedisCommand(method, args, options):
                    return getattr(self._client.redis, method)(*args, **(options or {}))
                case StoreScript(keys, args):
                    return run(self._client.redis, STORE_SCRIPT, keys, args)
                case Invoke(function, args, kwargs):
                    return function(*args, **kwargs)
                case Pause(seconds):
                    return time.sleep(seconds)
                case Share(key, call):
                    return self._share(key, call)
                case Spawn(steps):
                    context = contextvars.copy_context()
                    name = f"controlplane-cache-{self.name}"
                    thread = threading.Thread(
                        target=context.run, args=(self._run, steps), name=name, daemon=True
                    )
                    return thread.start()  # RuntimeError while the interpreter shuts down
                case _:
                    assert_never(request)
        except BaseException as exc:
            return _Raised(exc)

    def _share(self, key: LocalKey, call: Invoke) -> tuple[Any, str]:
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
            flight.value = self._run(self._load(key, call))
            return flight.value
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._flights_lock:
                self._flights.pop(key, None)
            flight.done.set()

    # The asyncio driver

    async def _arun(self, steps: Steps[T]) -> T:
        """Run ``steps`` to their end on this event loop, doing each request they yield."""
        reply: Any = None
        try:
            while True:
                reply = await self._aperform(_next_request(steps, reply))
        except StopIteration as done:
            return cast(T, done.value)

    async def _aperform(self, request: Request) -> Any:
        """Do one request on this event loop: its result, or what it raised as ``_Raised``."""
        try:
            match request:
                case RedisCommand(method, args, options):
                    connection = self._client.async_redis()
                    return await getattr(connection, method)(*args, **(options or {}))
                case StoreScript(keys, args):
                    return await arun(self._client.async_redis(), STORE_SCRIPT, keys, args)
                case Invoke(function, args, kwargs):
                    return await function(*args, **kwargs)
                case Pause(seconds):
                    return await asyncio.sleep(seconds)
                case Share(key, call):
                    return await self._ashare(key, call)
                case Spawn(steps):
                    task = asyncio.get_running_loop().create_task(self._arun(steps))
                    self._background.add(task)
                    return task.add_done_callback(self._background.discard)
                case _:
                    assert_never(request)
        except BaseException as exc:
            return _Raised(exc)

    async def _ashare(self, key: LocalKey, call: Invoke) -> tuple[Any, str]:
        # One task per entry and event loop does the lookup; every caller awaits it
        # shielded, so a cancelled caller never cancels the others' computation.
        loop = asyncio.get_running_loop()
        flight_key = (id(loop), key)
        task = self._async_flights.get(flight_key)
        if task is None or task.get_loop() is not loop:
            task = loop.create_task(self._arun(self._load(key, call)))
            self._async_flights[flight_key] = task

            def landed(done: asyncio.Task[tuple[Any, str]]) -> None:
                if self._async_flights.get(flight_key) is done:
                    del self._async_flights[flight_key]
                if not done.cancelled():
                    done.exception()  # retrieved: no "never retrieved" warning

            task.add_done_callback(landed)
        return await asyncio.shield(task)

    # Public API

    def decorate(
        self, key: Callable[..., object] | None = None
    ) -> Callable[[Callable[P, R]], CachedFunction[P, R]]:
        """Return a decorator caching a sync or async function's results in this cache.

        The entry of a call is the digest of the function's qualified name and its
        arguments bound by name (defaults applied), or of ``key(*args, **kwargs)``
        when given. The decorated function gets ``invalidate(*args, **kwargs)`` (and
        ``ainvalidate`` for async code) to drop one entry everywhere.
        """

        def decorator(function: Callable[P, R]) -> CachedFunction[P, R]:
            namespace = function_namespace(function)
            try:
                signature: inspect.Signature | None = inspect.signature(function)
            except (TypeError, ValueError):
                signature = None

            def digest_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
                if key is not None:
                    return make_digest(namespace, key(*args, **kwargs))
                return make_digest(namespace, call_key(signature, args, kwargs))

            def invalidate(*args: Any, **kwargs: Any) -> None:
                """Drop the entry of this call, in Redis and in every in-process tier."""
                self._run(self._delete((self.generation, digest_of(args, kwargs))))

            async def ainvalidate(*args: Any, **kwargs: Any) -> None:
                """``invalidate`` through the event loop's Redis connection."""
                await self._arun(self._delete((self.generation, digest_of(args, kwargs))))

            wrapper: Any
            if inspect.iscoroutinefunction(function):

                @functools.wraps(function)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    step = self._begin_call(digest_of, args, kwargs)
                    if isinstance(step, Entry):
                        return step.value
                    if isinstance(step, tuple):  # a key: look it up
                        step = await self._arun(self._call(step, Invoke(function, args, kwargs)))
                    return await function(*args, **kwargs) if step is UNCACHED else _settled(step)

                wrapper = async_wrapper
            else:

                @functools.wraps(function)
                def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                    step = self._begin_call(digest_of, args, kwargs)
                    if isinstance(step, Entry):
                        return step.value
                    if isinstance(step, tuple):  # a key: look it up
                        step = self._run(self._call(step, Invoke(function, args, kwargs)))
                    return function(*args, **kwargs) if step is UNCACHED else _settled(step)

                wrapper = sync_wrapper
            wrapper.invalidate = invalidate
            wrapper.ainvalidate = ainvalidate
            wrapper.cache = self
            return cast(CachedFunction[P, R], wrapper)

        return decorator

    def __call__(self, function: Callable[P, R]) -> CachedFunction[P, R]:
        """``@client.cache("prices")`` used directly as a decorator."""
        return self.decorate()(function)

    def get(self, key: Any, default: Any = None) -> Any:
        """Return the fresh value stored under ``key`` (any hashable-by-content value)."""
        return self._run(self._lookup(key, default))

    def set(self, key: Any, value: Any) -> None:
        """Store ``value`` under ``key`` for the cache's ttl (plus its stale window)."""
        if self.enabled:
            self._run(self._store(self._key(key), value, None))

    def delete(self, key: Any) -> None:
        """Drop ``key`` in Redis and in every process's in-process tier."""
        self._run(self._delete(self._key(key)))

    async def aget(self, key: Any, default: Any = None) -> Any:
        """``get`` through the event loop's Redis connection."""
        return await self._arun(self._lookup(key, default))

    async def aset(self, key: Any, value: Any) -> None:
        """``set`` through the event loop's Redis connection."""
        if self.enabled:
            await self._arun(self._store(self._key(key), value, None))

    async def adelete(self, key: Any) -> None:
        """``delete`` through the event loop's Redis connection."""
        await self._arun(self._delete(self._key(key)))
