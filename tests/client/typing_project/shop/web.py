"""The Django integration's public names."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from controlplane.client import Client, ControlPlaneError
from controlplane.client.django import (
    RateLimitMiddleware,
    add_headers,
    arequest_subject,
    client_ip,
    rate_limit,
    register_key,
    request_subject,
    too_many_requests,
    unregister_key,
)


def tenant(request: HttpRequest) -> str | None:
    return request.headers.get("X-Tenant")


register_key("tenant", tenant)
unregister_key("old")


@rate_limit("search")
def search(request: HttpRequest) -> HttpResponse:
    return HttpResponse(client_ip(request))


def middleware() -> RateLimitMiddleware:
    return RateLimitMiddleware(lambda request: HttpResponse())


def responses(client: Client, request: HttpRequest) -> HttpResponse:
    limiter = client.limiter("api")
    decision = limiter.hit(request_subject(limiter, request))
    if not decision.allowed:
        return too_many_requests(decision)
    response = search(request)
    add_headers(response, decision)
    return response


async def asubject(client: Client, request: HttpRequest) -> str:
    return await arequest_subject(client.limiter("api"), request)


def failed(error: ControlPlaneError) -> str:
    return str(error)
