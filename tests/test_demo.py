from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import redis

from controlplane import demo
from controlplane.policies.examples import load_examples
from controlplane.protocol.keys import KeyLayout
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

# The example payments breaker opens for 10s. With 8s phases the provider fails
# from 8s to 16s, so the breaker opens at about 9s and goes half-open at about
# 19s, while the provider recovers (16s to 24s): the probes succeed and it closes.
CYCLE_SECONDS = 8.0


def reports(client: redis.Redis, keys: KeyLayout, entry_type: str) -> list[dict[str, Any]]:
    return [
        json.loads(fields["data"])
        for _, fields in client.xrange(keys.reports)
        if fields["type"] == entry_type and fields["service"] == demo.SERVICE
    ]


def payments_states(client: redis.Redis, keys: KeyLayout) -> list[str]:
    """The states the payments breaker went to, in order, from its first opening on."""
    states = [
        data["to_state"]
        for data in reports(client, keys, "transition")
        if data["policy"] == "breaker:payments"
    ]
    return states[states.index("open") :] if "open" in states else []


def test_demo_traffic_shows_the_breaker_cycle_and_rate_limit_rejections(
    settings: Any, redis_client: redis.Redis
) -> None:
    load_examples()
    keys = KeyLayout("production", settings.REDIS_KEY_PREFIX)
    assert redis_client.hexists(keys.policies, "breaker:payments")
    stop = threading.Event()
    outcome: dict[str, Any] = {}

    def traffic() -> None:
        try:
            outcome["stats"] = demo.run(
                settings.REDIS_URL,
                "production",
                key_prefix=settings.REDIS_KEY_PREFIX,
                duration=60,
                stop_event=stop,
                cycle_seconds=CYCLE_SECONDS,
                seed=1,
            )
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=traffic, daemon=True)
    started = time.monotonic()
    thread.start()
    try:
        # The noisy user soon runs out of its api quota, and shows among the top rejected.
        api = wait_for(
            lambda: [
                counters
                for data in reports(redis_client, keys, "counters")
                if (counters := data["policies"].get("rate_limit:api", {})).get("rejected", 0)
            ],
            timeout=10,
            interval=0.2,
        )
        assert any(demo.NOISY_USER in counters["top_rejected"] for counters in api)
        # The provider fails: the breaker opens, goes half-open after open_for, and closes.
        wait_for(lambda: payments_states(redis_client, keys), timeout=20, interval=0.2)
        remaining = 36 - (time.monotonic() - started)
        states = wait_for(
            lambda: "closed" in (found := payments_states(redis_client, keys)) and found,
            timeout=remaining,
            interval=0.2,
        )
        assert states[0] == "open" and states[1] == "half_open"
        assert any(
            "cache:prices" in data["policies"] for data in reports(redis_client, keys, "counters")
        )
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome.get("error")
    stats = outcome["stats"]
    assert stats.ok > 0 and stats.rate_limited > 0 and stats.circuit_open > 0
    assert stats.upstream_errors > 0
