"""Rate limits for ASGI applications (Starlette, FastAPI, any ASGI 3 app).

A pure ASGI middleware: nothing here imports a framework. It applies the same
rules and headers as the Django middleware (``controlplane.client.http``)::

    from controlplane.client.asgi import RateLimitMiddleware

    app = Starlette(routes=..., lifespan=lifespan)
    app.add_middleware(
        RateLimitMiddleware, rules={"/api/": "api", "POST /login/": "login"}
    )

Each limiter's subject follows its policy's ``key``: ``global``; ``user``, the
value of ``user(scope)`` or else of ``scope["user"]`` when authenticated (as
Starlette's ``AuthenticationMiddleware`` sets it), falling back to the IP;
``ip``, the peer address, or the entry ``trusted_proxies`` proxies appended to
``X-Forwarded-For``; ``endpoint``, the matching route's path (``/items/{id}``)
else the request path; ``custom``, ``keys[custom_key](scope)``. A rejected
request gets ``429`` with ``Retry-After``; ``RateLimitExceeded`` and
``CircuitOpenError`` raised by the application before it started its response
become a 429 and a 503.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from controlplane.client.decorators import default_client
from controlplane.client.errors import CircuitOpenError, ControlPlaneError, RateLimitExceeded
from controlplane.client.http import (
    CIRCUIT_OPEN_BODY,
    RATE_LIMITED_BODY,
    TEXT_PLAIN,
    Check,
    RuleError,
    Rules,
    exceeded_check,
    forwarded_client,
    once,
    rate_limit_headers,
    rejection_headers,
    retry_after,
    subject_for,
)
from controlplane.protocol.schema import RATE_LIMIT, PolicyError, validate_spec

if TYPE_CHECKING:
    from controlplane.client.client import Client
    from controlplane.client.limiter import RateLimiter

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
ScopeFunction = Callable[[Scope], Any]


def client_ip(scope: Scope, trusted_proxies: int = 0) -> str:
    """The client address of ``scope``, trusting ``trusted_proxies`` proxies."""
    if trusted_proxies > 0:
        forwarded = b",".join(
            value for name, value in scope.get("headers", ()) if name == b"x-forwarded-for"
        )
        address = forwarded_client(forwarded.decode("latin-1"), trusted_proxies)
        if address is not None:
            return address
    peer = scope.get("client")
    return str(peer[0]) if peer else "unknown"


def route_path(scope: Scope) -> str:
    """The path template of the route that will serve ``scope`` (Starlette), else its path."""
    for route in getattr(scope.get("app"), "routes", None) or ():
        matches = getattr(route, "matches", None)
        if matches is None:
            continue
        try:
            match, _ = matches(scope)
        except Exception:  # a route type that cannot match this scope
            continue
        if getattr(match, "name", "") == "FULL":
            return str(getattr(route, "path", "") or scope["path"])
    return str(scope.get("path", ""))


def scope_user(scope: Scope) -> Any:
    """The identifier of ``scope["user"]`` when authenticated, else None."""
    user = scope.get("user")
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    for attribute in ("identity", "pk", "id", "username"):
        try:
            value = getattr(user, attribute)
        except Exception:  # Starlette's BaseUser.identity raises NotImplementedError
            continue
        if value is not None:
            return value
    return None


class RateLimitMiddleware:
    """Apply rate limits to the HTTP requests of an ASGI application.

    ``rules`` takes the forms of ``CONTROLPLANE_RATE_LIMITS`` (see
    :class:`controlplane.client.http.Rules`); ``defaults`` the code defaults of
    each limiter name. ``client`` is the client to use, else the default one
    (``configure()``) at each request.
    """

    def __init__(
        self,
        app: ASGIApp,
        rules: Any,
        *,
        client: Client | None = None,
        defaults: Mapping[str, Mapping[str, Any]] | None = None,
        trusted_proxies: int = 0,
        user: ScopeFunction | None = None,
        keys: Mapping[str, ScopeFunction] | None = None,
    ) -> None:
        self.app = app
        self.rules = rules if isinstance(rules, Rules) else Rules(rules, "rules")
        self.client = client
        self.defaults = {name: dict(spec) for name, spec in (defaults or {}).items()}
        for name, spec in self.defaults.items():
            try:
                validate_spec(RATE_LIMIT, spec)
            except PolicyError as exc:
                raise RuleError(f"defaults[{name!r}]: {exc}") from None
        self.trusted_proxies = trusted_proxies
        self.user = user or scope_user
        self.keys = dict(keys or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limiters = self._limiters(scope)
        checks = await self._check(limiters, scope) if limiters else []
        if checks and not checks[-1].decision.allowed:
            await _respond(send, 429, RATE_LIMITED_BODY, rejection_headers(checks))
            return
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if checks:
                    _add_headers(message, checks)
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except (RateLimitExceeded, CircuitOpenError) as exc:
            if started:
                raise
            await self._respond_to(exc, send)

    def _limiters(self, scope: Scope) -> list[RateLimiter]:
        names = self.rules.names_for(scope.get("method", "GET"), scope.get("path", ""))
        if not names:
            return []
        client = self._client()
        if client is None:
            return []
        return [client.limiter(name, **self.defaults.get(name, {})) for name in names]

    def _client(self) -> Client | None:
        if self.client is not None:
            return self.client
        try:
            return default_client()
        except ControlPlaneError as exc:
            once.log("no-client", logging.ERROR, "Rate limits not applied: %s", exc)
            return None

    async def _check(self, limiters: Sequence[RateLimiter], scope: Scope) -> list[Check]:
        checks = []
        for limiter in limiters:
            subject = await self.subject(limiter, scope)
            check = Check.of(limiter, await limiter.ahit(subject))
            checks.append(check)
            if not check.decision.allowed:
                break  # later limiters do not spend quota on a rejected request
        return checks

    async def subject(self, limiter: RateLimiter, scope: Scope) -> str:
        """The subject of ``scope`` under ``limiter``'s ``key`` setting."""
        settings = limiter.settings
        key = settings.key
        user = await _value(self.user(scope)) if key == "user" else None
        custom: Any = None
        if key == "custom":
            function = self.keys.get(settings.custom_key)
            if function is None:
                once.log(
                    f"custom-key:{limiter.name}:{settings.custom_key}",
                    logging.ERROR,
                    "Rate limit %r uses the custom key %r, which is not in keys=; keying by IP",
                    limiter.name,
                    settings.custom_key,
                )
            else:
                value = await _value(function(scope))
                if value is not None:
                    custom = f"{settings.custom_key}:{value}"
        return subject_for(
            key,
            ip=client_ip(scope, self.trusted_proxies),
            user=user,
            endpoint=route_path(scope) if key == "endpoint" else "",
            custom=custom,
        )

    async def _respond_to(self, exc: RateLimitExceeded | CircuitOpenError, send: Send) -> None:
        if isinstance(exc, RateLimitExceeded):
            check = exceeded_check(self._client(), exc)
            await _respond(send, 429, RATE_LIMITED_BODY, rejection_headers([check]))
            return
        headers = {} if exc.retry_after is None else {"Retry-After": retry_after(exc.retry_after)}
        await _respond(send, 503, CIRCUIT_OPEN_BODY, headers)


async def _value(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _add_headers(message: Message, checks: Sequence[Check]) -> None:
    headers = list(message.get("headers", ()))
    current = {name.decode("latin-1").lower(): value for name, value in headers}

    def get(name: str) -> str | None:
        value = current.get(name.lower())
        return None if value is None else bytes(value).decode("latin-1")

    added = rate_limit_headers(checks, get)
    lowered = {name.lower() for name in added}
    headers = [(n, v) for n, v in headers if n.decode("latin-1").lower() not in lowered]
    headers += [(name.lower().encode(), value.encode()) for name, value in added.items()]
    message["headers"] = headers


async def _respond(send: Send, status: int, body: bytes, headers: Mapping[str, str]) -> None:
    raw = [
        (b"content-type", TEXT_PLAIN.encode()),
        (b"content-length", str(len(body)).encode()),
        *((name.lower().encode(), value.encode()) for name, value in headers.items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


__all__ = ["RateLimitMiddleware", "client_ip", "route_path", "scope_user"]
