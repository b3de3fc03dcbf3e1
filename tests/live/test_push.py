"""The pusher, through the real channel layer (channels-redis on the test's Redis)."""

from __future__ import annotations

import time

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import Client

from controlplane.accounts.actors import Actor
from controlplane.asgi import application
from controlplane.live.push import LivePusher
from controlplane.policies.actions import do_create_policy
from controlplane.policies.models import Environment

pytestmark = pytest.mark.django_db(transaction=True)


async def test_many_changes_reach_a_viewer_as_a_few_coalesced_pushes(
    production: Environment, viewer: User, system: Actor
) -> None:
    for number in range(20):
        await database_sync_to_async(do_create_policy)(
            production, "breaker", f"b{number}", {}, system
        )
    client = Client()
    await database_sync_to_async(client.force_login)(viewer)
    communicator = WebsocketCommunicator(
        application,
        "/ws/live/production/",
        headers=[
            (b"origin", b"http://127.0.0.1"),
            (b"host", b"127.0.0.1"),
            (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()),
        ],
    )
    assert (await communicator.connect())[0]
    pusher = LivePusher()
    pusher.start()
    started = time.monotonic()
    for number in range(200):
        pusher.notify("production", {f"breaker:b{number % 20}"})

    first = await communicator.receive_from(timeout=15)
    latency = time.monotonic() - started
    pushes = [first]
    while not await communicator.receive_nothing(timeout=1.0):
        pushes.append(await communicator.receive_from(timeout=5))

    rows = {f"b{n}" for n in range(20) if any(f'id="live-breaker-b{n}"' in p for p in pushes)}
    assert rows == {f"b{n}" for n in range(20)}
    assert len(pushes) <= 3  # 200 notifications: the first at once, the rest coalesced
    assert latency < 5
    await communicator.disconnect()
