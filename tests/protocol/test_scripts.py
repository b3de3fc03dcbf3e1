"""The one script runner: scripts loaded by name, run by SHA, sent whole after a restart."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from controlplane.embedded_redis import RedisServer
from controlplane.protocol import scripts
from controlplane.protocol.connection import connect, connect_async
from controlplane.protocol.documents import OverrideDocument
from controlplane.protocol.keys import KeyLayout
from controlplane.protocol.store import read_policy_store

ROOT = Path(__file__).resolve().parents[2]
ECHO = scripts.LuaScript("return {KEYS[1], ARGV[1]}")


@pytest.fixture
def server(disposable_redis: RedisServer) -> Iterator[redis.Redis]:
    """A client of a server of the test's own, whose scripts the test may flush."""
    client = connect(disposable_redis.url)
    yield client
    client.close()


def test_every_lua_script_is_in_one_folder() -> None:
    folders = {path.parent for path in (ROOT / "controlplane").rglob("*.lua")}
    assert folders == {ROOT / "controlplane" / "protocol" / "lua"}


def test_a_breaker_script_is_preceded_by_the_common_helpers() -> None:
    common = (ROOT / "controlplane/protocol/lua/breaker_common.lua").read_text()
    for name in ("breaker_read", "breaker_transition", "breaker_reset"):
        body = (ROOT / f"controlplane/protocol/lua/{name}.lua").read_text()
        assert scripts.load(name).source == common + "\n" + body
    assert scripts.load("limit_gcra").source == (
        (ROOT / "controlplane/protocol/lua/limit_gcra.lua").read_text()
    )
    assert scripts.load("publish") is scripts.load("publish")  # read once per process


@pytest.mark.parametrize("name", ["nope", "../publish", "publish.lua", ""])
def test_a_script_that_is_not_there_is_refused_by_name(name: str) -> None:
    with pytest.raises(ValueError, match="script name"):
        scripts.load(name)


def calls(client: redis.Redis) -> dict[str, int]:
    """Commands the server ran so far, by name (``script`` with its subcommands)."""
    stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    counted: dict[str, int] = {}
    for name, data in stats.items():
        command = name.removeprefix("cmdstat_").partition("|")[0]
        counted[command] = counted.get(command, 0) + int(data["calls"])
    return counted


def test_a_script_runs_again_after_the_server_lost_its_scripts(server: redis.Redis) -> None:
    assert scripts.run(server, ECHO, ["k"], ["one"]) == [b"k", b"one"]
    server.script_flush()
    before = calls(server)

    assert scripts.run(server, ECHO, ["k"], [2]) == [b"k", b"2"]

    after = calls(server)
    ran = {name: after[name] - before.get(name, 0) for name in ("evalsha", "eval", "script")}
    assert ran == {"evalsha": 1, "eval": 1, "script": 0}  # sent whole once, nothing more
    assert server.script_exists(ECHO.sha) == [True]  # the EVAL cached it


async def test_batched_calls_run_again_after_the_server_lost_their_scripts(
    disposable_redis: RedisServer,
) -> None:
    client = connect_async(disposable_redis.url)
    try:
        assert await scripts.arun(client, ECHO, ["k"], ["warm"]) == [b"k", b"warm"]
        await client.script_flush()
        batcher = scripts.batcher_for(client)
        batches = batcher.batches

        replies = await asyncio.gather(*(scripts.arun(client, ECHO, ["k"], [n]) for n in range(3)))

        assert replies == [[b"k", str(n).encode()] for n in range(3)]
        assert batcher.batches - batches == 1
        assert scripts.batcher_for(client) is batcher
    finally:
        await client.aclose()


def test_raw_replies_are_bytes_whatever_the_client_decodes(disposable_redis: RedisServer) -> None:
    client = connect(disposable_redis.url, decode_responses=True)
    try:
        assert scripts.run(client, ECHO, ["k"], ["v"]) == ["k", "v"]
        assert scripts.run(client, ECHO, ["k"], ["v"], raw=True) == [b"k", b"v"]
    finally:
        client.close()


def test_an_error_of_the_script_is_raised_and_the_connection_kept(server: redis.Redis) -> None:
    failing = scripts.LuaScript("return redis.error_reply('nope ' .. ARGV[1])")
    with pytest.raises(redis.ResponseError, match="nope 1"):
        scripts.run(server, failing, ["k"], ["1"])
    assert scripts.run(server, ECHO, ["k"], ["after"]) == [b"k", b"after"]


def test_the_policy_store_is_read_after_the_server_lost_its_scripts(server: redis.Redis) -> None:
    keys = KeyLayout("t", "production")
    override = OverrideDocument("breaker", "payments", 3, "forced_open", actor="ops")
    server.hset(keys.overrides, "breaker:payments", override.encode())
    read_policy_store(server, keys)
    server.script_flush()

    store = read_policy_store(server, keys)

    assert list(store.overrides) == ["breaker:payments"]
    assert store.overrides["breaker:payments"].document == override


@pytest.mark.parametrize("redis_backend", ["cluster"], indirect=True)
async def test_on_a_cluster_each_call_runs_on_the_node_of_its_key(settings: Any) -> None:
    keys = [f"{settings.REDIS_KEY_PREFIX}:script:{n}" for n in range(12)]  # several nodes
    sync_client = connect(settings.REDIS_URL)
    async_client = connect_async(settings.REDIS_URL)
    try:
        assert [scripts.run(sync_client, ECHO, [key], [key]) for key in keys] == [
            [key.encode(), key.encode()] for key in keys
        ]
        replies = await asyncio.gather(
            *(scripts.arun(async_client, ECHO, [key], [key]) for key in keys)
        )
        assert replies == [[key.encode(), key.encode()] for key in keys]
        nodes = {sync_client.get_node_from_key(key).name for key in keys}
        assert len(nodes) > 1
    finally:
        sync_client.close()
        await async_client.aclose()
