"""Every page tried as anonymous, outsider, viewer, operator, editor and admin, and
again by users whose role differs by environment (``tests/scoping.py``).

The matrix is checked against the URL patterns themselves: a pattern added later
that is in no matrix (this one, or the API's in ``tests/api/test_permissions.py``)
fails ``test_every_url_pattern_is_in_a_permission_matrix``. A refused request must
also have changed nothing, in the database or in Redis.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from django.apps import apps
from django.contrib.auth.models import User
from django.test import Client
from django.urls import resolve
from django.utils import timezone

from controlplane.accounts.actions import do_create_token
from controlplane.accounts.actors import Actor
from controlplane.accounts.roles import Role, includes
from controlplane.alerts.actions import do_create_rule
from controlplane.live.models import DiscoveredName
from controlplane.policies.actions import do_create_policy, do_update_policy
from controlplane.policies.models import Environment
from controlplane.policies.overrides import do_set_override
from controlplane.policies.requests import Proposal, open_request
from controlplane.webhooks.delivery import send_test
from controlplane.webhooks.models import Delivery, Webhook
from tests.api.test_permissions import ENDPOINTS as API_ENDPOINTS
from tests.scoping import HELD, scoped_cast
from tests.test_security import all_patterns

pytestmark = pytest.mark.django_db(transaction=True)

POLICY = "/e/production/rate_limit/api/"
# (method, path, least role that may use it, what that role gets); ``{discovered}``
# and ``{token}`` are filled in from the ``world`` fixture.
PAGES: list[tuple[str, str, Role, int]] = [
    ("get", "/", Role.VIEWER, 200),
    ("get", "/policies/", Role.VIEWER, 200),
    ("get", POLICY, Role.VIEWER, 200),
    ("get", POLICY + "compare/?a=1&b=2", Role.VIEWER, 200),
    ("get", POLICY + "series.json", Role.VIEWER, 200),
    ("get", "/audit/", Role.VIEWER, 200),
    ("get", "/audit/export.csv", Role.VIEWER, 200),
    ("get", "/audit/export.json", Role.VIEWER, 200),
    ("get", "/e/production/rate_limit/new/", Role.EDITOR, 200),
    ("post", "/e/production/rate_limit/new/", Role.EDITOR, 422),
    ("get", POLICY + "edit/", Role.EDITOR, 200),
    ("post", POLICY + "edit/", Role.EDITOR, 422),
    ("get", POLICY + "versions/1/restore/", Role.EDITOR, 200),
    ("post", POLICY + "versions/1/restore/", Role.EDITOR, 422),  # no reason: nothing restored
    ("get", POLICY + "delete/", Role.EDITOR, 200),
    ("post", POLICY + "delete/", Role.EDITOR, 422),  # no reason: nothing deleted
    ("get", "/e/production/export.yaml", Role.VIEWER, 200),
    ("get", "/e/production/import/", Role.EDITOR, 200),
    ("post", "/e/production/import/", Role.EDITOR, 422),
    ("get", "/e/production/live/", Role.VIEWER, 200),
    ("get", "/e/production/live/sparklines.json", Role.VIEWER, 200),
    ("get", "/e/production/instances/", Role.VIEWER, 200),
    ("get", "/e/production/revisions/1/rollout/", Role.VIEWER, 200),
    ("get", "/e/production/discovered/", Role.VIEWER, 200),
    ("post", "/e/production/discovered/{discovered}/adopt/", Role.EDITOR, 302),
    ("get", "/e/production/breaker/payments/events/", Role.VIEWER, 200),
    ("post", "/e/production/override/", Role.OPERATOR, 302),
    ("post", "/environments/new/", Role.ADMIN, 302),
    ("get", "/tokens/", Role.ADMIN, 200),
    ("post", "/tokens/", Role.ADMIN, 200),
    ("post", "/tokens/{token}/revoke/", Role.ADMIN, 302),
    ("get", "/users/", Role.ADMIN, 200),
    ("get", "/users/new/", Role.ADMIN, 200),
    ("post", "/users/new/", Role.ADMIN, 422),  # no username: nobody created
    ("get", "/users/adam/", Role.ADMIN, 200),
    ("post", "/users/adam/", Role.ADMIN, 422),  # no role left to the last admin: refused
    ("post", "/users/adam/invite/", Role.ADMIN, 422),  # has a password: no new invite
    ("post", "/users/adam/deactivate/", Role.ADMIN, 422),  # no reason, and oneself
    ("post", "/users/adam/reactivate/", Role.ADMIN, 422),  # active already
    ("get", "/e/production/settings/", Role.ADMIN, 200),
    ("post", "/e/production/settings/", Role.ADMIN, 422),  # no values: nothing saved
    ("get", "/admin/", Role.ADMIN, 200),
    ("get", "/admin/auth/user/", Role.ADMIN, 200),
    ("get", "/requests/", Role.VIEWER, 200),
    ("get", "/requests/{request}/", Role.VIEWER, 200),
    ("post", "/requests/{request}/act/", Role.EDITOR, 302),  # no action: refused, back to it
    ("get", "/e/production/webhooks/", Role.ADMIN, 200),
    ("post", "/e/production/webhooks/", Role.ADMIN, 422),  # no values: nothing added
    ("get", "/e/production/webhooks/hook/", Role.ADMIN, 200),
    ("get", "/e/production/webhooks/hook/remove/", Role.ADMIN, 200),
    ("post", "/e/production/webhooks/hook/remove/", Role.ADMIN, 302),
    ("post", "/e/production/webhooks/hook/enabled/", Role.ADMIN, 302),  # no value: refused
    ("post", "/e/production/webhooks/hook/test/", Role.ADMIN, 302),
    ("post", "/e/production/webhooks/hook/deliveries/{delivery}/redeliver/", Role.ADMIN, 302),
    ("get", "/e/production/alerts/", Role.ADMIN, 200),
    ("post", "/e/production/alerts/", Role.ADMIN, 422),  # no values: nothing added
    ("get", "/e/production/alerts/{rule}/remove/", Role.ADMIN, 200),
    ("post", "/e/production/alerts/{rule}/remove/", Role.ADMIN, 302),
    ("post", "/e/production/alerts/{rule}/enabled/", Role.ADMIN, 302),  # no value: refused
]
# API endpoints the API's matrix does not try (same columns, under /api/v1).
API: list[tuple[str, str, Role, int]] = [
    ("delete", "/environments/production/overrides/rate_limit/api?reason=over", Role.OPERATOR, 204),
]
# Patterns in no matrix, and why.
UNRANKED: dict[str, str] = {
    "healthz": "probe, open to all (tests/test_security.py, tests/test_health.py)",
    "readyz": "probe, open to all (tests/test_security.py, tests/test_health.py)",
    "metrics": "its own token or address list (tests/test_health.py)",
    "login/": "where everyone starts",
    "logout/": "ends whatever session there is",
    "api/v1/": "django-ninja's root: 404 for everyone",
    "api/v1/openapi.json": "the API's schema, open (tests/test_security.py)",
    "users/invite/<uidb64>/<token>/": "an invite: its token is the key (accounts/test_users.py)",
}
# Every admin page sits behind one gate, the admin site's has_permission (the admin
# role): tried above through /admin/ and /admin/auth/user/.
ADMIN_SITE = "admin/"
CAST = ["anonymous", "outsider", "viewer", "operator", "editor", "admin"]


@pytest.fixture
def world(production: Environment, system: Actor) -> dict[str, str]:
    policy = do_create_policy(production, "rate_limit", "api", {"limit": 10}, system)
    do_update_policy(policy, {"limit": 20}, system)
    discovered = DiscoveredName.objects.create(
        environment=production, kind="cache", name="found", last_seen=timezone.now()
    )
    token, _ = do_create_token("robot", Role.EDITOR, system)
    do_set_override(production, "rate_limit", "api", "bypass", system, "load test")
    change = Proposal("update", "rate_limit", "api", {"limit": 30})
    request = open_request(production, [change], system, "change request")
    return {
        "discovered": str(discovered.pk),
        "token": str(token.pk),
        "request": str(request.pk),
        "delivery": _webhook_delivery(production.name),
        "rule": _alert_rule(production),
    }


def _alert_rule(environment: Environment) -> str:
    """An alert rule of ``environment``: its id."""
    rule = do_create_rule(environment, "slow", "breaker_open", Actor.system("tests"), minutes=5)
    return str(rule.pk)


def _webhook_delivery(environment: str) -> str:
    """A webhook ``hook`` in ``environment`` with one delivery (a test event): its id."""
    webhook = Webhook.objects.create(
        environment=environment, name="hook", url="https://hooks.example.com/services/T0/B0/x"
    )
    send_test(webhook)
    return str(Delivery.objects.get(webhook=webhook).pk)


def _expected(who: str, least: Role) -> int | str:
    if who == "anonymous":
        return "login"
    if who == "outsider":
        return 403
    return "ok" if includes(Role(who), least) else 403


def stored(redis_client: redis.Redis, prefix: str) -> dict[str, Any]:
    """Everything a request could change: every row of the project's apps, every key."""
    rows: dict[str, Any] = {
        model._meta.label: sorted(map(repr, model.objects.values_list()))
        for model in apps.get_models()
        if model._meta.app_label
        in ("accounts", "audit", "policies", "live", "auth", "webhooks", "alerts")
    }
    keys = sorted(redis_client.scan_iter(match=f"*{prefix}:*", count=1000))
    return {**rows, "redis": [(key, redis_client.dump(key)) for key in keys]}


