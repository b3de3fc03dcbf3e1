"""docs/protocol/vectors/scripts_*.json (all but the breaker's) against the real Lua
scripts on a real Redis, run through ``controlplane.protocol.scripts``: the rate
limiters, the cache store, publish and read_store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.client import NEVER_DECODE

from controlplane.client.limiter import LimiterSettings
from controlplane.protocol import scripts
from tests.protocol.lua_time import SHIM, at_time

VECTORS = Path(__file__).resolve().parents[2] / "docs" / "protocol" / "vectors"
LUA = Path(__file__).resolve().parents[2] / "controlplane" / "protocol" / "lua"
FILES = ["scripts_limits.json", "scripts_cache.json", "scripts_publish.json"]
CONTENTS: dict[str, dict[str, Any]] = {
    name: json.loads((VECTORS / name).read_text(encoding="utf-8")) for name in FILES
}
CASES = [case for content in CONTENTS.values() for case in content["cases"]]


def test_the_files_name_every_case_once_with_its_rule() -> None:
    names = [case["name"] for case in CASES]
    assert len(names) == len(set(names))
    assert all(case["rule"] for case in CASES)


def test_every_script_but_the_breakers_has_cases() -> None:
    covered = {case["script"] for case in CASES}
    expected = {path.name for path in LUA.glob("*.lua") if not path.name.startswith("breaker_")}
    assert covered == expected


def test_the_documented_time_shim_is_the_one_the_runner_uses() -> None:
    shim = CONTENTS["scripts_limits.json"]["time_shim"]
    assert shim == SHIM.format(seconds="<seconds>", microseconds="<microseconds>")


def substitute(value: Any, prefix: str) -> Any:
    """``value`` with every ``<P>`` replaced by this run's key prefix."""
    if isinstance(value, str):
        return value.replace("<P>", prefix)
    if isinstance(value, list):
        return [substitute(item, prefix) for item in value]
    if isinstance(value, dict):
        return {name: substitute(item, prefix) for name, item in value.items()}
    return value


def as_arg(value: str | int | float | dict[str, str]) -> bytes | str:
    if isinstance(value, dict):
        return bytes.fromhex(value["hex"])
    return str(value)


def as_text(value: bytes | str) -> str | dict[str, str]:
    if isinstance(value, str):
        return value
    try:
        return value.decode()
    except UnicodeDecodeError:
        return {"hex": value.hex()}


def matches(reply: Any, expected: Any) -> bool:
    """Whether a raw reply (bytes for bulk strings) is what ``expected`` describes."""
    if isinstance(expected, dict) and "hash" in expected:
        if not isinstance(reply, list):
            return False
        pairs = {as_text(reply[i]): as_text(reply[i + 1]) for i in range(0, len(reply), 2)}
        return len(pairs) * 2 == len(reply) and pairs == expected["hash"]
    if isinstance(expected, dict) and "starts_with" in expected:
        return isinstance(reply, bytes) and reply.decode().startswith(expected["starts_with"])
    if isinstance(expected, list):
        return (
            isinstance(reply, list)
            and len(reply) == len(expected)
            and all(matches(r, e) for r, e in zip(reply, expected, strict=True))
        )
    if expected is None or isinstance(expected, int):
        return reply == expected and type(reply) is type(expected)
    return isinstance(reply, bytes) and as_text(reply) == expected


def stored_matches(text: bytes, expected: Any) -> bool:
    if isinstance(expected, int | float):  # a number as Redis wrote it, read as a double
        try:
            return float(text) == float(expected)
        except ValueError:
            return False
    return as_text(text) == expected


def raw_command(client: redis.Redis, *command: str) -> Any:
    """The reply of ``command`` with bulk strings as bytes, whatever the client decodes
    (HGETALL as a dict, through redis-py's reply callback)."""
    options = {NEVER_DECODE: True}
    return client.execute_command(*command, **options)


def messages_until_pong(pubsub: redis.client.PubSub) -> list[dict[str, Any]]:
    """What the subscription received since the last call: read up to a PING's reply."""
    pubsub.ping()
    received: list[dict[str, Any]] = []
    while True:
        message = pubsub.get_message(timeout=5)
        assert message is not None, "no pong within 5 s"
        if message["type"] == "pong":
            return received
        if message["type"] == "message":
            channel, data = message["channel"], message["data"]
            received.append({"channel": as_text(channel), "message": as_text(data)})


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_vector(case: dict[str, Any], redis_client: redis.Redis, key_prefix: str) -> None:
    case = substitute(case, key_prefix)
    for command in case["setup"]:
        redis_client.execute_command(*[as_arg(arg) for arg in command])
    pubsub = None
    if case.get("subscribe"):
        pubsub = redis_client.pubsub()
        pubsub.subscribe(*case["subscribe"])
        messages_until_pong(pubsub)  # the subscriptions are in place
    script = scripts.load(case["script"].removesuffix(".lua"))
    try:
        for number, call in enumerate(case["calls"]):
            timed = at_time(script, *call["time"]) if "time" in call else script
            args = [as_arg(arg) for arg in call["args"]]
            expected = call["reply"]
            if isinstance(expected, dict) and "error" in expected:
                with pytest.raises(redis.ResponseError) as error:
                    scripts.run(redis_client, timed, case["keys"], args, raw=True)
                # Redis 7: "WRONGTYPE ...", Redis 6: "ERR Error running script ... WRONGTYPE ...".
                assert expected["error"] in str(error.value)
            else:
                reply = scripts.run(redis_client, timed, case["keys"], args, raw=True)
                assert matches(reply, expected), f"call {number}: {reply!r}"
            if pubsub is not None:
                assert messages_until_pong(pubsub) == call["published"], f"call {number}"
    finally:
        if pubsub is not None:
            pubsub.close()
    for entry in case["state"]:
        key = entry["key"]
        assert redis_client.type(key) in (entry["type"], entry["type"].encode()), key
        if entry["type"] == "hash":
            stored = {as_text(f): v for f, v in raw_command(redis_client, "HGETALL", key).items()}
            assert set(stored) == set(entry["fields"]), key
            for field, value in entry["fields"].items():
                assert stored_matches(stored[field], value), f"{key} {field}: {stored[field]!r}"
        elif entry["type"] == "string":
            raw = raw_command(redis_client, "GET", key)
            assert stored_matches(raw, entry["value"]), f"{key}: {raw!r}"
        if entry["type"] != "none":
            pttl = redis_client.pttl(key)
            if entry["pttl"] == -1:
                assert pttl == -1, key
            else:
                assert entry["pttl"] - 1000 <= pttl <= entry["pttl"], f"{key}: PTTL {pttl}"
    if "period_s" in case:  # how the Python client formats ARGV[2] for this period
        settings = LimiterSettings(
            "fixed_window", 5, case["period_s"], None, "user", "", "local", "enforce", True
        )
        assert float(settings.argv[1]) == float(case["calls"][0]["args"][1])
