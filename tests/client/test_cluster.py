"""What only a Redis Cluster does (most client tests also run on one: tests/conftest.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from redis.crc import key_slot

from controlplane.client import Client
from tests.conftest import use_redis


def test_on_a_cluster_a_stale_slot_map_is_followed_and_corrected(
    client_factory: Callable[..., Client], redis_cluster: Any, settings: Any
) -> None:
    use_redis(settings, redis_cluster.url)
    client = client_factory().start()
    limiter = client.limiter("api", limit=3, period=60)
    assert limiter.hit("user:1").source == "redis"  # the slot map is loaded
    cluster = client.redis.cluster_client()
    key = limiter.key_for("user:1")
    slot = key_slot(key.encode())
    right = cluster.get_node_from_key(key)
    wrong = next(node for node in cluster.get_primaries() if node.name != right.name)
    cluster.nodes_manager.slots_cache[slot] = [wrong]  # as after a resharding elsewhere
    # The wrong node answers MOVED; the call still counts, once, on the right node.
    decisions = [limiter.hit("user:1") for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]
    assert {d.source for d in decisions} == {"redis"}
    assert cluster.get_node_from_key(key).name == right.name  # the map was refreshed


async def test_async_checks_follow_a_stale_slot_map_too(
    client_factory: Callable[..., Client], redis_cluster: Any, settings: Any
) -> None:
    use_redis(settings, redis_cluster.url)
    client = client_factory()
    limiter = client.limiter("api", limit=3, period=60)
    assert (await limiter.ahit("user:1")).source == "redis"  # the slot map is loaded
    cluster = client.async_redis()
    key = limiter.key_for("user:1")
    right = cluster.get_node_from_key(key)
    wrong = next(node for node in cluster.get_primaries() if node.name != right.name)
    cluster.nodes_manager.slots_cache[key_slot(key.encode())] = [wrong]
    # Together, in one batch: the wrong node answers MOVED for the calls sent to it.
    decisions = await asyncio.gather(*(limiter.ahit("user:1") for _ in range(3)))
    assert sorted(d.allowed for d in decisions) == [False, True, True]
    assert {d.source for d in decisions} == {"redis"}
    assert cluster.get_node_from_key(key).name == right.name  # the map was refreshed
