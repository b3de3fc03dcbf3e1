"""Rate limits for Django views: a middleware and a view decorator.

The only module of the client library that imports Django. Both use the
default client (``controlplane.client.configure(Client(...))``) and derive the
subject of each request from the limiter policy's ``key`` field:

* ``global``: one quota shared by every request (subject ``global``);
* ``user``: the authenticated user's primary key (``user:<pk>``), else the IP;
* ``ip``: the client address (``ip:<address>``), from ``REMOTE_ADDR``; behind
  proxies set ``CONTROLPLANE_TRUSTED_PROXIES`` to how many of them append to
  ``X-Forwarded-For`` (never trust the header without such a proxy: clients
  can write anything in it);
* ``endpoint``: the URL pattern's view name, else the path (``endpoint:<name>``);
* ``custom``: the function registered with :func:`register_key` under the
  policy's ``custom_key`` (``<custom_key>:<value>``); unregistered or
  returning ``None``, the IP is used instead.

A rejected request gets ``429 Too Many Requests`` with ``Retry-After`` (whole
seconds, rounded up) and the ``RateLimit-Limit``, ``RateLimit-Remaining`` and
``RateLimit-Reset`` headers; admitted responses carry the ``RateLimit-*``
headers too (of the most restrictive limiter when several apply).

Settings:

``CONTROLPLANE_RATE_LIMITS``
    Which limiters the middleware applies. A list of limiter names applies each
    to every request; a mapping of URL path prefixes to a name or a list of
    names applies them to requests whose path starts with the prefix (every
    matching prefix applies; ``""`` matches everything)::

        CONTROLPLANE_RATE_LIMITS = {"/api/": ["api"], "/login/": "login"}

``CONTROLPLANE_TRUSTED_PROXIES``
    Number of trusted reverse proxies that append the client address to
    ``X-Forwarded-For`` (default ``0``: use ``REMOTE_ADDR``).
"""

from __future__ import annotations

import functools
import inspect
import ipaddress
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.urls import Resolver404, resolve

from controlplane.client.decorators import default_client
from controlplane.client.errors import ControlPlaneError
from controlplane.client.limiter import GLOBAL_SUBJECT, Decision, RateLimiter

if TYPE_CHECKING:
    from controlplane.client.client import Client

logger = logging.getLogger("controlplane.client")

V = TypeVar("V", bound=Callable[..., Any])
KeyFunction = Callable[[HttpRequest], Any]

_custom_keys: dict[str, KeyFunction] = {}


def register_key(name: str, function: KeyFunction) -> None:
    """Register ``function(request)`` as the custom key ``name`` (policy ``key: custom``).

    It may be an ``async def`` function; it is then awaited in async views and
    middleware, and unavailable (the IP is used) in sync ones.
    """
    _custom_keys[name] = function


def unregister_key(name: str) -> None:
    _custom_keys.pop(name, None)


# Subjects


def forwarded_client(forwarded_for: str, trusted: int) -> str | None:
    """The client address in an ``X-Forwarded-For`` value written by ``trusted`` proxies.

    Each proxy appends the address it received from, so only the last ``trusted``
    entries are theirs; anything left of them came from the client and may be forged.
    An entry that is not an IP address (a proxy misconfigured, or a client's claim
    where fewer proxies than trusted wrote the header) gives None: the caller falls
    back to the connection's own peer address rather than key limits or the audit
    log on arbitrary text.
    """
    if trusted <= 0:
        return None
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    if not hops:
        return None
    hop = hops[-min(trusted, len(hops))]
    try:
        return str(ipaddress.ip_address(hop))
    except ValueError:
        return None


def client_ip(request: HttpRequest) -> str:
    """Return the client address, trusting ``CONTROLPLANE_TRUSTED_PROXIES`` proxies."""
    trusted = int(getattr(settings, "CONTROLPLANE_TRUSTED_PROXIES", 0) or 0)
    forwarded = forwarded_client(str(request.META.get("HTTP_X_FORWARDED_FOR", "")), trusted)
    return forwarded or str(request.META.get("REMOTE_ADDR") or "unknown")


def _endpoint(request: HttpRequest) -> str:
    match = getattr(request, "resolver_match", None)
    if match is None:
        try:
            match = resolve(request.path_info)
        except Resolver404:
            match = None
    if match is not None and match.view_name:
        return f"endpoint:{match.view_name}"
    return f"endpoint:{request.path_info}"


