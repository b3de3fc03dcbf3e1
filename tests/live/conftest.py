from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import Client

from controlplane.accounts.actors import Actor
from controlplane.policies.actions import do_create_policy
from controlplane.policies.models import Environment
from tests.client.conftest import client_factory, set_policy

__all__ = ["client_factory", "session_communicator", "set_policy"]


async def session_communicator(
    user: User, path: str = "/ws/live/production/", origin: bytes = b"http://127.0.0.1"
) -> WebsocketCommunicator:
    """A live page's websocket in ``user``'s logged-in session, through the real router."""
    from controlplane.asgi import application

    client = Client()
    await database_sync_to_async(client.force_login)(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    return WebsocketCommunicator(
        application,
        path,
        headers=[(b"origin", origin), (b"host", b"127.0.0.1"), (b"cookie", cookie)],
    )


@pytest.fixture
def policies(production: Environment, system: Actor) -> None:
    """A breaker, a limiter and a cache in production: payments, api and prices."""
    do_create_policy(production, "breaker", "payments", {}, system)
    do_create_policy(production, "rate_limit", "api", {}, system)
    do_create_policy(production, "cache", "prices", {"ttl": 30}, system)
