"""A Redis stall (CLIENT PAUSE 2 s) and a kill (8 s) under a bounded load of sync requests
through three limiters, a cache and a breaker: a request waits on Redis at most once per
outage, not once per enforcer, and a breaker transition made during the outage reaches
Redis within a second of Redis answering again."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import redis

from controlplane.client import CircuitOpenError, Client
from controlplane.embedded_redis import RedisServer
from controlplane.protocol.breaker_state import BreakerState
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 0.25  # the client's Redis timeout
WORKERS = 3


class UpstreamError(Exception):
    pass


@dataclass
class Load:
    """Workers sending requests through every enforcer, each timed."""

    client: Client
    stop: threading.Event = field(default_factory=threading.Event)
    timings: list[tuple[float, float]] = field(default_factory=list)  # (start, seconds)
    unexpected: list[BaseException] = field(default_factory=list)

    def request(self, worker: int, n: int) -> None:
        for name in ("api", "search", "login"):
            self.client.limiter(name, limit=100_000, period=1, on_redis_error="local").hit(
                f"user:{worker}"
            )
        prices = self.client.cache("prices", ttl=60)
        if prices.get(f"sku-{n % 5}") is None:
            prices.set(f"sku-{n % 5}", n)
        self.client.breaker("inventory").call(lambda: "in stock")

    def run(self, worker: int) -> None:
        for n in range(20_000):  # bounded, and by the stop event
            if self.stop.wait(0.005):
                return
            started = time.monotonic()
            try:
                self.request(worker, n)
            except BaseException as exc:  # anything is a bug of the library
                self.unexpected.append(exc)
            self.timings.append((started, time.monotonic() - started))

    def between(self, begin: float, end: float) -> list[float]:
        return sorted(seconds for started, seconds in self.timings if begin <= started < end)


@pytest.fixture
def load(client_factory: Callable[..., Client], disposable_redis: RedisServer) -> Iterator[Load]:
    client = client_factory(timeout=TIMEOUT, start_timeout=5).start()
    load = Load(client)
    load.request(0, 0)  # every enforcer created before the outage
    workers = [threading.Thread(target=load.run, args=(n,)) for n in range(WORKERS)]
    for worker in workers:
        worker.start()
    try:
        wait_for(lambda: len(load.timings) > 30)
        yield load
    finally:
        load.stop.set()
        for worker in workers:
            worker.join(timeout=30)
    assert load.unexpected == []


def trip(client: Client) -> None:
    """Open the breaker ``payments`` with failing calls (a local transition)."""
    breaker = client.breaker("payments", minimum_calls=4, window_size=4, open_for=60)

    def fail() -> None:
        raise UpstreamError("down")

    for _ in range(4):
        with pytest.raises(UpstreamError):
            breaker.call(fail)
    with pytest.raises(CircuitOpenError):
        breaker.call(fail)


def shared_state(raw: redis.Redis, client: Client) -> str | None:
    document = raw.hget(client.keys.breakers, "payments")
    return None if document is None else BreakerState.decode(document).state


def assert_one_timeout_per_request(load: Load, begin: float, end: float) -> None:
    during = load.between(begin, end)
    assert len(during) > 100  # the load went on through the outage
    p99 = during[int(len(during) * 0.99)]
    assert p99 < 2 * TIMEOUT, during[-10:]
    # Only the requests in flight when Redis stopped answering waited for it, once each.
    assert len([s for s in during if s > 1.5 * TIMEOUT]) <= WORKERS, during[-10:]
    assert during[-1] < 4 * TIMEOUT, during[-10:]  # not one timeout per enforcer (5)


def test_a_stall_costs_a_request_one_timeout_and_transitions_are_shared_once_it_ends(
    load: Load,
    disposable_redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = load.client
    client.breaker("payments", minimum_calls=4, window_size=4, open_for=60)
    raw = redis.Redis.from_url(disposable_redis.url, socket_timeout=10)
    caplog.set_level(logging.INFO, logger="controlplane.client")
    begin = time.monotonic()
    raw.execute_command("CLIENT", "PAUSE", "2000", "ALL")
    wait_for(lambda: client.health.down, timeout=5)
    trip(client)  # during the stall: kept until Redis answers
    assert raw.ping()  # blocks until the pause ends
    back = time.monotonic()
    wait_for(lambda: shared_state(raw, client) == "open", timeout=5)
    assert time.monotonic() - back < 1.0
    wait_for(lambda: not client.health.down)
    assert_one_timeout_per_request(load, begin, back)

    messages = [r.getMessage() for r in caplog.records if r.name == "controlplane.client"]
    assert len([m for m in messages if m.startswith("Lost Redis (")]) == 1
    assert len([m for m in messages if " answers again after " in m]) == 1


def test_a_kill_of_8_s_costs_no_waiting_and_transitions_are_shared_once_it_is_back(
    load: Load, disposable_redis: RedisServer
) -> None:
    client = load.client
    client.breaker("payments", minimum_calls=4, window_size=4, open_for=60)
    begin = time.monotonic()
    disposable_redis.stop()
    wait_for(lambda: client.health.down, timeout=5)
    trip(client)
    threading.Event().wait(8.0 - (time.monotonic() - begin))  # the outage lasts 8 s
    disposable_redis.start()  # same port; returns once it answers PING
    back = time.monotonic()
    raw = redis.Redis.from_url(disposable_redis.url, socket_timeout=5)
    wait_for(lambda: shared_state(raw, client) == "open", timeout=5)
    assert time.monotonic() - back < 1.0
    assert_one_timeout_per_request(load, begin, back)
    wait_for(lambda: client.connected, timeout=10)  # the follower is back too


async def test_an_async_request_through_three_limiters_waits_one_timeout_in_a_stall(
    client_factory: Callable[..., Client], disposable_redis: RedisServer
) -> None:
    client = client_factory(timeout=TIMEOUT, start_timeout=5).start()
    limiters = [client.limiter(name, on_redis_error="local") for name in ("a", "b", "c")]
    assert [(await limiter.ahit("u")).source for limiter in limiters] == ["redis"] * 3
    raw = redis.Redis.from_url(disposable_redis.url, socket_timeout=10)
    raw.execute_command("CLIENT", "PAUSE", "1500", "ALL")
    started = time.monotonic()
    sources = [(await limiter.ahit("u")).source for limiter in limiters]
    took = time.monotonic() - started
    assert sources == ["local"] * 3
    assert took < 2 * TIMEOUT  # one timeout, then the other two skip Redis
    raw.ping()  # the pause is over
    wait_for(lambda: not client.health.down, timeout=5)
    assert (await limiters[0].ahit("u")).source == "redis"