def _user_pk(user: Any) -> Any:
    if user is not None and getattr(user, "is_authenticated", False):
        return user.pk
    return None


def _subject_of(key: str, request: HttpRequest, user_pk: Any, custom: Any) -> str:
    if key == "global":
        return GLOBAL_SUBJECT
    if key == "user" and user_pk is not None:
        return f"user:{user_pk}"
    if key == "endpoint":
        return _endpoint(request)
    if key == "custom" and custom is not None:
        return str(custom)
    return f"ip:{client_ip(request)}"


def _custom_function(limiter: RateLimiter) -> tuple[str, KeyFunction | None]:
    name = limiter.settings.custom_key
    function = _custom_keys.get(name)
    if function is None:
        logger.error(
            "Rate limit %r uses the custom key %r, which is not registered; keying by IP",
            limiter.name,
            name,
        )
    return name, function


def request_subject(limiter: RateLimiter, request: HttpRequest) -> str:
    """Return the subject of ``request`` under ``limiter``'s ``key`` setting (sync code)."""
    key = limiter.settings.key
    user_pk = _user_pk(getattr(request, "user", None)) if key == "user" else None
    custom: Any = None
    if key == "custom":
        name, function = _custom_function(limiter)
        if function is not None:
            value = function(request)
            if inspect.isawaitable(value):
                _close(value)
                logger.error("Custom key %r is async; keying by IP in sync code", name)
            elif value is not None:
                custom = f"{name}:{value}"
    return _subject_of(key, request, user_pk, custom)


async def arequest_subject(limiter: RateLimiter, request: HttpRequest) -> str:
    """Return the subject of ``request`` under ``limiter``'s ``key`` setting (async code)."""
    key = limiter.settings.key
    user_pk = None
    if key == "user":
        auser = getattr(request, "auser", None)
        user_pk = _user_pk(await auser() if auser is not None else getattr(request, "user", None))
    custom: Any = None
    if key == "custom":
        name, function = _custom_function(limiter)
        if function is not None:
            value = function(request)
            if inspect.isawaitable(value):
                value = await value
            if value is not None:
                custom = f"{name}:{value}"
    return _subject_of(key, request, user_pk, custom)


def _close(value: Any) -> None:
    close = getattr(value, "close", None)
    if close is not None:
        close()


# Responses


def _seconds(value: float) -> str:
    return str(max(0, math.ceil(value)))


def add_headers(response: HttpResponseBase, decision: Decision) -> None:
    """Set the ``RateLimit-*`` headers, unless a more restrictive decision already set them."""
    current = response.headers.get("RateLimit-Remaining")
    if current is not None and current.isdigit() and int(current) < decision.remaining:
        return
    response.headers["RateLimit-Limit"] = str(decision.limit)
    response.headers["RateLimit-Remaining"] = str(decision.remaining)
    response.headers["RateLimit-Reset"] = _seconds(decision.reset_after)


def too_many_requests(decision: Decision) -> HttpResponse:
    """The 429 response of a rejected request."""
    response = HttpResponse(
        "Too Many Requests\n", status=429, content_type="text/plain; charset=utf-8"
    )
    response.headers["Retry-After"] = str(max(1, math.ceil(decision.retry_after)))
    add_headers(response, decision)
    return response


def _most_restrictive(decisions: Sequence[Decision]) -> Decision:
    rejected = [d for d in decisions if not d.allowed]
    if rejected:
        return max(rejected, key=lambda d: d.retry_after)
    return min(decisions, key=lambda d: d.remaining)


def _limiters(client: Client, names: Iterable[str]) -> list[RateLimiter]:
    return [client.limiter(name) for name in names]


def _check(limiters: Sequence[RateLimiter], request: HttpRequest) -> Decision | None:
    decisions = []
    for limiter in limiters:
        decision = limiter.hit(request_subject(limiter, request))
        decisions.append(decision)
        if not decision.allowed:
            break  # later limiters do not spend quota on a rejected request
    return _most_restrictive(decisions) if decisions else None


async def _acheck(limiters: Sequence[RateLimiter], request: HttpRequest) -> Decision | None:
    decisions = []
    for limiter in limiters:
        decision = await limiter.ahit(await arequest_subject(limiter, request))
        decisions.append(decision)
        if not decision.allowed:
            break
    return _most_restrictive(decisions) if decisions else None


