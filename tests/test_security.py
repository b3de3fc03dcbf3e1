"""Every URL of the project, found from the resolver: closed to anonymous visitors, and
every state-changing request protected against cross-site request forgery.

The URLs are not listed here: a URL added later is walked too, and must either refuse
anonymous visitors or be added to ``PUBLIC`` with the reason it may be open. (Which role
may use which page is ``test_permissions.py``; headers and cookies are ``test_health.py``.)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.contrib.contenttypes.models import ContentType
from django.http import HttpResponse
from django.middleware.csrf import get_token
from django.test import Client, RequestFactory
from django.urls import URLPattern, URLResolver, get_resolver, resolve, reverse
from django.urls.resolvers import RegexPattern, RoutePattern
from django.utils import timezone

from controlplane.accounts.actions import do_create_token
from controlplane.accounts.actors import Actor
from controlplane.accounts.roles import Role
from controlplane.alerts.models import AlertRule
from controlplane.live.models import DiscoveredName
from controlplane.ops.health import PROBES
from controlplane.policies.actions import do_create_policy, do_rollback_policy
from controlplane.policies.models import Environment, Policy
from controlplane.policies.requests import Proposal, open_request
from controlplane.protocol.schema import KINDS
from controlplane.webhooks.delivery import send_test
from controlplane.webhooks.models import Delivery, Webhook
from tests.conftest import make_user
from tests.properties import stored_state

pytestmark = pytest.mark.django_db(transaction=True)

UNSAFE = ("post", "put", "patch", "delete")
OUTSIDE = "203.0.113.7"  # an address from the internet (TEST-NET-3), not loopback
LOGIN = "/login/"


@dataclass(frozen=True)
class Route:
    """One URL pattern of the project: its full pattern text and a path that reaches it."""

    pattern: str
    path: str
    callback: Callable[..., Any]

    @property
    def csrf_exempt(self) -> bool:
        return bool(getattr(self.callback, "csrf_exempt", False))


def _healthz(method: str, response: Any) -> None:
    """Liveness probe for load balancers: says "ok" and nothing else."""
    if method == "get":
        assert response.content == b"ok\n"
    else:
        assert response.status_code == 405


def _readyz(method: str, response: Any) -> None:
    """Readiness probe: names its three checks and their state, nothing more."""
    if method == "get":
        assert set(response.json()) == {"status", "checks"}
        assert set(response.json()["checks"]) == {"database", "redis", "reconciler"}
    else:
        assert response.status_code == 405


def _login(method: str, response: Any) -> None:
    """The way in (throttled: 429 after a burst of attempts; PUT is read as POST)."""
    expected = {"get": (200,), "post": (200, 429), "put": (200, 429)}.get(method, (405,))
    assert response.status_code in expected


def _logout(method: str, response: Any) -> None:
    """Logging out needs no login; it only ends a session (POST only, Django 5)."""
    if method == "post":
        assert response.status_code == 302 and response["Location"] == LOGIN
    else:
        assert response.status_code == 405


def _admin_logout(method: str, response: Any) -> None:
    """The admin's logout: ends a session if there is one, then goes to the admin, which
    sends anonymous visitors to the login page."""
    assert response.status_code in (302, 405)
    if response.status_code == 302:
        assert response["Location"] == reverse("admin:index")


def _openapi(method: str, response: Any) -> None:
    """The API's description: the same for every installation, linked from the README
    for clients and code generators; it holds no data (no environment or policy).
    django-ninja serves it whatever the method: writing to it changes nothing."""
    text = response.content.decode()
    assert response.status_code == 200 and '"openapi"' in text
    assert "production" not in text and "payments" not in text


def _api_root(method: str, response: Any) -> None:
    """django-ninja's root, only there to build the API's URLs: 404 for everyone."""
    assert response.status_code in (404, 405)


def _invite(method: str, response: Any) -> None:
    """Where an invited user chooses a password: the link's token is their key, so it
    must be open; with a wrong token it only says the link does not work."""
    assert response.status_code == 200
    assert "This link does not work any more" in response.content.decode()


# Patterns open to anonymous visitors, each with what it may answer them (the docstring
# says why it may be open). Everything else must send them to the login page or refuse.
PUBLIC: dict[str, Callable[[str, Any], None]] = {
    "healthz": _healthz,
    "readyz": _readyz,
    "login/": _login,
    "logout/": _logout,
    "admin/logout/": _admin_logout,
    "api/v1/openapi.json": _openapi,
    "api/v1/": _api_root,
    "users/invite/<uidb64>/<token>/": _invite,
}


def _walk(resolver: URLResolver, parts: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    for entry in resolver.url_patterns:
        if isinstance(entry, URLResolver):
            yield from _walk(entry, (*parts, entry.pattern))
        else:
            assert isinstance(entry, URLPattern)
            yield (*parts, entry.pattern, entry)


_ROUTE_PARAMETER = re.compile(r"<(?:[^>:]+:)?(?P<name>[^>]+)>")
_REGEX_GROUP = re.compile(r"\(\?P<(?P<name>\w+)>[^)]*\)")


def _fill(part: Any, values: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in values:
            raise AssertionError(
                f"No value for the URL parameter {name!r} of {part}: add one to values()"
            )
        return values[name]

    if isinstance(part, RoutePattern):
        return _ROUTE_PARAMETER.sub(value, str(part))
    assert isinstance(part, RegexPattern), part
    return _REGEX_GROUP.sub(value, str(part)).lstrip("^").removesuffix("$").removesuffix(r"\Z")


def _joined(parts: list[Any]) -> str:
    """The pattern's full text, joined as Django joins it (``ResolverMatch.route``)."""
    route = ""
    for part in parts:
        text = str(part)
        route = route + text.removeprefix("^") if route else text
    return route


