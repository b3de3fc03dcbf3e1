from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis

from controlplane.accounts.actors import Actor
from controlplane.live.ingest import GROUP, Ingestor, ensure_group, process_entries
from controlplane.live.models import BreakerEvent, DiscoveredName
from controlplane.live.state import RATE_WINDOW, read_history, read_snapshot
from controlplane.policies.actions import do_create_environment, do_create_policy
from controlplane.policies.models import Environment
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def _entry(kind: str, instance: str, data: dict[str, Any]) -> dict[str, str]:
    return {"type": kind, "instance": instance, "service": "checkout", "data": json.dumps(data)}


def _heartbeat(client: redis.Redis, environment: Environment, instance: str, revision: int) -> None:
    document = {
        "service": "checkout",
        "host": "h",
        "pid": 1,
        "library_version": "0.1.0",
        "revision": revision,
        "connected": True,
        "at": time.time(),
    }
    client.hset(environment.keys().instances, instance, json.dumps(document))


def test_counters_from_several_instances_are_summed_per_second(
    production: Environment, redis_client: redis.Redis
) -> None:
    at = time.time() - 2
    entries = [
        (
            "1-0",
            _entry(
                "counters",
                "a",
                {
                    "at": at,
                    "policies": {
                        "breaker:payments": {
                            "calls": 10,
                            "failures": 4,
                            "slow": 1,
                            "state": "closed",
                        },
                        "rate_limit:api": {
                            "allowed": 30,
                            "rejected": 6,
                            "top_rejected": {"user:7": 6},
                        },
                        "cache:prices": {"hits": 8, "misses": 2},
                    },
                },
            ),
        ),
        (
            "1-1",
            _entry(
                "counters",
                "b",
                {
                    "at": at,
                    "policies": {"breaker:payments": {"calls": 10, "failures": 6, "state": "open"}},
                },
            ),
        ),
    ]
    _heartbeat(redis_client, production, "a", 0)
    _heartbeat(redis_client, production, "b", 0)

    changed = process_entries(production, entries)

    assert changed.figures == {"breaker:payments", "rate_limit:api", "cache:prices"}
    assert changed.state == set()
    snapshot = read_snapshot(redis_client, production.keys(), now=at + 1.5)
    payments = snapshot.rates_for("breaker:payments")
    assert payments.counters["calls"] == 20
    assert payments.failure_rate == 50.0
    assert payments.calls_per_second == 20 / RATE_WINDOW
    assert snapshot.rates_for("cache:prices").hit_ratio == 80.0
    assert snapshot.breaker_states["payments"] == {"closed": 1, "open": 1}
    history = read_history(redis_client, production.keys(), "breaker:payments", ("calls",), 10)
    assert sum(history["calls"]) == 20


def test_transitions_are_stored_as_events(production: Environment) -> None:
    changes = process_entries(
        production,
        [
            (
                "1-0",
                _entry(
                    "transition",
                    "a",
                    {
                        "policy": "breaker:payments",
                        "from_state": "closed",
                        "to_state": "open",
                        "reason": "failure_rate",
                        "failure_rate": 62.5,
                        "at": time.time(),
                    },
                ),
            )
        ],
    )
    assert changes.state == {"breaker:payments"}  # pushed sooner than figures
    event = BreakerEvent.objects.get()
    assert (event.name, event.instance, event.to_state, event.failure_rate) == (
        "payments",
        "a",
        "open",
        62.5,
    )


def test_discovered_names_are_recorded_unless_managed(
    production: Environment, system: Actor
) -> None:
    do_create_policy(production, "breaker", "managed", {}, system)
    process_entries(
        production,
        [
            (
                "1-0",
                _entry("discovered", "a", {"policy": "breaker:new", "defaults": {"open_for": 5}}),
            ),
            ("1-1", _entry("discovered", "a", {"policy": "breaker:managed", "defaults": {}})),
        ],
    )
    assert [(d.kind, d.name, d.defaults) for d in DiscoveredName.objects.all()] == [
        ("breaker", "new", {"open_for": 5})
    ]


def test_malformed_entries_are_skipped(production: Environment) -> None:
    changed = process_entries(
        production,
        [
            ("1-0", {"type": "counters", "instance": "a", "data": "{not json"}),
            ("1-1", {"type": "counters", "instance": "a", "data": "[]"}),
        ],
    )
    assert changed.all == set()


def test_two_replicas_process_each_report_once(
    production: Environment, system: Actor, redis_client: redis.Redis
) -> None:
    # Two environments: on a cluster their streams live in different hash slots.
    staging = do_create_environment("staging", system)
    streams = [production.keys().reports, staging.keys().reports]
    for stream in streams:
        ensure_group(redis_client, stream)
    first, second = Ingestor(block_ms=50), Ingestor(block_ms=50)
    second.consumer += "-b"
    first.start()
    second.start()
    try:
        for number in range(40):
            redis_client.xadd(
                streams[number % 2],
                _entry(
                    "transition",
                    f"i{number}",
                    {"policy": "breaker:payments", "from_state": "closed", "to_state": "open"},
                ),
            )
        wait_for(lambda: first.processed + second.processed == 40)
        assert BreakerEvent.objects.filter(environment=production).count() == 20
        assert BreakerEvent.objects.filter(environment=staging).count() == 20
        for stream in streams:
            assert redis_client.xpending(stream, GROUP)["pending"] == 0
    finally:
        first.stop()
        second.stop()
