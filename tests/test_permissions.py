"""Every page tried as anonymous, outsider, viewer, operator, editor and admin."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from controlplane.accounts.actors import Actor
from controlplane.accounts.roles import ORDER, Role
from controlplane.policies.actions import do_create_policy, do_update_policy
from controlplane.policies.models import Environment

pytestmark = pytest.mark.django_db(transaction=True)

POLICY = "/e/production/rate_limit/api/"
# (method, path, least role that may use it)
PAGES: list[tuple[str, str, Role]] = [
    ("get", "/", Role.VIEWER),
    ("get", POLICY, Role.VIEWER),
    ("get", POLICY + "compare/?a=1&b=2", Role.VIEWER),
    ("get", "/audit/", Role.VIEWER),
    ("get", "/audit/export.csv", Role.VIEWER),
    ("get", "/audit/export.json", Role.VIEWER),
    ("get", "/e/production/rate_limit/new/", Role.EDITOR),
    ("post", "/e/production/rate_limit/new/", Role.EDITOR),
    ("get", POLICY + "edit/", Role.EDITOR),
    ("post", POLICY + "edit/", Role.EDITOR),
    ("post", POLICY + "versions/1/restore/", Role.EDITOR),
    ("post", POLICY + "delete/", Role.EDITOR),
    ("get", "/e/production/export.yaml", Role.VIEWER),
    ("get", "/e/production/import/", Role.EDITOR),
    ("post", "/e/production/import/", Role.EDITOR),
    ("get", "/e/production/live/", Role.VIEWER),
    ("get", "/e/production/instances/", Role.VIEWER),
    ("get", "/e/production/discovered/", Role.VIEWER),
    ("get", "/e/production/breaker/payments/events/", Role.VIEWER),
    ("post", "/e/production/override/", Role.OPERATOR),
    ("post", "/environments/new/", Role.ADMIN),
    ("get", "/tokens/", Role.ADMIN),
    ("post", "/tokens/", Role.ADMIN),
    ("get", "/admin/", Role.ADMIN),
    ("get", "/admin/auth/user/", Role.ADMIN),
]
CAST = ["anonymous", "outsider", "viewer", "operator", "editor", "admin"]


@pytest.fixture
def api(production: Environment, system: Actor) -> None:
    policy = do_create_policy(production, "rate_limit", "api", {"limit": 10}, system)
    do_update_policy(policy, {"limit": 20}, system)


def _expected(who: str, least: Role) -> int | str:
    if who == "anonymous":
        return "login"
    if who == "outsider":
        return 403
    return "ok" if ORDER.index(Role(who)) >= ORDER.index(least) else 403


@pytest.mark.parametrize("who", CAST)
@pytest.mark.parametrize(("method", "path", "least"), PAGES)
def test_permission_matrix(
    request: pytest.FixtureRequest,
    client: Client,
    api: None,
    who: str,
    method: str,
    path: str,
    least: Role,
) -> None:
    if who != "anonymous":
        user: User = request.getfixturevalue(who)
        client.force_login(user)
    response: Any = getattr(client, method)(path)
    expected = _expected(who, least)
    if expected == "login":
        assert response.status_code == 302
        assert response["Location"].startswith("/login/?next=")
    elif expected == 403:
        assert response.status_code == 403
    else:
        assert response.status_code in (200, 302, 422), response.status_code


@pytest.mark.parametrize(
    ("method", "path"),
    [("post", "/"), ("post", POLICY), ("get", POLICY + "delete/"), ("post", "/audit/")],
)
def test_wrong_method_is_refused(
    client: Client, admin: User, api: None, method: str, path: str
) -> None:
    client.force_login(admin)
    assert getattr(client, method)(path).status_code == 405


def test_navigation_shows_only_what_the_role_may_do(
    client: Client, viewer: User, editor: User, api: None
) -> None:
    client.force_login(viewer)
    as_viewer = client.get(POLICY).content.decode()
    client.force_login(editor)
    as_editor = client.get(POLICY).content.decode()
    assert "/edit/" not in as_viewer and "Restore" not in as_viewer and "New cache" not in as_viewer
    assert "/edit/" in as_editor and "Restore" in as_editor


WEBSOCKET = "/ws/live/production/"


@pytest.mark.parametrize("who", CAST)
async def test_websocket_permission_matrix(
    request: pytest.FixtureRequest, who: str, api: None
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
    communicator = WebsocketCommunicator(application, WEBSOCKET, headers=headers)
    connected, code = await communicator.connect()
    expected = _expected(who, Role.VIEWER)
    if expected == "ok":
        assert connected
    else:
        assert not connected and code == (4401 if expected == "login" else 4403)
    await communicator.disconnect()