def all_patterns() -> set[str]:
    return {_joined(parts) for *parts, _ in _walk(get_resolver())}


def routes(values: dict[str, str]) -> list[Route]:
    """Every URL pattern, with its parameters filled in; one per kind where it takes one."""
    found: dict[str, Route] = {}
    for *parts, entry in _walk(get_resolver()):
        pattern = _joined(parts)
        for kind in KINDS if "kind>" in pattern else (values["kind"],):
            path = "/" + "".join(_fill(part, {**values, "kind": kind}) for part in parts)
            if path not in found:
                # The path reaches this pattern (not an earlier one that also matches it).
                assert resolve(path).route == pattern, (path, pattern)
                found[path] = Route(pattern, path, entry.callback)
    return list(found.values())


@dataclass
class World:
    """Something behind every parameter of every URL."""

    environment: Environment
    root: User
    values: dict[str, str]
    token: str


@pytest.fixture
def world(production: Environment, system: Actor, admin: User) -> World:
    for kind in KINDS:
        policy = do_create_policy(production, kind, "payments", {}, system)
        do_rollback_policy(policy, 1, system, "a v2, so that v1 can be restored")
    discovered = DiscoveredName.objects.create(
        environment=production, kind="cache", name="found", last_seen=timezone.now()
    )
    token, secret = do_create_token("robot", Role.EDITOR, system)
    root = make_user("root", Role.ADMIN)
    root.is_staff = root.is_superuser = True
    root.save()
    change = Proposal("delete", "breaker", "payments")
    change_request = open_request(production, [change], system, "a change request to reach")
    webhook = Webhook.objects.create(
        environment=production.name, name="hook", url="https://hooks.example.com/services/x"
    )
    send_test(webhook)
    rule = AlertRule.objects.create(environment=production, name="down", kind="breaker_open")
    values = {
        "environment": production.name,
        "webhook": webhook.name,
        "delivery_id": str(Delivery.objects.get(webhook=webhook).pk),
        "rule_id": str(rule.pk),
        "kind": "breaker",
        "name": "payments",
        "fmt": "json",
        "version": "1",
        "revision": "1",
        "discovered_id": str(discovered.pk),
        "token_id": str(token.pk),
        "id": str(admin.pk),
        "object_id": str(admin.pk),
        "content_type_id": str(ContentType.objects.get_for_model(User).pk),
        "app_label": "auth",
        "url": "no-such-page/",
        "request_id": str(change_request.pk),
        "username": admin.username,
        "uidb64": "MQ",
        "token": "no-such-token",
    }
    return World(production, root, values, secret)


def _sent_to_login(response: Any) -> bool:
    location = response.get("Location", "") if response.status_code == 302 else ""
    admin_login = reverse("admin:login")
    return location == LOGIN or location.startswith((f"{LOGIN}?", f"{admin_login}?next="))


