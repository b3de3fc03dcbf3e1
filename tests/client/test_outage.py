"""Redis stopped in the middle of traffic: callers see only the intended exceptions,
the log a few lines (no traceback), and once Redis is back the client catches up
without a restart."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest

from controlplane.client import CircuitOpenError, Client, RateLimitExceeded
from controlplane.embedded_redis import RedisServer
from controlplane.policies.models import Policy
from controlplane.policies.reconcile import reconcile_all
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


class UpstreamError(Exception):
    """The service's own failure, which must reach it unchanged."""


def test_traffic_through_a_redis_outage(
    set_policy: Callable[..., Policy],
    client_factory: Callable[..., Client],
    disposable_redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="controlplane.client")
    set_policy("breaker", "payments", minimum_calls=5, window_size=10, open_for=1)
    set_policy("rate_limit", "api", algorithm="token_bucket", limit=1000, period=1, burst=1000)
    set_policy("cache", "prices", ttl=0.2)
    set_policy("config", "banner", value="before")
    client = client_factory(start_timeout=5).start()
    breaker = client.breaker("payments")
    limiter = client.limiter("api")

    @client.cached("prices")
    def price(sku: str) -> int:
        return len(sku)

    @breaker
    def pay(declined: bool) -> None:
        if declined:
            raise UpstreamError("declined")

    seen: Counter[str] = Counter()
    unexpected: list[BaseException] = []
    stop = threading.Event()

    def traffic(worker: int) -> None:
        calls = 0
        while not stop.is_set() and calls < 20_000:
            calls += 1
            try:
                limiter.hit(f"user:{worker}")
                assert price(f"sku-{calls % 7}") == len(f"sku-{calls % 7}")
                client.config.get("banner", "default")
                pay(calls % 3 == 0)
                seen["ok"] += 1
            except (CircuitOpenError, RateLimitExceeded, UpstreamError) as exc:
                seen[type(exc).__name__] += 1
            except BaseException as exc:  # anything else is a bug of the library
                unexpected.append(exc)
            time.sleep(0.001)

    workers = [threading.Thread(target=traffic, args=(n,)) for n in range(3)]
    for worker in workers:
        worker.start()
    try:
        wait_for(lambda: seen["ok"] > 50)
        disposable_redis.stop()
        during = seen["ok"] + seen["UpstreamError"]
        wait_for(lambda: seen["ok"] + seen["UpstreamError"] > during + 200)  # traffic goes on
        wait_for(lambda: not client.connected)
        assert limiter.hit("user:probe").source == "local"  # the policy's on_redis_error

        disposable_redis.start()  # back, but empty: the reconciler restores it
        reconcile_all()
        wait_for(lambda: client.connected, timeout=15)
        set_policy("config", "banner", value="after")
        wait_for(lambda: client.config.get("banner") == "after", timeout=15)
        wait_for(lambda: limiter.hit("user:probe").source == "redis", timeout=15)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=30)

    assert unexpected == []
    assert seen["ok"] > 0 and seen["UpstreamError"] > 0
    lines = [record for record in caplog.records if record.name == "controlplane.client"]
    assert [line.getMessage() for line in lines if line.exc_info] == []
    assert len(lines) <= 30  # each cause once in a while, never a line per call
