"""Rate limits for Django views: a middleware, a view decorator and a system check.

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
seconds, rounded up) and the ``RateLimit-Policy``, ``RateLimit`` and legacy
``RateLimit-Limit``/``-Remaining``/``-Reset`` headers (``controlplane.client.http``);
admitted responses carry them too. ``RateLimitExceeded`` and ``CircuitOpenError``
raised by a view become a 429 and a 503 with ``Retry-After``.

Settings:

``CONTROLPLANE_RATE_LIMITS``
    Which limiters the middleware applies. A list of limiter names applies each
    to every request; a mapping of ``"[METHODS ]PREFIX"`` to a name or a list of
    names applies them to requests whose path starts with the prefix and, when
    methods are given, whose method is one of them (every matching entry
    applies; ``""`` matches everything)::

        CONTROLPLANE_RATE_LIMITS = {"/api/": ["api"], "POST /login/": "login"}

``CONTROLPLANE_RATE_LIMIT_DEFAULTS``
    Code defaults per limiter name, used until the control plane manages it::

        CONTROLPLANE_RATE_LIMIT_DEFAULTS = {"api": {"limit": 100, "period": 60, "key": "ip"}}

``CONTROLPLANE_RATE_LIMITED_VIEW``, ``CONTROLPLANE_CIRCUIT_OPEN_VIEW``
    Dotted paths of callables ``(request, exception) -> HttpResponse`` that
    answer a rejected request (``RateLimitExceeded``) and an open circuit
    (``CircuitOpenError``); the headers above are added unless the view set them.

``CONTROLPLANE_TRUSTED_PROXIES``
    Number of trusted reverse proxies that append the client address to
    ``X-Forwarded-For`` (default ``0``: use ``REMOTE_ADDR``).

The system check ``controlplane.W001``-``W004`` (registered when this module is
imported, or by adding ``controlplane.client.django_app`` to ``INSTALLED_APPS``)
warns about limiters the control plane does not manage and an environment that
was never published.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.urls import Resolver404, resolve
from django.utils.module_loading import import_string

from controlplane.client.decorators import default_client
from controlplane.client.errors import CircuitOpenError, ControlPlaneError, RateLimitExceeded
from controlplane.client.health import shown_url
from controlplane.client.http import (
    CIRCUIT_OPEN_BODY,
    RATE_LIMITED_BODY,
    TEXT_PLAIN,
    Check,
    RuleError,
    Rules,
    exceeded_check,
    forwarded_client,
    most_restrictive,
    once,
    rate_limit_headers,
    rejection_headers,
    retry_after,
    subject_for,
)
from controlplane.client.limiter import RateLimiter
from controlplane.protocol.keys import policy_field
from controlplane.protocol.schema import RATE_LIMIT, PolicyError, validate_spec

if TYPE_CHECKING:
    from controlplane.client.client import Client

logger = logging.getLogger("controlplane.client")

V = TypeVar("V", bound=Callable[..., Any])
KeyFunction = Callable[[HttpRequest], Any]
ErrorView = Callable[[HttpRequest, Exception], HttpResponseBase]

RULES_SETTING = "CONTROLPLANE_RATE_LIMITS"
DEFAULTS_SETTING = "CONTROLPLANE_RATE_LIMIT_DEFAULTS"
RATE_LIMITED_VIEW = "CONTROLPLANE_RATE_LIMITED_VIEW"
CIRCUIT_OPEN_VIEW = "CONTROLPLANE_CIRCUIT_OPEN_VIEW"

_custom_keys: dict[str, KeyFunction] = {}


def register_key(name: str, function: KeyFunction) -> None:
    """Register ``function(request)`` as the custom key ``name`` (policy ``key: custom``).

    It may be an ``async def`` function; it is then awaited in async views and
    middleware, and unavailable (the IP is used) in sync ones.
    """
    _custom_keys[name] = function


def unregister_key(name: str) -> None:
    _custom_keys.pop(name, None)


# Settings


def rules_setting() -> Rules:
    """``CONTROLPLANE_RATE_LIMITS`` parsed; ImproperlyConfigured names a bad entry."""
    try:
        return Rules(getattr(settings, RULES_SETTING, None), RULES_SETTING)
    except RuleError as exc:
        raise ImproperlyConfigured(str(exc)) from None


def defaults_setting() -> dict[str, dict[str, Any]]:
    """``CONTROLPLANE_RATE_LIMIT_DEFAULTS``, each limiter's defaults validated."""
    value = getattr(settings, DEFAULTS_SETTING, None) or {}
    if not isinstance(value, Mapping):
        raise ImproperlyConfigured(
            f"{DEFAULTS_SETTING}: give a mapping of limiter names to their code defaults"
        )
    defaults: dict[str, dict[str, Any]] = {}
    for name, spec in value.items():
        if not isinstance(name, str) or not isinstance(spec, Mapping):
            raise ImproperlyConfigured(
                f"{DEFAULTS_SETTING}: the entry {name!r} must map a limiter name to a dict "
                'of policy fields, such as {"limit": 100, "period": 60}'
            )
        try:
            validate_spec(RATE_LIMIT, spec)
        except PolicyError as exc:
            raise ImproperlyConfigured(f"{DEFAULTS_SETTING}[{name!r}]: {exc}") from None
        defaults[name] = dict(spec)
    return defaults


