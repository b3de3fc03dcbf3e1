from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.layers import channel_layers, get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User

from controlplane.accounts.actors import Actor
from controlplane.asgi import application
from controlplane.live.push import group_name, send_now
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
