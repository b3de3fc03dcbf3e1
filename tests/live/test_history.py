"""Reading the fleet's live state: which seconds the overview's rates are made of."""

from __future__ import annotations

import json
import time

import pytest
import redis

from controlplane.live.history import (
    REPORT_GRACE,
    breaker_instances,
    read_history,
    read_snapshot,
    top_rejected,
)
from controlplane.live.ingest import process_entries
from controlplane.policies.models import Environment

pytestmark = pytest.mark.django_db


def test_a_second_counts_once_its_last_reports_had_time_to_arrive(
    production: Environment, redis_client: redis.Redis
) -> None:
    second = int(time.time()) - 3
    data = {"at": second + 0.95, "policies": {"breaker:payments": {"calls": 10}}}
    entry = {"type": "counters", "instance": "i1", "data": json.dumps(data)}
    process_entries(production, [("1-0", entry)])

    def calls(now: float) -> float:
        snapshot = read_snapshot(redis_client, production.keys(), now=now)
        return snapshot.rates_for("breaker:payments").counters.get("calls", 0.0)

    assert calls(second + 1 + REPORT_GRACE / 2) == 0  # other instances may still report
    assert calls(second + 1 + REPORT_GRACE) == 10


def test_rows_asked_for_get_only_their_breakers_states(
    production: Environment, redis_client: redis.Redis
) -> None:
    heartbeat = {"service": "shop", "revision": 0, "at": time.time()}
    redis_client.hset(production.keys().instances, "i1", json.dumps(heartbeat))
    for name, state in (("payments", "open"), ("search", "closed")):
        redis_client.hset(production.keys().live_breaker_states, f"{name}|i1", f"{state}|1")

    every = read_snapshot(redis_client, production.keys())
    one = read_snapshot(redis_client, production.keys(), policies=["breaker:payments"])

    assert every.breaker_states == {"payments": {"open": 1}, "search": {"closed": 1}}
    assert one.breaker_states == {"payments": {"open": 1}}


def test_garbage_in_the_live_hashes_costs_only_its_own_fields(
    production: Environment, redis_client: redis.Redis
) -> None:
    keys = production.keys()
    now = time.time()
    heartbeat = {"service": "shop", "revision": 0, "at": now}
    redis_client.hset(keys.instances, "i1", json.dumps(heartbeat))
    redis_client.hset(keys.instances, b"\xff", json.dumps(heartbeat))  # id not UTF-8
    redis_client.hset(keys.instances, "i2", b"\xff{")  # document not UTF-8
    redis_client.hset(keys.instances, "i3", json.dumps({**heartbeat, "pid": float("inf")}))
    redis_client.hset(keys.instances, "i4", json.dumps({**heartbeat, "connected": "false"}))
    redis_client.hset(keys.instances, "i5", json.dumps({**heartbeat, "host": "\ud800"}))
    redis_client.hset(keys.live_breaker_states, "payments|i1", "open|1")
    redis_client.hset(keys.live_breaker_states, "payments|i1\x00", "open|1")
    redis_client.hset(keys.live_breaker_states, b"payments|\xff", "open|1")
    redis_client.hset(keys.live_breaker_states, "search|i1", "ajar|1")
    redis_client.hset(keys.live_breaker_states, "checkout|i1", "open|nan")
    second = keys.live_second(int(now - REPORT_GRACE) - 1)
    redis_client.hset(second, "breaker:payments|calls", "10")
    redis_client.hset(second, "breaker:payments|failures", "many")
    redis_client.hset(second, "breaker:payments|slow", "inf")
    redis_client.hset(second, b"breaker:payments|\xff", "1")
    redis_client.hset(second, "breaker:payments|rejected", b"\xff")

    snapshot = read_snapshot(redis_client, keys, now=now)

    assert [i.instance for i in snapshot.instances] == ["i1"]
    assert snapshot.breaker_states == {"payments": {"open": 1}}
    assert snapshot.rates_for("breaker:payments").counters == {"calls": 10.0}
    assert breaker_instances(redis_client, keys, "payments") == [("i1", "open", 1.0)]
    history = read_history(redis_client, keys, "breaker:payments", ("calls", "failures"), 10)
    assert sum(history["calls"]) == 10 and sum(history["failures"]) == 0


def test_garbage_among_the_top_rejected_subjects_is_skipped(
    production: Environment, redis_client: redis.Redis
) -> None:
    key = production.keys().live_top_rejected("api", int(time.time()) // 60)
    members: dict[str | bytes, float] = {"user:7": 6, b"\xff": 9, "user:8": float("inf")}
    redis_client.zadd(key, members)  # type: ignore[type-var]

    assert top_rejected(redis_client, production.keys(), ["api"]) == {"api": [("user:7", 6.0)]}
