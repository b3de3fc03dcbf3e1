"""What the client uses below redis-py's client API exists, or its fallback is chosen;
and on the installed redis-py a rate-limit check is decided by Redis.

CI runs this file on the newest redis-py that ``pyproject.toml`` allows and again
on the lowest (``.ci/constraints-min.txt``, ``make test-min-deps``): the two runs
prove both ends of the declared range.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
import inspect
import logging
import os
import tomllib
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.client
import redis.cluster
from packaging.requirements import Requirement
from packaging.version import Version

from controlplane.client import Client
from controlplane.protocol import scripts
from controlplane.protocol.connection import connect, connect_async, is_cluster
from controlplane.protocol.scripts import INTERNALS, AsyncBatcher
from tests.conftest import use_redis

VERSION = Version(redis.__version__).release[:2]
# The cluster runs even where CONTROLPLANE_TEST_CLUSTER=false (as in tests/client/test_cluster.py):
# cluster nodes are where redis-py's versions differ most.
BACKENDS = ["server", "cluster"]


ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = ROOT / ".ci" / "constraints-min.txt"
# Set by `make test-min-deps`: this run must be on the pinned minimums.
ON_MINIMUMS = bool(os.environ.get("CONTROLPLANE_TEST_MIN_DEPS"))


def parameters(function: Callable[..., Any]) -> set[str]:
    return set(inspect.signature(function).parameters)


def declared(name: str) -> Requirement:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(line) for line in project["dependencies"]]
    return next(r for r in requirements if r.name == name)


def declared_redis() -> Requirement:
    return declared("redis")


def pinned() -> dict[str, Version]:
    """The exact pins of the constraints file (its caps on test tools are not floors)."""
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.partition("#")[0].strip()
        if line:
            requirement = Requirement(line)
            exact = [s.version for s in requirement.specifier if s.operator == "=="]
            if exact:
                pins[requirement.name] = Version(exact[0])
    return pins


def floor(requirement: Requirement) -> Version:
    (minimum,) = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
    return minimum


def test_the_installed_redis_py_is_in_the_declared_range() -> None:
    assert Version(redis.__version__) in declared_redis().specifier


def test_the_minimums_tested_are_the_declared_floors() -> None:
    assert "hiredis" in declared_redis().extras
    for name in ("redis", "google-re2"):
        assert pinned()[name] == floor(declared(name)), name


def test_this_run_is_on_the_minimums_or_within_the_range() -> None:
    """On ``make test-min-deps`` exactly the pins; on ``make test`` nothing below them."""
    pins = pinned()
    for name, pin in pins.items():
        installed = Version(importlib.metadata.version(name))
        assert installed == pin if ON_MINIMUMS else installed >= pin, name
    if ON_MINIMUMS:
        # hiredis's floor is the one the lowest redis-py's own `hiredis` extra declares.
        extra = [Requirement(r) for r in importlib.metadata.requires("redis") or []]
        (hiredis,) = [r for r in extra if r.name == "hiredis" and r.marker is not None]
        assert floor(hiredis) == pins["hiredis"]


def test_every_internal_used_without_a_fallback_exists() -> None:
    # controlplane.protocol.connection reads the policy store's bytes undecoded.
    assert redis.client.NEVER_DECODE == "NEVER_DECODE"
    sync_connection = redis.Connection
    assert {"timeout"} <= parameters(sync_connection.can_read)
    assert callable(sync_connection.send_packed_command)
    assert callable(sync_connection.send_command)
    assert callable(sync_connection.read_response)
    assert callable(sync_connection.disconnect)
    assert callable(redis.ConnectionPool.release)
    assert callable(redis.cluster.RedisCluster.get_node_from_key)
    assert callable(redis.cluster.RedisCluster.get_redis_connection)

    async_connection = redis.asyncio.Connection
    assert "check_health" in parameters(async_connection.send_packed_command)
    assert "nowait" in parameters(async_connection.disconnect)
    assert callable(async_connection.pack_commands)
    assert hasattr(async_connection(), "socket_timeout")
    assert inspect.iscoroutinefunction(redis.asyncio.ConnectionPool.release)
    cluster = redis.asyncio.cluster.RedisCluster
    assert inspect.iscoroutinefunction(cluster.initialize)
    assert callable(cluster.get_node_from_key)
    assert callable(redis.asyncio.cluster.ClusterNode.acquire_connection)


def test_each_optional_internal_is_found_exactly_where_redis_py_has_it() -> None:
    # get_connection(command_name) until 5.3; from 5.3 the name is deprecated.
    assert INTERNALS.pool_wants_command_name is (VERSION < (5, 3))
    assert INTERNALS.async_pool_wants_command_name is (VERSION < (5, 3))
    # ClusterNode.release from 7.0; ClusterNode.disconnect_if_needed from 7.2.
    assert INTERNALS.node_release is (VERSION >= (7, 0))
    assert INTERNALS.node_disconnect_if_needed is (VERSION >= (7, 2))
    # Every supported version reads asyncio replies through Connection._parser.
    assert INTERNALS.async_parser


async def test_pools_hand_out_connections_as_asked_and_without_a_deprecation(
    settings: Any,
) -> None:
    client = connect(settings.REDIS_URL)
    pool = client.connection_pool
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        connection = pool.get_connection(*scripts._GET_CONNECTION_ARGS)
    pool.release(connection)
    client.close()

    async_client = connect_async(settings.REDIS_URL)
    async_pool = async_client.connection_pool
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        async_connection = await async_pool.get_connection(*scripts._ASYNC_GET_CONNECTION_ARGS)
    await async_pool.release(async_connection)
    await async_client.aclose()


@pytest.mark.parametrize("redis_backend", BACKENDS, indirect=True)
async def test_a_limit_check_is_decided_by_redis(
    client_factory: Callable[..., Client], redis_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    # What is tested is which code path decides, not how fast: a generous timeout keeps
    # a loaded machine's first cluster round trip from falling back to the local bucket.
    first, second = client_factory(timeout=5.0), client_factory(timeout=5.0)
    assert is_cluster(first.redis) is (redis_backend == "cluster")
    with caplog.at_level(logging.WARNING, logger="controlplane.client"):
        decision = first.limiter("api", limit=5, period=60).hit("alice")
        async_decision = await first.limiter("api").ahit("alice")
        # Another client (its own connections) finds the quota in Redis, not in a process.
        shared = second.limiter("api", limit=5, period=60).peek("alice")
    await first.async_redis().aclose()  # Client.close() leaves this loop's connections
    assert (decision.source, decision.remaining) == ("redis", 4)
    assert (async_decision.source, async_decision.remaining) == ("redis", 3)
    assert (shared.source, shared.remaining) == ("redis", 3)
    # No fallback was logged by the check (other tests' clients may still log elsewhere).
    assert [r.getMessage() for r in caplog.records if r.module in ("limiter", "scripts")] == []


FALLBACKS = {
    "async_parser": "server",  # replies read with Connection.read_response()
    "node_release": "cluster",  # the batch through redis-py's cluster pipeline
    "node_disconnect_if_needed": "cluster",  # a node's connection used as it is
}


@pytest.mark.parametrize("missing", sorted(FALLBACKS))
async def test_each_fallback_gets_the_replies_too(
    missing: str, monkeypatch: pytest.MonkeyPatch, settings: Any, request: pytest.FixtureRequest
) -> None:
    if FALLBACKS[missing] == "cluster":
        use_redis(settings, request.getfixturevalue("redis_cluster").url)
    monkeypatch.setattr(scripts, "INTERNALS", dataclasses.replace(INTERNALS, **{missing: False}))
    # Unknown to Redis at first: the NOSCRIPT path runs too. It writes nothing.
    script = scripts.LuaScript(f"return {{ARGV[1], KEYS[1], '{missing}'}}")
    keys = [f"{settings.REDIS_KEY_PREFIX}:fallback:{n}" for n in range(6)]  # several nodes
    client = connect_async(settings.REDIS_URL)
    try:
        batcher = AsyncBatcher(client)
        futures = [batcher.submit(script, [key], [str(n)]) for n, key in enumerate(keys)]
        replies = await asyncio.gather(*futures)
    finally:
        await client.aclose()
    assert replies == [
        [str(n).encode(), key.encode(), missing.encode()] for n, key in enumerate(keys)
    ]
    assert batcher.batches == 1
