"""Module-level decorators that use the default client set by ``configure()``.

They resolve the client when the decorated function is first called, so they
can decorate functions at import time, before the application configures.
Each keeps the decorated function's signature for type checkers (``ParamSpec``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, Unpack, cast

from controlplane.client.cache import CachedFunction
from controlplane.client.client import BreakerOptions, CacheOptions, Client, RateLimitedOptions
from controlplane.client.errors import ControlPlaneError

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])  # kept for code that imported it
_default: Client | None = None


def configure(client: Client) -> Client:
    """Make ``client`` the one the module-level decorators use."""
    global _default
    _default = client
    return client


def default_client() -> Client:
    if _default is None:
        raise ControlPlaneError(
            "no default client: call controlplane.client.configure(Client(...)) first"
        )
    return _default


def _lazy(build: Callable[[Client], Callable[[Callable[..., Any]], Any]]) -> Any:
    """A decorator whose wrapper is built by ``build(default_client())`` on first call
    (again whenever ``configure()`` changed the default client)."""

    def decorator(function: Callable[..., Any]) -> Any:
        wrapped: dict[int, Any] = {}

        def resolve() -> Any:
            client = default_client()
            key = id(client)
            if key not in wrapped:
                wrapped.clear()
                wrapped[key] = build(client)(function)
            return wrapped[key]

        proxy: Any
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def async_proxy(*args: Any, **kwargs: Any) -> Any:
                return await resolve()(*args, **kwargs)

            proxy = async_proxy
        else:

            @functools.wraps(function)
            def sync_proxy(*args: Any, **kwargs: Any) -> Any:
                return resolve()(*args, **kwargs)

            proxy = sync_proxy

        def invalidate(*args: Any, **kwargs: Any) -> None:
            resolve().invalidate(*args, **kwargs)

        async def ainvalidate(*args: Any, **kwargs: Any) -> None:
            await resolve().ainvalidate(*args, **kwargs)

        proxy.invalidate = invalidate
        proxy.ainvalidate = ainvalidate
        return proxy

    return decorator


def with_circuit_breaker(
    name: str, **defaults: Unpack[BreakerOptions]
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Protect the function with the default client's breaker ``name``."""
    return cast(
        Callable[[Callable[P, R]], Callable[P, R]],
        _lazy(lambda client: client.breaker(name, **defaults)),
    )


def rate_limited(
    name: str,
    key: Callable[..., object] | None = None,
    **defaults: Unpack[RateLimitedOptions],
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Check each call against the default client's limiter ``name``."""
    return cast(
        Callable[[Callable[P, R]], Callable[P, R]],
        _lazy(lambda client: client.rate_limited(name, key, **defaults)),
    )


def cached(
    name: str,
    key: Callable[..., object] | None = None,
    **defaults: Unpack[CacheOptions],
) -> Callable[[Callable[P, R]], CachedFunction[P, R]]:
    """Cache the function's results under the default client's cache policy ``name``.

    The decorated function has ``invalidate(*args, **kwargs)`` and
    ``await ainvalidate(*args, **kwargs)`` to drop the entry of one call everywhere.
    """
    return cast(
        Callable[[Callable[P, R]], CachedFunction[P, R]],
        _lazy(lambda client: client.cached(name, key, **defaults)),
    )
