"""The pusher: coalescing through the real channel layer, and what a push leaves out."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.layers import channel_layers
from django.contrib.auth.models import User

from controlplane.accounts.actors import Actor
from controlplane.live import push
from controlplane.live.ingest import process_entries
from controlplane.live.push import LivePusher, send_now
from controlplane.policies.actions import do_create_policy
from controlplane.policies.models import Environment
from controlplane.redis_connection import get_redis
from tests.live.conftest import session_communicator

pytestmark = pytest.mark.django_db(transaction=True)


async def test_many_changes_reach_a_viewer_as_a_few_coalesced_pushes(
    production: Environment, viewer: User, system: Actor
) -> None:
    for number in range(20):
        await database_sync_to_async(do_create_policy)(
            production, "breaker", f"b{number}", {}, system
        )
    communicator = await session_communicator(viewer)
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


@pytest.fixture
def in_memory_layer(settings: Any) -> Iterator[None]:
    """A layer of this test's own: no other test run's pushes reach its viewers."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture
def nothing_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pusher's record of what viewers have starts empty (it is kept per process)."""
    monkeypatch.setattr(push, "_sent", push._Sent())


def _counters(environment: Environment, policies: dict[str, dict[str, Any]]) -> None:
    heartbeat = {"service": "shop", "revision": environment.revision, "at": time.time()}
    get_redis().hset(environment.keys().instances, "i1", json.dumps(heartbeat))
    data = json.dumps({"at": time.time() - 2, "policies": policies})
    process_entries(environment, [("1-0", {"type": "counters", "instance": "i1", "data": data})])


async def test_a_figures_push_sends_only_the_rows_whose_html_changed(
    production: Environment,
    viewer: User,
    system: Actor,
    in_memory_layer: None,
    nothing_sent: None,
) -> None:
    for name in ("b1", "b2"):
        await database_sync_to_async(do_create_policy)(production, "breaker", name, {}, system)
    communicator = await session_communicator(viewer)
    assert (await communicator.connect())[0]
    both = {"breaker:b1", "breaker:b2"}
    figures = partial(send_now, "production", both, state=False)

    await database_sync_to_async(figures)()
    first = await communicator.receive_from(timeout=15)
    assert 'id="live-breaker-b1"' in first and 'id="live-breaker-b2"' in first

    await database_sync_to_async(figures)()  # nothing changed: nothing is sent
    assert await communicator.receive_nothing(timeout=0.5)

    await database_sync_to_async(_counters)(production, {"breaker:b1": {"calls": 50}})
    await database_sync_to_async(figures)()
    second = await communicator.receive_from(timeout=15)
    assert 'id="live-breaker-b1"' in second and "<td>10.0</td>" in second  # 50 calls / 5 s
    assert 'id="live-breaker-b2"' not in second
    assert await communicator.receive_nothing(timeout=0.5)
    await communicator.disconnect()
