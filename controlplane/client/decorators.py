"""Module-level decorators that use the default client set by ``configure()``.

They resolve the client when the decorated function is first called, so they
can decorate functions at import time, before the application configures.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from controlplane.client.client import Client
from controlplane.client.errors import ControlPlaneError

F = TypeVar("F", bound=Callable[..., Any])
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


def _lazy(build: Callable[[Client], Callable[[F], F]]) -> Callable[[F], F]:
    def decorator(function: F) -> F:
        wrapped: dict[int, Callable[..., Any]] = {}

        def resolve() -> Callable[..., Any]:
            client = default_client()
            key = id(client)
            if key not in wrapped:
                wrapped.clear()
                wrapped[key] = build(client)(function)
            return wrapped[key]

        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def async_proxy(*args: Any, **kwargs: Any) -> Any:
                return await resolve()(*args, **kwargs)

            proxy: Any = async_proxy
        else:

            @functools.wraps(function)
            def sync_proxy(*args: Any, **kwargs: Any) -> Any:
                return resolve()(*args, **kwargs)

            proxy = sync_proxy
        proxy.invalidate = lambda *a, **k: resolve().invalidate(*a, **k)  # type: ignore[attr-defined]
        return proxy  # type: ignore[no-any-return]

    return decorator


def with_circuit_breaker(name: str, **defaults: Any) -> Callable[[F], F]:
    """Protect the function with the default client's breaker ``name``."""
    return _lazy(lambda client: client.breaker(name, **defaults))


def rate_limited(
    name: str, key: Callable[..., Any] | None = None, **defaults: Any
) -> Callable[[F], F]:
    """Check each call against the default client's limiter ``name``."""
    return _lazy(lambda client: client.rate_limited(name, key=key, **defaults))


def cached(name: str, key: Callable[..., Any] | None = None, **defaults: Any) -> Callable[[F], F]:
    """Cache the function's results under the default client's cache policy ``name``."""
    return _lazy(lambda client: client.cached(name, key=key, **defaults))
