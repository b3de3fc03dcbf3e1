from __future__ import annotations

import os
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
from controlplane.embedded_redis import RedisClusterServers, RedisServer
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


def _flush_postgresql_by_delete() -> None:
    """Empty PostgreSQL's tables with DELETE, not TRUNCATE, after each transactional test.

    TRUNCATE replaces every table's files (about 0.5 s for the ~40 tables on a busy
    machine); DELETE of the few rows a test leaves takes milliseconds. Both empty every
    table in one transaction (the foreign keys are deferred) and keep the sequences, as
    Django's flush without ``reset_sequences`` does.
    """
    from django.conf import settings as django_settings

    if django_settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        return
    from django.db.backends.postgresql.operations import DatabaseOperations

    truncate = DatabaseOperations.sql_flush

    def sql_flush(
        self: DatabaseOperations,
        style: Any,
        tables: Any,
        *,
        reset_sequences: bool = False,
        allow_cascade: bool = False,
    ) -> list[str]:
        if reset_sequences:
            return truncate(
                self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade
            )
        return [
            f"{style.SQL_KEYWORD('DELETE FROM')} {style.SQL_FIELD(self.quote_name(table))};"
            for table in tables
        ]

    DatabaseOperations.sql_flush = sql_flush  # type: ignore[method-assign, assignment]


_flush_postgresql_by_delete()


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


def use_redis(settings: Any, url: str) -> None:
    """Point the control plane (and clients built from its settings) at another Redis."""
    settings.REDIS_URL = url
    settings.EMBEDDED_REDIS = False  # else get_redis would start a server for that "path"


@pytest.fixture
def redis_client() -> redis.Redis:
    return get_redis()


@pytest.fixture
def disposable_redis(settings: Any, tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis server of the test's own, which the test may stop, restart or flush."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    use_redis(settings, server.url)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A three-master Redis Cluster on loopback ports, shared by the tests that use it."""
    cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


# These modules run against the suite's Redis server and again against a Redis
# Cluster (except tests that stop a server of their own). CONTROLPLANE_TEST_CLUSTER=false
# leaves the cluster runs out (.ci/run's second pass: they do not depend on its settings).
ON_CLUSTER_TOO = {
    "tests.client.test_breaker",
    "tests.client.test_cache",
    "tests.client.test_client",
    "tests.client.test_limiter",
    "tests.live.test_ingest",
    "tests.live.test_overrides",
    "tests.policies.test_publish",
    "tests.policies.test_reconcile",
}
CLUSTER_RUNS = os.environ.get("CONTROLPLANE_TEST_CLUSTER", "true").lower() != "false"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if (
        CLUSTER_RUNS
        and metafunc.module.__name__ in ON_CLUSTER_TOO
        and "disposable_redis" not in metafunc.fixturenames
    ):
        metafunc.parametrize("redis_backend", ["server", "cluster"], indirect=True)


@pytest.fixture(autouse=True)
def redis_backend(request: pytest.FixtureRequest, settings: Any) -> str:
    """``server``: the suite's Redis; ``cluster``: the three-master cluster."""
    backend: str = getattr(request, "param", "server")
    if backend == "cluster":
        use_redis(settings, request.getfixturevalue("redis_cluster").url)
    return backend


@pytest.fixture
def system() -> Actor:
    return Actor.system("tests")


@pytest.fixture
def production(system: Actor) -> Environment:
    return do_create_environment("production", system)


@pytest.fixture
def guarded(production: Environment) -> Environment:
    """Production whose changes wait for one other person's approval (change requests)."""
    production.approvals_required = 1
    production.save()
    return production


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