def test_every_url_refuses_anonymous_visitors_but_the_public_ones(world: World) -> None:
    client = Client(REMOTE_ADDR=OUTSIDE)
    walked = routes(world.values)
    open_urls = []
    for route in walked:
        for method in ("get", *UNSAFE):
            response = getattr(client, method)(route.path)
            if route.pattern in PUBLIC:
                PUBLIC[route.pattern](method, response)
            # 405: the URL serves no such method (to anyone), so it is not open by it.
            elif not (_sent_to_login(response) or response.status_code in (401, 403, 405)):
                open_urls.append(f"{method.upper()} {route.path}: {response.status_code}")
    assert not open_urls, "open to anonymous visitors:\n" + "\n".join(open_urls)
    assert {r.pattern for r in walked} >= set(PUBLIC), "a public pattern is gone: update PUBLIC"
    assert Policy.objects.filter(deleted=False).count() == len(KINDS)  # nothing was done


# Paths that answer 404 whatever exists: the admin's "view on site" (users have no page
# on a site) and the charts of a config entry (config has no live series).
NOTHING_TO_REACH = ("/admin/r/", "/e/production/config/payments/series.json")


def test_the_walk_covers_every_pattern_and_reaches_real_objects(world: World) -> None:
    walked = routes(world.values)
    assert {r.pattern for r in walked} == all_patterns()
    assert any(r.pattern.startswith("api/v1/environments/") for r in walked)
    assert any(r.pattern.startswith("admin/auth/user/") for r in walked)
    session = Client()
    session.force_login(world.root)
    api = Client(headers={"Authorization": f"Bearer {world.token}"})
    missing = []
    for route in walked:
        if route.pattern in PUBLIC or route.pattern.endswith("(?P<url>.*)$"):
            continue
        response = (api if route.csrf_exempt else session).get(route.path)
        if response.status_code == 404 and not route.path.startswith(NOTHING_TO_REACH):
            missing.append(route.path)
    assert not missing, f"these paths reach nothing: fix values() in world: {missing}"


def test_the_admin_login_goes_through_the_throttled_login_page(world: World) -> None:
    client = Client()
    response = client.post(
        "/admin/login/?next=/admin/", {"username": "root", "password": "password-root"}
    )
    assert response.status_code == 302
    assert response["Location"] == f"{LOGIN}?next=/admin/"
    assert "_auth_user_id" not in client.session
    assert client.get("/admin/", follow=True).redirect_chain[-1][0].startswith(LOGIN)


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        ("Bearer s3cret-metrics", 200),
        ("Bearer s3cret-metric", 403),
        ("Bearer s3cret-metrics2", 403),
        ("bearer s3cret-metrics", 403),
        ("s3cret-metrics", 403),
        ("Basic s3cret-metrics", 403),
        ("", 403),
    ],
)
def test_with_a_metrics_token_only_that_exact_token_opens_metrics(
    client: Client, settings: Any, authorization: str, status: int
) -> None:
    settings.METRICS_TOKEN = "s3cret-metrics"
    headers = {"Authorization": authorization} if authorization else {}
    # With a token set, the address no longer matters: loopback needs it, outside may use it.
    for address in ("127.0.0.1", OUTSIDE):
        response = client.get("/metrics", REMOTE_ADDR=address, headers=headers)
        assert response.status_code == status, (address, authorization)


def _csrf_pair() -> tuple[str, str]:
    """A valid CSRF cookie value and the masked token a form or header sends with it."""
    request = RequestFactory().get("/")
    token = get_token(request)
    return request.META["CSRF_COOKIE"], token


def _refused_for_csrf(response: HttpResponse) -> bool:
    return response.status_code == 403 and b"CSRF verification failed" in response.content


def test_only_the_token_api_is_exempt_from_csrf(world: World) -> None:
    exempt = {r.pattern for r in routes(world.values) if r.csrf_exempt}
    assert exempt, "django-ninja marks its views exempt; the API tests below rely on knowing it"
    assert all(pattern.startswith("api/v1/") for pattern in exempt), exempt


