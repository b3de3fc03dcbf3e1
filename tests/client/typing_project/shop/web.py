"""The Django integration's public names."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseBase

from controlplane.client import CircuitOpenError, Client, ControlPlaneError
from controlplane.client.asgi import RateLimitMiddleware as AsgiRateLimitMiddleware
from controlplane.client.django import (
    RateLimitMiddleware,
    add_headers,
    arequest_subject,
    circuit_open,
    client_ip,
    rate_limit,
    register_key,
    request_subject,
    too_many_requests,
    unregister_key,
)
from controlplane.client.http import Check


def tenant(request: HttpRequest) -> str | None:
    return request.headers.get("X-Tenant")


register_key("tenant", tenant)
unregister_key("old")


@rate_limit("search")
def search(request: HttpRequest) -> HttpResponse:
    return HttpResponse(client_ip(request))


def middleware() -> RateLimitMiddleware:
    return RateLimitMiddleware(lambda request: HttpResponse())


def responses(client: Client, request: HttpRequest) -> HttpResponseBase:
    limiter = client.limiter("api")
    check = Check.of(limiter, limiter.hit(request_subject(limiter, request)))
    if not check.decision.allowed:
        return too_many_requests(request, [check])
    response = search(request)
    add_headers(response, [check])
    return response


def unavailable(request: HttpRequest, error: CircuitOpenError) -> HttpResponseBase:
    return circuit_open(request, error)


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    return None


def asgi(client: Client) -> AsgiRateLimitMiddleware:
    return AsgiRateLimitMiddleware(
        asgi_app, {"POST /login/": "login", "/api/": ["api"]}, client=client, trusted_proxies=1
    )


async def asubject(client: Client, request: HttpRequest) -> str:
    return await arequest_subject(client.limiter("api"), request)


def failed(error: ControlPlaneError) -> str:
    return str(error)