def _client_or_none() -> Client | None:
    try:
        return default_client()
    except ControlPlaneError as exc:
        logger.error("Rate limits not applied: %s", exc)
        return None


# Middleware


def _load_rules(value: Any) -> list[tuple[str, tuple[str, ...]]]:
    if value is None:
        return []
    if isinstance(value, str):
        return [("", (value,))]
    if isinstance(value, Mapping):
        rules = []
        for prefix, names in value.items():
            if not isinstance(prefix, str):
                raise ImproperlyConfigured("CONTROLPLANE_RATE_LIMITS: prefixes must be strings")
            rules.append((prefix, _names(names)))
        return rules
    return [("", _names(value))]


def _names(value: Any) -> tuple[str, ...]:
    names = (value,) if isinstance(value, str) else tuple(value)
    if not all(isinstance(name, str) and name for name in names):
        raise ImproperlyConfigured(
            "CONTROLPLANE_RATE_LIMITS: give limiter names as strings, or lists of them"
        )
    return names


class RateLimitMiddleware:
    """Apply the limiters of ``CONTROLPLANE_RATE_LIMITS`` to every matching request."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.rules = _load_rules(getattr(settings, "CONTROLPLANE_RATE_LIMITS", None))
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def names_for(self, path: str) -> list[str]:
        """The limiter names that apply to ``path``, each once, in settings order."""
        names: dict[str, None] = {}
        for prefix, rule_names in self.rules:
            if path.startswith(prefix):
                names.update(dict.fromkeys(rule_names))
        return list(names)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        names = self.names_for(request.path_info)
        client = _client_or_none() if names else None
        if client is None:
            return self.get_response(request)
        decision = _check(_limiters(client, names), request)
        if decision is not None and not decision.allowed:
            return too_many_requests(decision)
        response = self.get_response(request)
        if decision is not None:
            add_headers(response, decision)
        return response

    async def __acall__(self, request: HttpRequest) -> Any:
        names = self.names_for(request.path_info)
        client = _client_or_none() if names else None
        get_response: Callable[[HttpRequest], Awaitable[Any]] = self.get_response
        if client is None:
            return await get_response(request)
        decision = await _acheck(_limiters(client, names), request)
        if decision is not None and not decision.allowed:
            return too_many_requests(decision)
        response = await get_response(request)
        if decision is not None:
            add_headers(response, decision)
        return response


# View decorator


def rate_limit(name: str, key: KeyFunction | None = None, **defaults: Any) -> Callable[[V], V]:
    """Limit a function view (sync or async) with the limiter ``name``.

    The subject comes from the policy's ``key`` setting, or from
    ``key(request)`` when given. ``defaults`` are the limiter's code defaults.
    """

    def limiter_of() -> RateLimiter | None:
        client = _client_or_none()
        return None if client is None else client.limiter(name, **defaults)

    def decorator(view: V) -> V:
        if iscoroutinefunction(view):

            @functools.wraps(view)
            async def async_view(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                limiter = limiter_of()
                if limiter is None:
                    return await view(request, *args, **kwargs)
                if key is not None:
                    subject = key(request)
                    if inspect.isawaitable(subject):
                        subject = await subject
                else:
                    subject = await arequest_subject(limiter, request)
                decision = await limiter.ahit(subject)
                if not decision.allowed:
                    return too_many_requests(decision)
                response = await view(request, *args, **kwargs)
                add_headers(response, decision)
                return response

            return async_view  # type: ignore[return-value]

        @functools.wraps(view)
        def sync_view(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            limiter = limiter_of()
            if limiter is None:
                return view(request, *args, **kwargs)
            subject = key(request) if key is not None else request_subject(limiter, request)
            decision = limiter.hit(subject)
            if not decision.allowed:
                return too_many_requests(decision)
            response = view(request, *args, **kwargs)
            add_headers(response, decision)
            return response

        return sync_view  # type: ignore[return-value]

    return decorator


__all__ = [
    "RateLimitMiddleware",
    "add_headers",
    "arequest_subject",
    "client_ip",
    "rate_limit",
    "register_key",
    "request_subject",
    "too_many_requests",
    "unregister_key",
]
