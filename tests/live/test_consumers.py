from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.layers import channel_layers, get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Group, User
from django.test import Client

from controlplane.accounts.actors import Actor
from controlplane.asgi import application
from controlplane.live import consumers
from controlplane.live.consumers import RECHECK_AFTER
from controlplane.live.push import group_name, overview_group, send_now
from controlplane.policies.actions import do_create_policy
from controlplane.policies.models import Environment
from tests.live.conftest import session_communicator

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def in_memory_layer(settings: Any) -> Iterator[None]:
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


async def test_anonymous_websocket_is_refused(production: Environment) -> None:
    communicator = WebsocketCommunicator(
        application,
        "/ws/live/production/",
        headers=[(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1")],
    )
    connected, code = await communicator.connect()
    assert not connected and code == 4401
    await communicator.disconnect()


async def test_cross_origin_websocket_is_refused(production: Environment, viewer: User) -> None:
    communicator = await session_communicator(viewer, origin=b"http://evil.example")
    connected, _ = await communicator.connect()
    assert not connected
    await communicator.disconnect()


async def test_user_without_a_role_is_refused(production: Environment, outsider: User) -> None:
    communicator = await session_communicator(outsider)
    connected, code = await communicator.connect()
    assert not connected and code == 4403
    await communicator.disconnect()


async def test_unknown_environment_is_refused(viewer: User, production: Environment) -> None:
    communicator = await session_communicator(viewer, "/ws/live/nowhere/")
    connected, code = await communicator.connect()
    assert not connected and code == 4404
    await communicator.disconnect()


async def test_overview_receives_rendered_rows_with_controls_for_operators_only(
    production: Environment, viewer: User, operator: User, system: Actor
) -> None:
    await database_sync_to_async(do_create_policy)(production, "breaker", "payments", {}, system)
    await database_sync_to_async(do_create_policy)(production, "cache", "prices", {}, system)
    as_viewer = await session_communicator(viewer)
    as_operator = await session_communicator(operator)
    assert (await as_viewer.connect())[0] and (await as_operator.connect())[0]

    await database_sync_to_async(send_now)("production", {"breaker:payments", "cache:prices"})

    viewer_html = await as_viewer.receive_from(timeout=15)
    operator_html = await as_operator.receive_from(timeout=15)
    for html in (viewer_html, operator_html):
        assert 'id="live-breaker-payments"' in html and 'hx-swap-oob="true"' in html
        assert 'id="live-cache-prices"' in html and 'id="sync-summary"' in html
    assert "data-act=" not in viewer_html
    assert 'data-act="breaker:payments"' in operator_html
    await as_viewer.disconnect()
    await as_operator.disconnect()


async def test_policy_page_receives_only_its_own_section(
    production: Environment, viewer: User, system: Actor
) -> None:
    await database_sync_to_async(do_create_policy)(production, "breaker", "payments", {}, system)
    page = "/ws/live/production/?policy=breaker:payments"
    communicator = await session_communicator(viewer, page)
    connected, _ = await communicator.connect()
    assert connected
    layer = get_channel_layer()
    await layer.group_send(
        group_name("production"), {"type": "live.changed", "changed": ["cache:other"]}
    )
    assert await communicator.receive_nothing(timeout=0.5)
    await layer.group_send(
        group_name("production"), {"type": "live.changed", "changed": ["breaker:payments"]}
    )
    html = await communicator.receive_from(timeout=15)
    assert html.startswith('<section class="card" id="policy-live" hx-swap-oob="true">')
    await communicator.disconnect()


async def _page(client: Client, user: User, path: str = "/ws/live/production/") -> Any:
    """A live page's websocket in the session ``client`` logs ``user`` into."""
    await database_sync_to_async(client.force_login)(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    page = WebsocketCommunicator(
        application,
        path,
        headers=[(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1"), (b"cookie", cookie)],
    )
    connected, _ = await page.connect()
    assert connected
    return page


async def _push_until_closed(page: Any, group: str, within: float) -> int:
    """Push to ``group`` until ``page`` is closed; return the close code."""
    layer = get_channel_layer()
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        await layer.group_send(group, {"type": "live.html", "html": "<p>push</p>"})
        output = await page.receive_output(timeout=5)
        if output["type"] == "websocket.close":
            code: int = output["code"]
            return code
        assert output == {"type": "websocket.send", "text": "<p>push</p>"}
        await asyncio.sleep(0.05)
    raise AssertionError(f"still open after {within}s")


async def test_logging_out_closes_the_live_websocket_within_seconds(
    production: Environment, viewer: User
) -> None:
    client = Client()
    page = await _page(client, viewer)
    viewers = overview_group("production", "viewer")
    await get_channel_layer().group_send(viewers, {"type": "live.html", "html": "<p>in</p>"})
    assert await page.receive_from(timeout=5) == "<p>in</p>"

    await database_sync_to_async(client.post)("/logout/")

    assert await _push_until_closed(page, viewers, within=RECHECK_AFTER + 2) == 4401
    await page.disconnect()


@pytest.fixture
def recheck_every_push(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumers, "RECHECK_AFTER", 0.0)


@pytest.mark.parametrize("change", ["deactivate", "remove_role"])
async def test_losing_access_closes_the_overview(
    production: Environment, viewer: User, recheck_every_push: None, change: str
) -> None:
    page = await _page(Client(), viewer)
    if change == "deactivate":
        viewer.is_active = False
        await database_sync_to_async(viewer.save)(update_fields=["is_active"])
    else:
        await database_sync_to_async(viewer.groups.clear)()
    code = await _push_until_closed(page, overview_group("production", "viewer"), within=1)
    assert code == (4401 if change == "deactivate" else 4403)
    await page.disconnect()


async def test_losing_access_closes_a_policy_page_without_rendering(
    production: Environment, viewer: User, system: Actor, recheck_every_push: None
) -> None:
    await database_sync_to_async(do_create_policy)(production, "breaker", "payments", {}, system)
    page = await _page(Client(), viewer, "/ws/live/production/?policy=breaker:payments")
    viewer.is_active = False
    await database_sync_to_async(viewer.save)(update_fields=["is_active"])
    await get_channel_layer().group_send(
        group_name("production"), {"type": "live.changed", "changed": ["breaker:payments"]}
    )
    assert await page.receive_output(timeout=5) == {"type": "websocket.close", "code": 4401}
    await page.disconnect()


async def test_an_operator_lowered_to_viewer_gets_the_viewers_pushes(
    production: Environment, operator: User, recheck_every_push: None
) -> None:
    page = await _page(Client(), operator)
    viewer_group = await database_sync_to_async(Group.objects.get)(name="Viewer")
    await database_sync_to_async(operator.groups.set)([viewer_group])
    layer = get_channel_layer()
    await layer.group_send(
        overview_group("production", "operator"), {"type": "live.html", "html": "<p>controls</p>"}
    )
    assert await page.receive_nothing(timeout=0.5)
    await layer.group_send(
        overview_group("production", "viewer"), {"type": "live.html", "html": "<p>rows</p>"}
    )
    assert await page.receive_from(timeout=5) == "<p>rows</p>"
    await page.disconnect()