@pytest.mark.parametrize("who", CAST)
@pytest.mark.parametrize(("method", "path", "least", "allowed"), PAGES)
def test_permission_matrix(
    request: pytest.FixtureRequest,
    client: Client,
    world: dict[str, str],
    redis_client: redis.Redis,
    key_prefix: str,
    who: str,
    method: str,
    path: str,
    least: Role,
    allowed: int,
) -> None:
    if who != "anonymous":
        user: User = request.getfixturevalue(who)
        client.force_login(user)
    expected = _expected(who, least)
    before = stored(redis_client, key_prefix) if expected != "ok" else None
    response: Any = getattr(client, method)(path.format(**world))
    if expected == "ok":
        assert response.status_code == allowed, response.status_code
        return
    if expected == "login":
        assert response.status_code == 302
        assert response["Location"].startswith("/login/?next=")
    else:
        assert response.status_code == 403
    assert stored(redis_client, key_prefix) == before, "a refused request changed something"


@pytest.mark.parametrize("who", ["nobody", *CAST[1:]])
@pytest.mark.parametrize(("method", "path", "least", "allowed"), API)
def test_api_permission_matrix_of_the_remaining_endpoints(
    request: pytest.FixtureRequest,
    client: Client,
    world: dict[str, str],
    redis_client: redis.Redis,
    key_prefix: str,
    system: Actor,
    who: str,
    method: str,
    path: str,
    least: Role,
    allowed: int,
) -> None:
    headers = {}
    if who != "nobody":
        user: User = request.getfixturevalue(who)
        # A token may carry any role; it acts with at most its creator's.
        _, secret = do_create_token(f"{who}-token", Role.ADMIN, Actor.of(user))
        headers["Authorization"] = f"Bearer {secret}"
    expected = "ok" if who not in ("nobody", "outsider") and includes(Role(who), least) else None
    before = stored(redis_client, key_prefix)
    response = getattr(client, method)("/api/v1" + path, headers=headers)
    if expected == "ok":
        assert response.status_code == allowed, response.content
        return
    assert response.status_code == (401 if who in ("nobody", "outsider") else 403)
    after = stored(redis_client, key_prefix)
    # Only the token's own "last used" time moves.
    after["accounts.ApiToken"] = before["accounts.ApiToken"] = None
    assert after == before, "a refused request changed something"


