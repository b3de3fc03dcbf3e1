"""Live websockets and roles per environment: home cards go to the viewers of their
environment only, and ``close_sessions_of`` closes a user's open pages at once."""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth.models import User

from controlplane.accounts.actors import Actor
from controlplane.accounts.users import do_deactivate_user
from controlplane.live import push
from controlplane.live.consumers import CLOSE_UNAUTHENTICATED, close_sessions_of
from controlplane.live.push import HOME_CARD, send_now
from controlplane.policies.models import Environment
from tests.live.conftest import session_communicator
from tests.scoping import ScopedCast, scoped_cast

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def cast(production: Environment, system: Actor, monkeypatch: pytest.MonkeyPatch) -> ScopedCast:
    # The real channel layer (its keys are this run's), and no card counted as sent yet.
    monkeypatch.setattr(push, "_sent", push._Sent())
    return scoped_cast(system)


async def test_home_page_gets_the_cards_of_the_environments_its_viewer_may_view(
    cast: ScopedCast, viewer: User
) -> None:
    as_sam = await session_communicator(cast.sam, "/ws/home/")
    as_viewer = await session_communicator(viewer, "/ws/home/")
    assert (await as_sam.connect())[0] and (await as_viewer.connect())[0]

    for name in ("production", "staging"):  # in this order: production's card first
        await database_sync_to_async(send_now)(name, {HOME_CARD}, state=False)

    first = await as_viewer.receive_from(timeout=15)
    second = await as_viewer.receive_from(timeout=15)
    assert 'id="home-production"' in first and 'id="home-staging"' in second
    only = await as_sam.receive_from(timeout=15)
    assert 'id="home-staging"' in only
    assert await as_sam.receive_nothing(timeout=0.5)
    await as_sam.disconnect()
    await as_viewer.disconnect()


@pytest.mark.parametrize("path", ["/ws/home/", "/ws/live/staging/"])
async def test_close_sessions_of_closes_the_users_open_pages_only(
    cast: ScopedCast, viewer: User, path: str
) -> None:
    as_sam = await session_communicator(cast.sam, path)
    as_viewer = await session_communicator(viewer, path)
    assert (await as_sam.connect())[0] and (await as_viewer.connect())[0]

    await database_sync_to_async(close_sessions_of)(cast.sam.pk)

    closed: dict[str, Any] = await as_sam.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": CLOSE_UNAUTHENTICATED}
    assert await as_viewer.receive_nothing(timeout=0.5)
    await as_sam.disconnect()
    await as_viewer.disconnect()


async def test_deactivating_a_user_closes_their_open_pages(cast: ScopedCast, admin: User) -> None:
    as_sam = await session_communicator(cast.sam, "/ws/live/staging/")
    assert (await as_sam.connect())[0]

    await database_sync_to_async(do_deactivate_user)(cast.sam, Actor.of(admin), "left the team")

    closed: dict[str, Any] = await as_sam.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": CLOSE_UNAUTHENTICATED}
    await as_sam.disconnect()
