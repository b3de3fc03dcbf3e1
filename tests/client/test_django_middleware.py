from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, RequestFactory
from django.test import Client as DjangoClient
from django.test.utils import override_settings
from django.urls import path

from controlplane.client import CircuitOpenError, Client, RateLimitExceeded, decorators
from controlplane.client.django import (
    RateLimitMiddleware,
    client_ip,
    rate_limit,
    register_key,
    unregister_key,
)
from controlplane.client.metrics import ClientMetrics
from controlplane.policies.models import Policy
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

LONG = 30 * 24 * 3600.0
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "controlplane.client.django.RateLimitMiddleware",
]


def hello(request: HttpRequest) -> HttpResponse:
    return HttpResponse("hello")


def other(request: HttpRequest) -> HttpResponse:
    return HttpResponse("other")


async def ahello(request: HttpRequest) -> HttpResponse:
    return HttpResponse("async hello")


@rate_limit("view-sync")
def limited(request: HttpRequest) -> HttpResponse:
    return HttpResponse("limited")


@rate_limit("view-async")
async def alimited(request: HttpRequest) -> HttpResponse:
    return HttpResponse("async limited")


@rate_limit("view-keyed", key=lambda request: request.GET.get("account"))
def keyed(request: HttpRequest) -> HttpResponse:
    return HttpResponse("keyed")


urlpatterns = [
    path("api/hello/", hello, name="hello"),
    path("api/other/", other, name="other"),
    path("api/async/", ahello, name="ahello"),
    path("public/", hello, name="public"),
    path("limited/", limited, name="limited"),
    path("alimited/", alimited, name="alimited"),
]


@pytest.fixture
def configured(cp_client: Client, monkeypatch: pytest.MonkeyPatch) -> Client:
    """Make the test's client the default one the integration uses."""
    monkeypatch.setattr(decorators, "_default", cp_client)
    return cp_client


@pytest.fixture
def alice(django_user_model: type[User]) -> User:
    return django_user_model.objects.create_user("alice", password="password-alice")


@pytest.fixture
def web() -> Iterator[DjangoClient]:
    with override_settings(
        ROOT_URLCONF=__name__, MIDDLEWARE=MIDDLEWARE, CONTROLPLANE_RATE_LIMITS=["api"]
    ):
        yield DjangoClient()


def statuses(web: DjangoClient, url: str, count: int, **extra: Any) -> list[int]:
    return [web.get(url, **extra).status_code for _ in range(count)]


# Middleware


def test_middleware_rejects_with_429_and_headers(configured: Client, web: DjangoClient) -> None:
    limiter = configured.limiter("api", limit=2, period=60, key="ip")

    first, second, third = (web.get("/api/hello/") for _ in range(3))

    assert (first.status_code, second.status_code, third.status_code) == (200, 200, 429)
    assert first["RateLimit-Limit"] == "2"
    assert (first["RateLimit-Remaining"], second["RateLimit-Remaining"]) == ("1", "0")
    assert 0 < int(first["RateLimit-Reset"]) <= 30
    assert third["RateLimit-Remaining"] == "0"
    retry = limiter.peek("ip:127.0.0.1").retry_after
    assert int(third["Retry-After"]) == math.ceil(retry)
    assert "Retry-After" not in first


def test_prefix_mapping_limits_only_matching_paths(configured: Client) -> None:
    configured.limiter("api", limit=1, period=LONG, key="global")
    configured.limiter("everything", limit=5, period=LONG, key="global")
    with override_settings(
        ROOT_URLCONF=__name__,
        MIDDLEWARE=MIDDLEWARE,
        CONTROLPLANE_RATE_LIMITS={"/api/": "api", "": ["everything"]},
    ):
        web = DjangoClient()
        assert statuses(web, "/api/hello/", 2) == [200, 429]
        public = web.get("/public/")
        assert public.status_code == 200
        # Only "everything" applies. It counted the first /api/ request but not the
        # second, which "api" had already rejected: 5 - 2 = 3 left after this one.
        assert public["RateLimit-Remaining"] == "3"