def _route(path: str) -> str:
    return resolve(path.split("?", 1)[0]).route


def test_every_url_pattern_is_in_a_permission_matrix(world: dict[str, str]) -> None:
    tried = {_route(path.format(**world)) for _, path, _, _ in PAGES}
    tried |= {_route("/api/v1" + path) for _, path, *_ in API_ENDPOINTS}
    tried |= {_route("/api/v1" + path) for _, path, *_ in API}
    untried = {
        pattern
        for pattern in all_patterns()
        if pattern not in tried and pattern not in UNRANKED and not pattern.startswith(ADMIN_SITE)
    }
    assert not untried, f"add these URL patterns to a permission matrix: {sorted(untried)}"
    assert tried.isdisjoint(UNRANKED), "a pattern in a matrix is listed as unranked too"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/"),
        ("post", "/policies/"),
        ("post", POLICY),
        ("post", "/audit/"),
    ],
)
def test_wrong_method_is_refused(
    client: Client, admin: User, world: dict[str, str], method: str, path: str
) -> None:
    client.force_login(admin)
    assert getattr(client, method)(path).status_code == 405


def test_navigation_shows_only_what_the_role_may_do(
    client: Client, viewer: User, editor: User, world: dict[str, str]
) -> None:
    client.force_login(viewer)
    as_viewer = client.get(POLICY).content.decode()
    client.force_login(editor)
    as_editor = client.get(POLICY).content.decode()
    assert "/edit/" not in as_viewer and "Restore" not in as_viewer and "New cache" not in as_viewer
    assert "/edit/" in as_editor and "Restore" in as_editor


@pytest.mark.parametrize("websocket", ["/ws/live/production/", "/ws/home/"])
@pytest.mark.parametrize("who", CAST)
async def test_websocket_permission_matrix(
    request: pytest.FixtureRequest, who: str, world: dict[str, str], websocket: str
) -> None:
    from channels.db import database_sync_to_async
    from channels.testing import WebsocketCommunicator

    from controlplane.asgi import application

    headers = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1")]
    if who != "anonymous":
        user: User = await database_sync_to_async(request.getfixturevalue)(who)
        client = Client()
        await database_sync_to_async(client.force_login)(user)
        headers.append((b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()))
    communicator = WebsocketCommunicator(application, websocket, headers=headers)
    connected, code = await communicator.connect()
    expected = _expected(who, Role.VIEWER)
    if expected == "ok":
        assert connected
    else:
        assert not connected and code == (4401 if expected == "login" else 4403)
    await communicator.disconnect()


