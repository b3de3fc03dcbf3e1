from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from django.conf import settings

from controlplane.accounts.actors import Actor
from controlplane.client import Client
from controlplane.policies.actions import do_create_policy, do_update_policy
from controlplane.policies.models import Environment, Policy
from controlplane.protocol.connection import connect, is_cluster


def subscribers(client: redis.Redis, channel: str) -> int:
    """How many connections listen on ``channel`` (on every node of a cluster)."""
    options = {"target_nodes": "all"} if is_cluster(client) else {}
    replies: Any = client.pubsub_numsub(channel, **options)
    return int(replies[0][1])


def make_client(**options: Any) -> Client:
    """A client of the test's Redis and key prefix (not started)."""
    options.setdefault("environment", "production")
    options.setdefault("service", "tests")
    options.setdefault("start_timeout", 5.0)
    url = options.pop("redis_url", settings.REDIS_URL)
    return Client(url, key_prefix=settings.REDIS_KEY_PREFIX, **options)


@pytest.fixture
def raw_redis(settings: Any) -> redis.Redis:
    """The test's Redis (server or cluster) with bytes replies, as the client reads them."""
    return connect(settings.REDIS_URL)


@pytest.fixture
def client_factory() -> Iterator[Callable[..., Client]]:
    """Build clients that are all closed at the end of the test."""
    made: list[Client] = []

    def factory(**options: Any) -> Client:
        client = make_client(**options)
        made.append(client)
        return client

    yield factory
    for client in made:
        client.close()


@pytest.fixture
def cp_client(client_factory: Callable[..., Client], production: Environment) -> Client:
    """A started client following the ``production`` environment."""
    return client_factory().start()


@pytest.fixture
def set_policy(production: Environment, system: Actor) -> Callable[..., Policy]:
    """Create or update a policy through the control plane's own actions."""

    def set_policy(kind: str, name: str, **spec: Any) -> Policy:
        existing = Policy.objects.filter(
            environment=production, kind=kind, name=name, deleted=False
        ).first()
        if existing is None:
            return do_create_policy(production, kind, name, spec, system)
        return do_update_policy(existing, spec, system)

    return set_policy