def test_every_write_without_a_csrf_token_is_refused(world: World) -> None:
    cookie, token = _csrf_pair()
    unprotected, refused_with_token = [], []
    for route in routes(world.values):
        if route.csrf_exempt:
            continue  # the token API, which no session authenticates: see the tests below
        for method in UNSAFE:
            client = Client(enforce_csrf_checks=True)
            client.force_login(world.root)
            client.cookies["csrftoken"] = cookie
            before = stored_state()
            without = getattr(client, method)(route.path)
            # The probes are answered before any middleware, and only to GET.
            refused = (
                without.status_code == 405 if route.path in PROBES else _refused_for_csrf(without)
            )
            if not refused or stored_state() != before:
                unprotected.append(f"{method.upper()} {route.path}: {without.status_code}")
            # The same request with the token passes the check: the test can tell.
            with_token = getattr(client, method)(route.path, headers={"X-CSRFToken": token})
            if _refused_for_csrf(with_token) or with_token.status_code >= 500:
                refused_with_token.append(f"{method.upper()} {route.path}")
    assert not unprotected, "writes accepted without a CSRF token:\n" + "\n".join(unprotected)
    assert not refused_with_token, refused_with_token


def test_a_form_post_with_its_csrf_token_does_what_it_says(world: World) -> None:
    cookie, token = _csrf_pair()
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.root)
    client.cookies["csrftoken"] = cookie
    refused = client.post("/environments/new/", {"name": "staging"})
    accepted = client.post("/environments/new/", {"name": "staging", "csrfmiddlewaretoken": token})
    assert _refused_for_csrf(refused)
    assert accepted.status_code == 302
    assert Environment.objects.filter(name="staging").exists()


def test_a_session_cookie_never_authenticates_an_api_write(world: World) -> None:
    """A cross-site request rides the session cookie, never a bearer token: the API accepts
    only the token, so the cookie, with or without a CSRF token, writes nothing."""
    cookie, token = _csrf_pair()
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.root)
    client.cookies["csrftoken"] = cookie
    answered: dict[str, int] = {}
    for route in routes(world.values):
        if not route.csrf_exempt:
            continue
        for method in UNSAFE:
            for headers in ({}, {"X-CSRFToken": token}):
                before = stored_state()
                response = getattr(client, method)(
                    route.path, data="{}", content_type="application/json", headers=headers
                )
                assert stored_state() == before
                assert response.status_code in (401, 404, 405), (method, route.path)
                answered[f"{method.upper()} {route.pattern}"] = response.status_code
    assert answered["POST api/v1/environments/<environment>/policies"] == 401
    assert answered["PATCH api/v1/environments/<environment>/policies/<kind>/<name>"] == 401
    assert answered["DELETE api/v1/environments/<environment>/policies/<kind>/<name>"] == 401


def test_a_bearer_token_writes_without_a_csrf_token(world: World) -> None:
    client = Client(enforce_csrf_checks=True, headers={"Authorization": f"Bearer {world.token}"})
    base = "/api/v1/environments/production/policies"
    created = client.post(
        base, {"kind": "cache", "name": "fresh", "spec": {}}, content_type="application/json"
    )
    updated = client.patch(
        f"{base}/cache/fresh", {"spec": {"ttl": 5}}, content_type="application/json"
    )
    deleted = client.delete(f"{base}/cache/fresh")
    assert (created.status_code, updated.status_code, deleted.status_code) == (201, 200, 204)


@pytest.mark.parametrize(
    ("method", "path", "data", "expected"),
    [
        ("get", "/e/pro%00duction/live/", {}, "The address holds a NUL character"),
        ("get", "/audit/", {"object": "ap\x00i"}, 'The query parameter "object" holds'),
        (
            "post",
            "/e/production/rate_limit/api/delete/",
            {"reason": "gone\x00"},
            'The field "reason"',
        ),
    ],
)
def test_a_nul_character_anywhere_is_refused_before_it_reaches_a_query(
    client: Client,
    editor: User,
    production: Environment,
    system: Actor,
    method: str,
    path: str,
    data: dict[str, str],
    expected: str,
) -> None:
    do_create_policy(production, "rate_limit", "api", {"limit": 10}, system)
    client.force_login(editor)
    before = stored_state()
    response = getattr(client, method)(path, data)
    assert response.status_code == 400
    assert response.content.decode().startswith(expected)
    assert stored_state() == before
