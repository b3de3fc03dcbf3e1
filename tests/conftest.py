from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.contrib.auth.models import Group, User

from controlplane.accounts.actors import Actor
from controlplane.accounts.roles import Role, group_name
from controlplane.accounts.throttle import close_clients
from controlplane.embedded_redis import RedisServer
from controlplane.policies.actions import do_create_environment
from controlplane.policies.models import Environment
from controlplane.redis_connection import get_redis


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


@pytest.fixture(autouse=True)
def key_prefix(settings: Any) -> Iterator[str]:
    """Give every test its own Redis key prefix, and remove its keys afterwards."""
    prefix = "t" + uuid.uuid4().hex[:12]
    settings.REDIS_KEY_PREFIX = prefix
    yield prefix
    close_clients()
    try:
        client = get_redis()
        keys = list(client.scan_iter(match=f"*{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass  # a test that replaced Redis with a throw-away server


@pytest.fixture
def redis_client() -> redis.Redis:
    return get_redis()


@pytest.fixture
def disposable_redis(settings: Any, tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis server of the test's own, which the test may stop, restart or flush."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    settings.REDIS_URL = server.url
    settings.EMBEDDED_REDIS = False
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def system() -> Actor:
    return Actor.system("tests")


@pytest.fixture
def production(system: Actor) -> Environment:
    return do_create_environment("production", system)


def make_user(username: str, role: Role | None) -> User:
    """A user holding ``role`` through its group (the way admins grant roles)."""
    user = User.objects.create_user(username, password=f"password-{username}")
    if role is not None:
        user.groups.add(Group.objects.get(name=group_name(role)))
    return user


# The fixed cast: one user per role, and an outsider with none.
@pytest.fixture
def viewer(db: None) -> User:
    return make_user("alice", Role.VIEWER)


@pytest.fixture
def operator(db: None) -> User:
    return make_user("olga", Role.OPERATOR)


@pytest.fixture
def editor(db: None) -> User:
    return make_user("erin", Role.EDITOR)


@pytest.fixture
def admin(db: None) -> User:
    return make_user("adam", Role.ADMIN)


@pytest.fixture
def outsider(db: None) -> User:
    return make_user("oscar", None)