@functools.cache
def _import_view(setting: str, path: str) -> ErrorView:
    try:
        view = import_string(path)
    except ImportError as exc:
        raise ImproperlyConfigured(f"{setting}: cannot import {path!r}: {exc}") from None
    if not callable(view):
        raise ImproperlyConfigured(f"{setting}: {path!r} is not callable")
    return view  # type: ignore[no-any-return]


def _view(setting: str) -> ErrorView | None:
    path = getattr(settings, setting, None)
    if path is None:
        return None
    if not isinstance(path, str):
        raise ImproperlyConfigured(f"{setting}: give the dotted path of a view, as a string")
    return _import_view(setting, path)


# Subjects


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
        return str(match.view_name)
    return request.path_info


def _user_pk(user: Any) -> Any:
    if user is not None and getattr(user, "is_authenticated", False):
        return user.pk
    return None


def _subject(key: str, request: HttpRequest, user_pk: Any, custom: Any) -> str:
    return subject_for(
        key,
        ip=client_ip(request),
        user=user_pk,
        endpoint=_endpoint(request) if key == "endpoint" else "",
        custom=custom,
    )


def _custom_function(limiter: RateLimiter) -> tuple[str, KeyFunction | None]:
    name = limiter.settings.custom_key
    function = _custom_keys.get(name)
    if function is None:
        once.log(
            f"custom-key:{limiter.name}:{name}",
            logging.ERROR,
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
                once.log(
                    f"async-key:{name}",
                    logging.ERROR,
                    "Custom key %r is async; keying by IP in sync code",
                    name,
                )
            elif value is not None:
                custom = f"{name}:{value}"
    return _subject(key, request, user_pk, custom)


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
    return _subject(key, request, user_pk, custom)


def _close(value: Any) -> None:
    close = getattr(value, "close", None)
    if close is not None:
        close()


# Responses


def add_headers(response: HttpResponseBase, checks: Sequence[Check]) -> None:
    """Set the ``RateLimit*`` headers of ``checks``, merged with any the response has."""
    for name, value in rate_limit_headers(checks, response.headers.get).items():
        response.headers[name] = value


def rate_limited(
    request: HttpRequest, exception: RateLimitExceeded, checks: Sequence[Check]
) -> HttpResponseBase:
    """The 429 response: ``CONTROLPLANE_RATE_LIMITED_VIEW``'s, else plain text."""
    view = _view(RATE_LIMITED_VIEW)
    response = (
        view(request, exception)
        if view is not None
        else HttpResponse(RATE_LIMITED_BODY, status=429, content_type=TEXT_PLAIN)
    )
    for name, value in rejection_headers(checks).items():
        response.headers.setdefault(name, value)
    return response


def circuit_open(request: HttpRequest, exception: CircuitOpenError) -> HttpResponseBase:
    """The 503 response: ``CONTROLPLANE_CIRCUIT_OPEN_VIEW``'s, else plain text."""
    view = _view(CIRCUIT_OPEN_VIEW)
    response = (
        view(request, exception)
        if view is not None
        else HttpResponse(CIRCUIT_OPEN_BODY, status=503, content_type=TEXT_PLAIN)
    )
    if exception.retry_after is not None:
        response.headers.setdefault("Retry-After", retry_after(exception.retry_after))
    return response


def too_many_requests(request: HttpRequest, checks: Sequence[Check]) -> HttpResponseBase:
    """The 429 response of a request the limiters of ``checks`` rejected."""
    worst = most_restrictive(checks)
    return rate_limited(request, RateLimitExceeded(worst.name, worst.decision), checks)


def exception_response(request: HttpRequest, exception: Exception) -> HttpResponseBase | None:
    """The response to a library exception raised by a view, or None for any other."""
    if isinstance(exception, RateLimitExceeded):
        return rate_limited(request, exception, [exceeded_check(_client_or_none(), exception)])
    if isinstance(exception, CircuitOpenError):
        return circuit_open(request, exception)
    return None


def _rejected(checks: Sequence[Check]) -> bool:
    return bool(checks) and not checks[-1].decision.allowed


def _check(limiters: Sequence[RateLimiter], request: HttpRequest) -> list[Check]:
    checks = []
    for limiter in limiters:
        check = Check.of(limiter, limiter.hit(request_subject(limiter, request)))
        checks.append(check)
        if not check.decision.allowed:
            break  # later limiters do not spend quota on a rejected request
    return checks


async def _acheck(limiters: Sequence[RateLimiter], request: HttpRequest) -> list[Check]:
    checks = []
    for limiter in limiters:
        check = Check.of(limiter, await limiter.ahit(await arequest_subject(limiter, request)))
        checks.append(check)
        if not check.decision.allowed:
            break
    return checks


def _client_or_none() -> Client | None:
    try:
        return default_client()
    except ControlPlaneError as exc:
        once.log("no-client", logging.ERROR, "Rate limits not applied: %s", exc)
        return None


# Middleware


class RateLimitMiddleware:
    """Apply the limiters of ``CONTROLPLANE_RATE_LIMITS`` to every matching request,
    and answer ``RateLimitExceeded`` and ``CircuitOpenError`` raised by views."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.rules = rules_setting()
        self.defaults = defaults_setting()
        _view(RATE_LIMITED_VIEW)  # a bad dotted path fails at start, not at the first 429
        _view(CIRCUIT_OPEN_VIEW)
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def names_for(self, method: str, path: str) -> list[str]:
        """The limiter names that apply to a request, each once, in settings order."""
        return self.rules.names_for(method, path)

    def _limiters(self, request: HttpRequest) -> list[RateLimiter] | None:
        names = self.names_for(request.method or "GET", request.path_info)
        client = _client_or_none() if names else None
        if client is None:
            return None
        return [client.limiter(name, **self.defaults.get(name, {})) for name in names]

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        limiters = self._limiters(request)
        if limiters is None:
            return self.get_response(request)
        checks = _check(limiters, request)
        if _rejected(checks):
            return too_many_requests(request, checks)
        response = self.get_response(request)
        add_headers(response, checks)
        return response

    async def __acall__(self, request: HttpRequest) -> Any:
        get_response: Callable[[HttpRequest], Awaitable[Any]] = self.get_response
        limiters = self._limiters(request)
        if limiters is None:
            return await get_response(request)
        checks = await _acheck(limiters, request)
        if _rejected(checks):
            return too_many_requests(request, checks)
        response = await get_response(request)
        add_headers(response, checks)
        return response

    def process_exception(
        self, request: HttpRequest, exception: Exception
    ) -> HttpResponseBase | None:
        return exception_response(request, exception)


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
                check = Check.of(limiter, await limiter.ahit(subject))
                if not check.decision.allowed:
                    return too_many_requests(request, [check])
                response = await view(request, *args, **kwargs)
                add_headers(response, [check])
                return response

            return async_view  # type: ignore[return-value]

        @functools.wraps(view)
        def sync_view(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            limiter = limiter_of()
            if limiter is None:
                return view(request, *args, **kwargs)
            subject = key(request) if key is not None else request_subject(limiter, request)
            check = Check.of(limiter, limiter.hit(subject))
            if not check.decision.allowed:
                return too_many_requests(request, [check])
            response = view(request, *args, **kwargs)
            add_headers(response, [check])
            return response

        return sync_view  # type: ignore[return-value]

    return decorator


# System check


@checks.register("controlplane")
def check_rate_limits(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Warn about limiters of the settings the control plane does not manage.

    Reads the environment's policies from Redis once (with the client's short
    timeouts): a Redis server that is down gives a warning, never a hang.
    """
    try:
        names = dict.fromkeys(rules_setting().all_names()) | dict.fromkeys(defaults_setting())
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="controlplane.E001")]
    if not names:
        return []
    try:
        client = default_client()
    except ControlPlaneError:
        return [
            checks.Warning(
                f"{RULES_SETTING} names limiters but no control-plane client is configured: "
                "no rate limit will be applied.",
                hint="Call controlplane.client.configure(Client(...)) in your settings module.",
                id="controlplane.W001",
            )
        ]
    try:
        store = client.read_snapshot()
    except Exception as exc:
        return [
            checks.Warning(
                f"Could not check the rate limits of environment {client.environment!r}: "
                f"Redis at {shown_url(client.redis_url)} did not answer ({exc}).",
                id="controlplane.W002",
            )
        ]
    if store.meta is None:
        known = ", ".join(map(repr, client.published_environments())) or "none"
        return [
            checks.Warning(
                f"The control plane never published environment {client.environment!r} "
                "(no metadata in Redis): every limiter runs on its code defaults. "
                f"Environments published under key prefix {client.keys.prefix!r}: {known}.",
                hint="Check the environment's name and the Redis URL and key prefix.",
                id="controlplane.W003",
            )
        ]
    defaults = defaults_setting()
    return [
        checks.Warning(
            f"Rate limit {name!r} is not managed by the control plane in environment "
            f"{client.environment!r}: it enforces "
            + (
                f"the code defaults of {DEFAULTS_SETTING}"
                if name in defaults
                else "the schema defaults"
            )
            + ".",
            hint="Create the policy in the control plane, or give code defaults in "
            f"{DEFAULTS_SETTING}.",
            id="controlplane.W004",
        )
        for name in names
        if policy_field(RATE_LIMIT, name) not in store.policies
    ]


__all__ = [
    "RateLimitMiddleware",
    "add_headers",
    "arequest_subject",
    "check_rate_limits",
    "circuit_open",
    "client_ip",
    "exception_response",
    "forwarded_client",
    "rate_limit",
    "rate_limited",
    "register_key",
    "request_subject",
    "too_many_requests",
    "unregister_key",
]
