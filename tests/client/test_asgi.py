"""The ASGI middleware, driven through a real Starlette application and a real Redis."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from controlplane.client import CircuitOpenError, Client, RateLimitExceeded, decorators
from controlplane.client.asgi import RateLimitMiddleware, client_ip

pytestmark = pytest.mark.django_db(transaction=True)

LONG = 30 * 24 * 3600.0


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


async def item(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"item {request.path_params['id']}")


async def raises_rate_limit(request: Request) -> PlainTextResponse:
    client = decorators.default_client()
    limiter = client.limiter("inner", limit=1, period=LONG, key="global")
    decision = await limiter.ahit()
    if not decision.allowed:
        raise RateLimitExceeded("inner", decision)
    return PlainTextResponse("inner")


async def raises_for_a_stranger(request: Request) -> PlainTextResponse:
    decision = await decorators.default_client().limiter("inner", limit=1, period=LONG).apeek()
    raise RateLimitExceeded("stranger", decision)


async def raises_circuit_open(request: Request) -> PlainTextResponse:
    raise CircuitOpenError("upstream", "open", retry_after=2.4)


class HeaderAuth(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        name = conn.headers.get("x-user")
        return None if name is None else (AuthCredentials(["authenticated"]), SimpleUser(name))


ROUTES = [
    Route("/api/hello", hello, methods=["GET", "POST"]),
    Route("/api/items/{id}", item),
    Route("/public", hello),
    Route("/inner", raises_rate_limit),
    Route("/upstream", raises_circuit_open),
    Route("/stranger", raises_for_a_stranger),
]


def make_app(rules: Any, **options: Any) -> Starlette:
    return Starlette(
        routes=ROUTES,
        middleware=[
            Middleware(AuthenticationMiddleware, backend=HeaderAuth()),
            Middleware(RateLimitMiddleware, rules=rules, **options),
        ],
    )


class Response:
    def __init__(self, messages: list[dict[str, Any]]) -> None:
        start = messages[0]
        self.status: int = start["status"]
        self.headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
        self.body = b"".join(m.get("body", b"") for m in messages[1:])


async def call(
    app: Any,
    path: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    peer: str = "127.0.0.1",
) -> Response:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": (peer, 50000),
        "server": ("127.0.0.1", 80),
    }
    messages: list[dict[str, Any]] = []
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await app(scope, receive, send)
    return Response(messages)


async def statuses(app: Any, path: str, count: int, **options: Any) -> list[int]:
    return [(await call(app, path, **options)).status for _ in range(count)]


@pytest.fixture
async def configured(cp_client: Client, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Client]:
    monkeypatch.setattr(decorators, "_default", cp_client)
    yield cp_client
    await cp_client.async_redis().aclose()


async def test_rejects_with_429_and_the_draft_headers(configured: Client) -> None:
    limiter = configured.limiter("api", limit=2, period=60, burst=2, key="ip")
    app = make_app({"/api/": "api"})

    first, second, third = [await call(app, "/api/hello") for _ in range(3)]

    assert (first.status, second.status, third.status) == (200, 200, 429)
    assert first.body == b"hello"
    assert first.headers["ratelimit-policy"] == '"api";q=2;w=60'
    assert first.headers["ratelimit"].startswith('"api";r=1;t=')
    assert (first.headers["ratelimit-limit"], first.headers["ratelimit-remaining"]) == ("2", "1")
    assert second.headers["ratelimit-remaining"] == "0"
    assert "retry-after" not in first.headers
    assert third.body == b"Too Many Requests\n"
    retry = (await limiter.apeek("ip:127.0.0.1")).retry_after
    assert int(third.headers["retry-after"]) == math.ceil(retry)
    assert third.headers["ratelimit"].startswith('"api";r=0;t=')


async def test_ratelimit_limit_is_the_policys_limit_not_the_burst(configured: Client) -> None:
    configured.limiter("api", limit=100, period=60, burst=20, key="global")
    response = await call(make_app(["api"]), "/public")
    assert response.headers["ratelimit-limit"] == "100"
    assert response.headers["ratelimit-policy"] == '"api";q=100;w=60'
    assert response.headers["ratelimit-remaining"] == "19"


async def test_rules_by_prefix_and_method(configured: Client) -> None:
    configured.limiter("login", limit=1, period=LONG, key="global")
    app = make_app({"POST /api/": "login"})
    assert await statuses(app, "/api/hello", 3) == [200, 200, 200]  # GET: no rule applies
    assert await statuses(app, "/api/hello", 2, method="POST") == [200, 429]
    assert "ratelimit" not in (await call(app, "/api/hello")).headers


async def test_several_limiters_are_all_listed(configured: Client) -> None:
    configured.limiter("wide", limit=100, period=LONG, key="global")
    configured.limiter("narrow", limit=3, period=60, key="global")
    response = await call(make_app(["wide", "narrow"]), "/public")
    assert response.headers["ratelimit-policy"] == f'"wide";q=100;w={int(LONG)}, "narrow";q=3;w=60'
    assert response.headers["ratelimit"].count(";r=") == 2
    assert (response.headers["ratelimit-limit"], response.headers["ratelimit-remaining"]) == (
        "3",
        "2",
    )


async def test_user_key_reads_scope_user_and_falls_back_to_the_ip(
    configured: Client, redis_client: redis.Redis
) -> None:
    limiter = configured.limiter("api", limit=1, period=LONG, key="user")
    app = make_app(["api"])
    assert await statuses(app, "/public", 2) == [200, 429]
    assert await statuses(app, "/public", 2, headers={"x-user": "alice"}) == [200, 429]
    assert await statuses(app, "/public", 1, headers={"x-user": "bob"}) == [200]
    assert redis_client.exists(limiter.key_for("user:alice"))
    assert redis_client.exists(limiter.key_for("ip:127.0.0.1"))


async def test_user_function_overrides_scope_user(configured: Client) -> None:
    configured.limiter("api", limit=1, period=LONG, key="user")
    app = make_app(["api"], user=lambda scope: "everyone")
    assert await statuses(app, "/public", 1, peer="192.0.2.1") == [200]
    assert await statuses(app, "/public", 1, peer="192.0.2.2") == [429]


async def test_endpoint_key_is_the_route_template(
    configured: Client, redis_client: redis.Redis
) -> None:
    limiter = configured.limiter("api", limit=1, period=LONG, key="endpoint")
    app = make_app(["api"])
    assert await statuses(app, "/api/items/1", 1) == [200]
    assert await statuses(app, "/api/items/2", 1) == [429]  # same route, same quota
    assert await statuses(app, "/public", 1) == [200]
    assert redis_client.exists(limiter.key_for("endpoint:/api/items/{id}"))


async def test_custom_key_function(configured: Client) -> None:
    configured.limiter("api", limit=1, period=LONG, key="custom", custom_key="tenant")

    async def tenant(scope: Any) -> str | None:
        return dict(scope["headers"]).get(b"x-tenant", b"").decode() or None

    app = make_app(["api"], keys={"tenant": tenant})
    assert await statuses(app, "/public", 2, headers={"x-tenant": "acme"}) == [200, 429]
    assert await statuses(app, "/public", 2, headers={"x-tenant": "globex"}) == [200, 429]


async def test_ip_key_trusts_x_forwarded_for_only_behind_trusted_proxies(
    configured: Client,
) -> None:
    configured.limiter("api", limit=1, period=LONG, key="ip")
    spoofed = {"x-forwarded-for": "198.51.100.1"}
    assert await statuses(make_app(["api"]), "/public", 2, headers=spoofed) == [200, 429]
    proxied = make_app(["api"], trusted_proxies=1)
    assert await statuses(proxied, "/public", 1, headers={"x-forwarded-for": "203.0.113.5"}) == [
        200
    ]
    forged = {"x-forwarded-for": "1.2.3.4, 203.0.113.5"}
    assert await statuses(proxied, "/public", 1, headers=forged) == [429]


def test_client_ip_of_a_scope() -> None:
    scope = {"client": ("10.1.1.1", 1), "headers": [(b"x-forwarded-for", b"10.0.0.1, 203.0.113.7")]}
    assert client_ip(scope) == "10.1.1.1"
    assert client_ip(scope, 1) == "203.0.113.7"
    assert client_ip(scope, 5) == "10.0.0.1"
    assert client_ip({"headers": [(b"x-forwarded-for", b"nonsense")]}, 1) == "unknown"


async def test_defaults_apply_to_an_unmanaged_limiter(configured: Client) -> None:
    app = make_app(["fresh"], defaults={"fresh": {"limit": 1, "period": LONG, "key": "global"}})
    assert await statuses(app, "/public", 2) == [200, 429]
    assert configured.limiter("fresh").settings.limit == 1


async def test_library_exceptions_from_the_app_become_429_and_503(configured: Client) -> None:
    app = make_app([])
    assert (await call(app, "/inner")).status == 200
    limited = await call(app, "/inner")
    assert limited.status == 429
    assert limited.headers["ratelimit-policy"] == f'"inner";q=1;w={int(LONG)}'
    assert int(limited.headers["retry-after"]) >= 1
    opened = await call(app, "/upstream")
    assert (opened.status, opened.headers["retry-after"], opened.body) == (
        503,
        "3",
        b"Service Unavailable\n",
    )


async def test_a_429_for_an_unknown_limiter_creates_no_limiter(configured: Client) -> None:
    response = await call(make_app([]), "/stranger")
    assert response.status == 429
    assert response.headers["ratelimit-policy"].startswith('"stranger";q=1;')
    assert ("rate_limit", "stranger") not in configured._components


async def test_without_a_client_requests_pass_and_it_is_said_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from controlplane.client.http import once

    monkeypatch.setattr(decorators, "_default", None)
    once.reset()
    app = make_app(["api"])
    assert await statuses(app, "/public", 5) == [200] * 5
    assert [r.message for r in caplog.records].count(
        "Rate limits not applied: no default client: call "
        "controlplane.client.configure(Client(...)) first"
    ) == 1


async def test_websockets_and_lifespan_pass_through(configured: Client) -> None:
    seen: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    middleware = RateLimitMiddleware(inner, ["api"])
    await middleware({"type": "lifespan"}, None, None)
    assert seen == ["lifespan"]


def test_bad_rules_name_the_entry() -> None:
    from controlplane.client.http import RuleError

    with pytest.raises(RuleError, match="'post /login/'"):
        RateLimitMiddleware(hello, {"post /login/": "login"})
    with pytest.raises(RuleError, match="'login/'"):
        RateLimitMiddleware(hello, {"login/": "login"})
    with pytest.raises(RuleError, match="'/api/' gives 3"):
        RateLimitMiddleware(hello, {"/api/": 3})


def test_bad_defaults_fail_at_start_naming_the_field() -> None:
    from controlplane.client.http import RuleError

    with pytest.raises(RuleError, match=r"defaults\['api'\]: limit"):
        RateLimitMiddleware(hello, ["api"], defaults={"api": {"limit": -1}})
