"""Reading the fleet's live state: which seconds the overview's rates are made of."""

from __future__ import annotations

import json
import time

import pytest
import redis

from controlplane.live.ingest import process_entries
from controlplane.live.state import REPORT_GRACE, read_snapshot
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