# Roles per environment: each page of an environment (a change request's pages are
# about its environment) tried in production and in staging by users whose role there
# differs; the other pages once each.
SCOPED: list[tuple[str, str, str, str, Role, int]] = [
    (who, environment, method, path.replace("/e/production/", f"/e/{environment}/"), least, ok)
    for who in HELD
    for method, path, least, ok in PAGES
    # A change request's pages name no environment: one in each is tried.
    for environment in (
        ("production", "staging") if "/e/production/" in path or "{request}" in path else ("",)
    )
]


@pytest.fixture
def scoped_world(
    world: dict[str, str], production: Environment, system: Actor
) -> dict[str, dict[str, str]]:
    """The ``world`` again in staging, and the scoped cast; its fillings per environment."""
    cast = scoped_cast(system)
    policy = do_create_policy(cast.staging, "rate_limit", "api", {"limit": 10}, system)
    do_update_policy(policy, {"limit": 20}, system)
    discovered = DiscoveredName.objects.create(
        environment=cast.staging, kind="cache", name="found", last_seen=timezone.now()
    )
    do_set_override(cast.staging, "rate_limit", "api", "bypass", system, "load test")
    change = Proposal("update", "rate_limit", "api", {"limit": 30})
    request = open_request(cast.staging, [change], system, "change request")
    return {
        "production": world,
        "staging": {
            **world,
            "request": str(request.pk),
            "discovered": str(discovered.pk),
            "delivery": _webhook_delivery(cast.staging.name),
            "rule": _alert_rule(cast.staging),
        },
        "": world,
    }


@pytest.mark.parametrize(("who", "environment", "method", "path", "least", "allowed"), SCOPED)
def test_permission_matrix_honours_roles_per_environment(
    request: pytest.FixtureRequest,
    client: Client,
    scoped_world: dict[str, dict[str, str]],
    redis_client: redis.Redis,
    key_prefix: str,
    who: str,
    environment: str,
    method: str,
    path: str,
    least: Role,
    allowed: int,
) -> None:
    client.force_login(User.objects.get(username=who))
    held = HELD[who][environment]
    before = None if includes(held, least) else stored(redis_client, key_prefix)
    response: Any = getattr(client, method)(path.format(**scoped_world[environment]))
    if before is None:
        assert response.status_code == allowed, response.status_code
        return
    assert response.status_code == 403
    if environment and includes(HELD[who][""], least):  # refused there, not everywhere
        assert f"needs the {least.value} role in {environment}" in response.content.decode()
    assert stored(redis_client, key_prefix) == before, "a refused request changed something"


def test_pages_of_an_environment_offer_the_buttons_of_the_role_held_there(
    client: Client, scoped_world: dict[str, dict[str, str]]
) -> None:
    client.force_login(User.objects.get(username="stella"))
    production = client.get(POLICY).content.decode()
    staging = client.get(POLICY.replace("production", "staging")).content.decode()
    assert "/edit/" not in production and "Restore" not in production
    assert "/edit/" in staging and "Restore" in staging
    assert 'id="act-panel"' not in client.get("/e/production/live/").content.decode()
    assert 'id="act-panel"' in client.get("/e/staging/live/").content.decode()
    listing = client.get("/policies/").content.decode()
    production_card, staging_card = listing.split('id="env-staging"')
    assert "/e/production/rate_limit/new/" not in production_card
    assert "/e/staging/rate_limit/new/" in staging_card
    # Navigation: editing somewhere, but administering needs the admin role everywhere.
    assert "API tokens" not in listing and "viewer, editor in staging" in listing


def test_lists_show_only_the_environments_the_user_may_view(
    client: Client, scoped_world: dict[str, dict[str, str]]
) -> None:
    client.force_login(User.objects.get(username="sam"))
    listing = client.get("/policies/").content.decode()
    home = client.get("/").content.decode()
    assert 'id="env-staging"' in listing and 'id="env-production"' not in listing
    assert 'id="home-staging"' in home and 'id="home-production"' not in home


@pytest.mark.parametrize(
    ("environment", "code"), [("production", 4403), ("staging", None)], ids=str
)
async def test_websocket_of_an_environment_needs_a_role_there(
    scoped_world: dict[str, dict[str, str]], environment: str, code: int | None
) -> None:
    from channels.db import database_sync_to_async

    from tests.live.conftest import session_communicator

    sam = await database_sync_to_async(User.objects.get)(username="sam")
    communicator = await session_communicator(sam, f"/ws/live/{environment}/")
    connected, refused = await communicator.connect()
    assert (connected, refused) == ((False, code) if code else (True, None))
    await communicator.disconnect()
