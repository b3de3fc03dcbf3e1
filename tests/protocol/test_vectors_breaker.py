"""docs/protocol/vectors/scripts_breaker.json and breaker_machine.json against our code.

The script cases run the real breaker scripts (``scripts.load``) on the suite's
Redis at the Redis time each call gives (``lua_time.at_time``). The machine
cases drive a real ``CircuitBreaker`` of a started client against the same
Redis, on a clock of the case's own: the breaker modules' ``time`` and the
breaker scripts' ``TIME`` both read it, so nothing sleeps.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from controlplane.protocol import scripts
from tests.conftest import wait_for
from tests.protocol.lua_time import at_time

VECTORS = Path(__file__).resolve().parents[2] / "docs" / "protocol" / "vectors"
SCRIPT_CASES: list[dict[str, Any]] = json.loads(
    (VECTORS / "scripts_breaker.json").read_text(encoding="utf-8")
)["cases"]


@pytest.mark.parametrize("cases", [SCRIPT_CASES], ids=["scripts"])
def test_the_files_name_every_case_once_with_its_rule(cases: list[dict[str, Any]]) -> None:
    names = [case["name"] for case in cases]
    assert len(names) == len(set(names))
    assert all(case["rule"] for case in cases)


def substitute(value: str, tag: str) -> str:
    return value.replace("{P:E}", "{" + tag + "}")


# The script cases


def matches(expected: Any, actual: Any) -> bool:
    """Whether a reply (bytes, ints, None, lists) is what the vector's notation says."""
    if isinstance(expected, dict):
        if "json" in expected:
            return isinstance(actual, bytes) and json.loads(actual) == expected["json"]
        if "raw" in expected:
            return actual == expected["raw"].encode()
        if "pttl_max" in expected:
            return isinstance(actual, int) and 0 < actual <= expected["pttl_max"]
        raise AssertionError(f"unknown notation {expected!r}")
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(expected)
            and all(matches(e, a) for e, a in zip(expected, actual, strict=True))
        )
    if isinstance(expected, str):
        return actual == expected.encode()
    if isinstance(expected, bool):
        raise AssertionError("no booleans in replies")
    return bool(actual == expected)


@pytest.fixture
def raw_client(settings: Any) -> Iterator[redis.Redis]:
    """The suite's Redis with bytes replies (the script cases compare bytes)."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    yield client
    client.close()


@pytest.mark.parametrize("case", SCRIPT_CASES, ids=[case["name"] for case in SCRIPT_CASES])
def test_script_vector(case: dict[str, Any], raw_client: redis.Redis, key_prefix: str) -> None:
    tag = f"{key_prefix}:production"
    breakers = substitute("{P:E}:breakers", tag)
    probes = substitute("{P:E}:breaker-probes:payments", tag)
    events = substitute("{P:E}:breaker-events", tag)
    before = case["before"]
    if before["state"] is not None:
        raw_client.hset(breakers, "payments", before["state"]["raw"])
    for name, value in before.get("other_states", {}).items():
        raw_client.hset(breakers, name, value)
    if before["probes"] is not None:
        raw_client.set(probes, before["probes"]["value"], px=before["probes"]["pttl_ms"])
    listener = raw_client.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(events)
    wait_for(lambda: listener.get_message(timeout=0.01) is None and listener.subscribed)
    try:
        for index, call in enumerate(case["calls"]):
            where = f"call {index} ({call['script']})"
            seconds, microseconds = (int(part) for part in call["time"])
            script = at_time(scripts.load(call["script"]), seconds, microseconds)
            keys = [substitute(key, tag) for key in call["keys"]]
            args = [substitute(arg, tag) for arg in call["args"]]
            expected = call["reply"]
            if isinstance(expected, dict) and "error" in expected:
                with pytest.raises(redis.ResponseError, match=expected["error"]):
                    scripts.run(raw_client, script, keys, args, raw=True)
            else:
                reply = scripts.run(raw_client, script, keys, args, raw=True)
                assert matches(expected, reply), f"{where}: reply {reply!r}"
            stored = raw_client.hget(breakers, "payments")
            after = call["after"]
            if after["state"] is None:
                assert stored is None, where
            else:
                assert matches(after["state"], stored), f"{where}: stored {stored!r}"
                assert raw_client.pttl(breakers) == -1, where
            counter = raw_client.get(probes)
            if after["probes"] is None:
                assert counter is None, where
            else:
                assert counter == after["probes"]["value"].encode(), where
                assert 0 < int(raw_client.pttl(probes)) <= after["probes"]["pttl_max"], where
            raw_client.publish(events, "end of call")
            published = []
            while (message := listener.get_message(timeout=2)) is not None:
                if message["data"] == b"end of call":
                    break
                published.append(message["data"])
            else:
                raise AssertionError(f"{where}: the end-of-call marker never arrived")
            assert matches(call["published"], published), f"{where}: published {published!r}"
            assert all(message == stored for message in published), where
    finally:
        listener.close()