def test_most_restrictive_limiter_sets_the_headers(configured: Client) -> None:
    configured.limiter("wide", limit=100, period=LONG, key="global")
    configured.limiter("narrow", limit=3, period=LONG, key="global")
    with override_settings(
        ROOT_URLCONF=__name__, MIDDLEWARE=MIDDLEWARE, CONTROLPLANE_RATE_LIMITS=["wide", "narrow"]
    ):
        response = DjangoClient().get("/api/hello/")
    assert (response["RateLimit-Limit"], response["RateLimit-Remaining"]) == ("3", "2")


def test_user_key_uses_the_user_and_falls_back_to_the_ip(
    configured: Client, web: DjangoClient, alice: User, redis_client: redis.Redis
) -> None:
    limiter = configured.limiter("api", limit=2, period=LONG, key="user")
    assert statuses(web, "/api/hello/", 3) == [200, 200, 429]  # anonymous: by IP
    assert redis_client.exists(limiter.key_for("ip:127.0.0.1"))

    web.force_login(alice)
    assert statuses(web, "/api/hello/", 3) == [200, 200, 429]
    assert redis_client.exists(limiter.key_for(f"user:{alice.pk}"))


def test_endpoint_key_gives_each_view_its_own_quota(
    configured: Client, web: DjangoClient, redis_client: redis.Redis
) -> None:
    limiter = configured.limiter("api", limit=1, period=LONG, key="endpoint")
    assert statuses(web, "/api/hello/", 2) == [200, 429]
    assert statuses(web, "/api/other/", 2) == [200, 429]
    assert redis_client.exists(limiter.key_for("endpoint:hello"))
    assert redis_client.exists(limiter.key_for("endpoint:other"))


def test_custom_key_uses_the_registered_function(configured: Client, web: DjangoClient) -> None:
    configured.limiter("api", limit=1, period=LONG, key="custom", custom_key="tenant")
    register_key("tenant", lambda request: request.headers.get("X-Tenant"))
    try:
        assert statuses(web, "/api/hello/", 2, HTTP_X_TENANT="acme") == [200, 429]
        assert statuses(web, "/api/hello/", 2, HTTP_X_TENANT="globex") == [200, 429]
        # No tenant: keyed by IP instead, a quota of its own.
        assert statuses(web, "/api/hello/", 2) == [200, 429]
    finally:
        unregister_key("tenant")


def test_ip_key_ignores_x_forwarded_for_unless_a_proxy_is_trusted(
    configured: Client, web: DjangoClient
) -> None:
    configured.limiter("api", limit=1, period=LONG, key="ip")
    spoofed = {"HTTP_X_FORWARDED_FOR": "198.51.100.1"}
    assert statuses(web, "/api/hello/", 2, **spoofed) == [200, 429]  # all 127.0.0.1

    with override_settings(CONTROLPLANE_TRUSTED_PROXIES=1):
        assert statuses(web, "/api/hello/", 2, HTTP_X_FORWARDED_FOR="203.0.113.5") == [200, 429]
        # The proxy appends the real address: earlier entries are the client's own claims.
        assert (
            web.get("/api/hello/", HTTP_X_FORWARDED_FOR="1.2.3.4, 203.0.113.9").status_code == 200
        )


def test_client_ip_takes_the_entry_the_trusted_proxies_appended() -> None:
    request = RequestFactory().get("/", HTTP_X_FORWARDED_FOR="10.0.0.1, 203.0.113.7, 10.1.1.1")
    assert client_ip(request) == "127.0.0.1"
    with override_settings(CONTROLPLANE_TRUSTED_PROXIES=2):
        assert client_ip(request) == "203.0.113.7"
    with override_settings(CONTROLPLANE_TRUSTED_PROXIES=5):
        assert client_ip(request) == "10.0.0.1"


@pytest.mark.parametrize(
    "forwarded", ["not-an-address", "x" * 500, "203.0.113.7\x00", "1.2.3.4:80", "[::1]"]
)
def test_client_ip_is_the_peer_when_the_trusted_entry_is_not_an_address(forwarded: str) -> None:
    request = RequestFactory().get("/", HTTP_X_FORWARDED_FOR=f"10.0.0.1, {forwarded}")
    with override_settings(CONTROLPLANE_TRUSTED_PROXIES=1):
        assert client_ip(request) == "127.0.0.1"
    valid = RequestFactory().get("/", HTTP_X_FORWARDED_FOR="10.0.0.1, 2001:DB8::1")
    with override_settings(CONTROLPLANE_TRUSTED_PROXIES=1):
        assert client_ip(valid) == "2001:db8::1"


def test_observe_mode_policy_never_answers_429(
    configured: Client, web: DjangoClient, set_policy: Callable[..., Policy]
) -> None:
    limiter = configured.limiter("api", limit=1, period=LONG, key="global")
    assert statuses(web, "/api/hello/", 2) == [200, 429]

    set_policy("rate_limit", "api", limit=1, period=LONG, key="global", mode="observe")
    wait_for(lambda: limiter.settings.mode == "observe")

    responses = [web.get("/api/hello/") for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert {r["RateLimit-Remaining"] for r in responses} == {"0"}


def test_policy_change_reaches_the_middleware_live(
    configured: Client, web: DjangoClient, set_policy: Callable[..., Policy]
) -> None:
    set_policy("rate_limit", "api", algorithm="fixed_window", limit=1, period=LONG, key="global")
    limiter = configured.limiter("api")
    wait_for(lambda: limiter.settings.limit == 1)
    assert statuses(web, "/api/hello/", 2) == [200, 429]

    set_policy("rate_limit", "api", algorithm="fixed_window", limit=3, period=LONG, key="global")
    wait_for(lambda: limiter.settings.limit == 3)

    assert statuses(web, "/api/hello/", 3) == [200, 200, 429]


def test_without_a_default_client_requests_pass(
    cp_client: Client, web: DjangoClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(decorators, "_default", None)
    response = web.get("/api/hello/")
    assert response.status_code == 200
    assert "RateLimit-Limit" not in response


def test_bad_setting_is_reported_at_start() -> None:
    from django.core.exceptions import ImproperlyConfigured

    with (
        override_settings(CONTROLPLANE_RATE_LIMITS=[3]),
        pytest.raises(ImproperlyConfigured, match="CONTROLPLANE_RATE_LIMITS"),
    ):
        RateLimitMiddleware(hello)


async def test_async_middleware_and_view(configured: Client) -> None:
    configured.limiter("api", limit=2, period=LONG, key="user")
    with override_settings(
        ROOT_URLCONF=__name__, MIDDLEWARE=MIDDLEWARE, CONTROLPLANE_RATE_LIMITS=["api"]
    ):
        web = AsyncClient()
        responses = [await web.get("/api/async/") for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert responses[0].content == b"async hello"
    assert responses[1]["RateLimit-Remaining"] == "0"
    assert int(responses[2]["Retry-After"]) >= 1
    await configured.async_redis().aclose()


async def test_async_middleware_keys_logged_in_users(
    configured: Client, alice: User, redis_client: redis.Redis
) -> None:
    limiter = configured.limiter("api", limit=1, period=LONG, key="user")
    with override_settings(
        ROOT_URLCONF=__name__, MIDDLEWARE=MIDDLEWARE, CONTROLPLANE_RATE_LIMITS=["api"]
    ):
        web = AsyncClient()
        await web.aforce_login(alice)
        assert [(await web.get("/api/async/")).status_code for _ in range(2)] == [200, 429]
    assert redis_client.exists(limiter.key_for(f"user:{alice.pk}"))
    await configured.async_redis().aclose()


# View decorator


def test_view_decorator_on_a_sync_view(configured: Client) -> None:
    configured.limiter("view-sync", limit=2, period=LONG, key="ip")
    factory = RequestFactory()

    responses = [limited(factory.get("/limited/")) for _ in range(3)]

    assert [r.status_code for r in responses] == [200, 200, 429]
    assert responses[0]["RateLimit-Remaining"] == "1"
    assert responses[2]["Retry-After"].isdigit()
    # Another address has its own quota.
    assert limited(factory.get("/limited/", REMOTE_ADDR="192.0.2.9")).status_code == 200


async def test_view_decorator_on_an_async_view(configured: Client) -> None:
    configured.limiter("view-async", limit=1, period=LONG, key="global")
    factory = RequestFactory()

    first = await alimited(factory.get("/alimited/"))
    second = await alimited(factory.get("/alimited/", REMOTE_ADDR="192.0.2.1"))

    assert (first.status_code, second.status_code) == (200, 429)
    assert first.content == b"async limited"
    await configured.async_redis().aclose()


def test_view_decorator_with_its_own_key_function(configured: Client) -> None:
    configured.limiter("view-keyed", limit=1, period=LONG)
    factory = RequestFactory()
    assert keyed(factory.get("/", {"account": "a"})).status_code == 200
    assert keyed(factory.get("/", {"account": "a"})).status_code == 429
    assert keyed(factory.get("/", {"account": "b"})).status_code == 200


def test_view_decorator_through_the_url_conf(configured: Client) -> None:
    configured.limiter("view-sync", limit=1, period=LONG, key="endpoint")
    with override_settings(ROOT_URLCONF=__name__, CONTROLPLANE_RATE_LIMITS=[]):
        web = DjangoClient()
        assert statuses(web, "/limited/", 2) == [200, 429]


# Library exceptions, custom responses, method rules, defaults


def raises_rate_limit(request: HttpRequest) -> HttpResponse:
    limiter = decorators.default_client().limiter("inner", limit=1, period=LONG, key="global")
    decision = limiter.hit()
    if not decision.allowed:
        raise RateLimitExceeded("inner", decision)
    return HttpResponse("inner")


def raises_circuit_open(request: HttpRequest) -> HttpResponse:
    raise CircuitOpenError("upstream", "open", retry_after=4.2)


def custom_rate_limited(request: HttpRequest, exception: Exception) -> HttpResponse:
    assert isinstance(exception, RateLimitExceeded)
    return HttpResponse(f"slow down ({exception.name})", status=429)


def custom_circuit_open(request: HttpRequest, exception: Exception) -> HttpResponse:
    return HttpResponse("upstream resting", status=503, headers={"Retry-After": "60"})


urlpatterns += [
    path("inner/", raises_rate_limit),
    path("upstream/", raises_circuit_open),
]


def test_library_exceptions_from_views_become_429_and_503(
    configured: Client, web: DjangoClient, settings: Any
) -> None:
    settings.CONTROLPLANE_RATE_LIMITS = []
    assert web.get("/inner/").status_code == 200
    limited = web.get("/inner/")
    assert limited.status_code == 429
    assert limited["RateLimit-Policy"] == f'"inner";q=1;w={int(LONG)}'
    assert limited["RateLimit-Remaining"] == "0"
    assert int(limited["Retry-After"]) >= 1

    opened = web.get("/upstream/")
    assert (opened.status_code, opened["Retry-After"], opened.content) == (
        503,
        "5",
        b"Service Unavailable\n",
    )


def test_custom_views_answer_exceptions_and_the_middlewares_own_429(
    configured: Client, web: DjangoClient
) -> None:
    configured.limiter("api", limit=1, period=60, key="global")
    with override_settings(
        CONTROLPLANE_RATE_LIMITS={"/api/": "api"},
        CONTROLPLANE_RATE_LIMITED_VIEW=f"{__name__}.custom_rate_limited",
        CONTROLPLANE_CIRCUIT_OPEN_VIEW=f"{__name__}.custom_circuit_open",
    ):
        assert web.get("/api/hello/").status_code == 200
        own = web.get("/api/hello/")
        assert (own.status_code, own.content) == (429, b"slow down (api)")
        assert own["RateLimit-Policy"] == '"api";q=1;w=60'
        assert int(own["Retry-After"]) >= 1

        opened = web.get("/upstream/")
        assert (opened.status_code, opened.content, opened["Retry-After"]) == (
            503,
            b"upstream resting",
            "60",  # the view's own header wins
        )


def test_a_custom_view_that_cannot_be_imported_fails_at_start() -> None:
    from django.core.exceptions import ImproperlyConfigured

    with (
        override_settings(CONTROLPLANE_RATE_LIMITED_VIEW="tests.nowhere.view"),
        pytest.raises(ImproperlyConfigured, match="CONTROLPLANE_RATE_LIMITED_VIEW"),
    ):
        RateLimitMiddleware(hello)


def test_rules_by_method(configured: Client) -> None:
    configured.limiter("login", limit=1, period=LONG, key="global")
    with override_settings(
        ROOT_URLCONF=__name__,
        MIDDLEWARE=MIDDLEWARE,
        CONTROLPLANE_RATE_LIMITS={"POST,PUT /api/": "login"},
    ):
        web = DjangoClient()
        assert statuses(web, "/api/hello/", 3) == [200, 200, 200]
        assert [web.post("/api/hello/").status_code for _ in range(2)] == [200, 429]
        assert web.put("/api/hello/").status_code == 429


@pytest.mark.parametrize(
    ("rules", "named"),
    [
        ({"post /login/": "login"}, "'post /login/'"),
        ({"login/": "login"}, "'login/'"),
        ({"POST /a/ /b/": "login"}, "'POST /a/ /b/'"),
        ({"/api/": ["ok", 3]}, "'/api/'"),
    ],
)
def test_bad_rule_names_the_entry(rules: Any, named: str) -> None:
    from django.core.exceptions import ImproperlyConfigured

    with (
        override_settings(CONTROLPLANE_RATE_LIMITS=rules),
        pytest.raises(ImproperlyConfigured, match=f"CONTROLPLANE_RATE_LIMITS: .*{named}"),
    ):
        RateLimitMiddleware(hello)


def test_settings_give_code_defaults_to_an_unmanaged_limiter(configured: Client) -> None:
    with override_settings(
        ROOT_URLCONF=__name__,
        MIDDLEWARE=MIDDLEWARE,
        CONTROLPLANE_RATE_LIMITS=["fresh"],
        CONTROLPLANE_RATE_LIMIT_DEFAULTS={"fresh": {"limit": 2, "period": 60, "key": "global"}},
    ):
        web = DjangoClient()
        responses = [web.get("/api/hello/") for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert responses[0]["RateLimit-Policy"] == '"fresh";q=2;w=60'
    assert configured.limiter("fresh").settings.managed is False


def test_bad_code_defaults_name_the_limiter_and_field() -> None:
    from django.core.exceptions import ImproperlyConfigured

    with (
        override_settings(CONTROLPLANE_RATE_LIMIT_DEFAULTS={"api": {"limit": -1}}),
        pytest.raises(
            ImproperlyConfigured, match=r"CONTROLPLANE_RATE_LIMIT_DEFAULTS\['api'\]: limit"
        ),
    ):
        RateLimitMiddleware(hello)


def test_ratelimit_limit_is_the_policys_limit_not_the_burst(
    configured: Client, web: DjangoClient
) -> None:
    configured.limiter("api", limit=100, period=60, burst=20, key="global")
    response = web.get("/api/hello/")
    assert response["RateLimit-Limit"] == "100"
    assert response["RateLimit-Policy"] == '"api";q=100;w=60'
    assert response["RateLimit-Remaining"] == "19"
    assert response["RateLimit"].startswith('"api";r=19;t=')


def test_middleware_and_decorator_headers_merge(configured: Client) -> None:
    configured.limiter("api", limit=50, period=60, key="global")
    configured.limiter("view-sync", limit=5, period=60, key="global")
    with override_settings(
        ROOT_URLCONF=__name__, MIDDLEWARE=MIDDLEWARE, CONTROLPLANE_RATE_LIMITS=["api"]
    ):
        response = DjangoClient().get("/limited/")
    assert response["RateLimit-Policy"] == '"view-sync";q=5;w=60, "api";q=50;w=60'
    assert response["RateLimit-Remaining"] == "4"  # the more restrictive one


def test_without_configure_the_middleware_says_so_once(
    cp_client: Client,
    web: DjangoClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from controlplane.client.http import once

    problems = ClientMetrics.shared().problems.labels("no_client")
    before = problems._value.get()
    monkeypatch.setattr(decorators, "_default", None)
    once.reset()
    assert statuses(web, "/api/hello/", 5) == [200] * 5
    said = [r for r in caplog.records if r.message.startswith("Rate limits not applied")]
    assert len(said) == 1
    assert problems._value.get() - before == 5  # each request counted, one line said


# System check


def check_ids() -> list[str]:
    from controlplane.client.django import check_rate_limits

    return [message.id or "" for message in check_rate_limits()]


def test_check_warns_about_limiters_the_control_plane_does_not_manage(
    configured: Client, set_policy: Callable[..., Policy]
) -> None:
    set_policy("rate_limit", "api", limit=10, period=60)
    with override_settings(
        CONTROLPLANE_RATE_LIMITS={"/api/": "api", "POST /login/": "login"},
        CONTROLPLANE_RATE_LIMIT_DEFAULTS={"search": {"limit": 5}},
    ):
        from controlplane.client.django import check_rate_limits

        messages = check_rate_limits()
    assert [m.id for m in messages] == ["controlplane.W004", "controlplane.W004"]
    assert "'login'" in messages[0].msg and "schema defaults" in messages[0].msg
    assert "'search'" in messages[1].msg and "CONTROLPLANE_RATE_LIMIT_DEFAULTS" in messages[1].msg


def test_check_is_silent_when_every_limiter_is_managed(
    configured: Client, set_policy: Callable[..., Policy]
) -> None:
    set_policy("rate_limit", "api", limit=10, period=60)
    with override_settings(CONTROLPLANE_RATE_LIMITS=["api"]):
        assert check_ids() == []


def test_check_warns_about_an_environment_never_published(
    client_factory: Callable[..., Client],
    set_policy: Callable[..., Policy],
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
) -> None:
    set_policy("rate_limit", "api", limit=10, period=60)  # publishes 'production'
    monkeypatch.setattr(decorators, "_default", client_factory(environment="prodution"))
    with override_settings(CONTROLPLANE_RATE_LIMITS=["api"]):
        from controlplane.client.django import check_rate_limits

        (message,) = check_rate_limits()
    assert message.id == "controlplane.W003"
    assert "'prodution'" in message.msg
    assert message.msg.endswith(
        "published under key prefix " + repr(settings.REDIS_KEY_PREFIX) + ": 'production'."
    )


def test_check_warns_without_hanging_when_redis_is_down(
    client_factory: Callable[..., Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    monkeypatch.setattr(decorators, "_default", client_factory(redis_url="redis://127.0.0.1:9/0"))
    started = time.monotonic()
    with override_settings(CONTROLPLANE_RATE_LIMITS=["api"]):
        assert check_ids() == ["controlplane.W002"]
    assert time.monotonic() - started < 5


def test_check_warns_without_a_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decorators, "_default", None)
    with override_settings(CONTROLPLANE_RATE_LIMITS=["api"]):
        assert check_ids() == ["controlplane.W001"]
    with override_settings(CONTROLPLANE_RATE_LIMITS=None):
        assert check_ids() == []


def test_check_runs_with_djangos_own_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.core import checks

    monkeypatch.setattr(decorators, "_default", None)
    with override_settings(CONTROLPLANE_RATE_LIMITS=["api"]):
        ids = [m.id for m in checks.run_checks(tags=["controlplane"])]
    assert ids == ["controlplane.W001"]
