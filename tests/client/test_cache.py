"""The cache against a real Redis: hits, expiry, invalidation, stampedes, outages, policies."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from controlplane.client import Client
from controlplane.client.cache import (
    Cache,
    Entry,
    PickleSerializer,
    encode_envelope,
    make_digest,
)
from controlplane.embedded_redis import RedisServer
from controlplane.policies.models import Environment, Policy
from controlplane.protocol.schema import PolicyError
from tests.client.conftest import subscribers
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


class Upstream:
    """A user's slow or flaky upstream: counts its calls, thread-safely."""

    def __init__(self, delay: float = 0.0, failures: int = 0) -> None:
        self.calls = 0
        self.delay = delay
        self.failures = failures
        self._lock = threading.Lock()

    def _next(self) -> int:
        with self._lock:
            self.calls += 1
            return self.calls

    def sync(self) -> Callable[..., str]:
        def price(sku: str, currency: str = "EUR") -> str:
            n = self._next()
            if self.delay:
                time.sleep(self.delay)
            if n <= self.failures:
                raise ValueError(f"upstream failure {n}")
            return f"{sku}-{currency}-v{n}"

        return price

    def asynchronous(self) -> Callable[..., Any]:
        async def price(sku: str) -> str:
            n = self._next()
            if self.delay:
                await asyncio.sleep(self.delay)
            if n <= self.failures:
                raise ValueError(f"upstream failure {n}")
            return f"{sku}-v{n}"

        return price


def cache_keys(redis_client: redis.Redis, client: Client, name: str = "prices") -> list[Any]:
    pattern = "{" + f"{client.keys.prefix}:{client.keys.environment}:c:{name}:*"
    return sorted(redis_client.scan_iter(match=pattern.replace("{", "[{]"), count=1000))


# Hits, misses and expiry


def test_miss_then_hit_until_the_ttl_elapses(client_factory: Callable[..., Client]) -> None:
    client = client_factory()
    upstream = Upstream()
    price = client.cached("prices", ttl=0.3)(upstream.sync())

    assert price("a") == "a-EUR-v1"
    assert price("a") == "a-EUR-v1"
    assert price(sku="a", currency="EUR") == "a-EUR-v1"  # same call, bound by name
    assert price("b") == "b-EUR-v2"
    assert upstream.calls == 2
    time.sleep(0.35)  # the ttl elapsing is the behaviour under test
    assert price("a") == "a-EUR-v3"
    stats = client.cache("prices").stats()
    assert stats == {"hits": 2, "misses": 3, "stale_hits": 0, "local_hits": 0, "errors": 0}


def test_entry_key_and_envelope_follow_the_documented_format(
    client_factory: Callable[..., Client], raw_redis: redis.Redis
) -> None:
    client = client_factory()
    cache = client.cache("prices", ttl=30, stale_ttl=10, serializer="json")

    def quote(sku: str, qty: int = 1) -> dict[str, Any]:
        return {"sku": sku, "qty": qty, "prices": [1.5, 2]}

    cached_quote = cache.decorate()(quote)
    before = time.time()
    cached_quote("a")
    digest = make_digest(f"{__name__}.{quote.__qualname__}", (("sku", "a"), ("qty", 1)))
    key = client.keys.cache_entry("prices", 0, digest)
    raw = raw_redis.get(key)
    assert raw is not None
    version, code, created, fresh_until, stale_until = struct.unpack(">BBddd", raw[:26])
    assert (version, code) == (1, 2)
    assert before <= created <= time.time()
    assert fresh_until == pytest.approx(created + 30)
    assert stale_until == pytest.approx(created + 40)
    assert json.loads(raw[26:]) == {"sku": "a", "qty": 1, "prices": [1.5, 2]}
    pttl: int = raw_redis.pttl(key)  # type: ignore[assignment]
    assert 39_000 < pttl <= 40_000


def test_digest_is_stable_across_processes() -> None:
    key = (("sku", "a"), ("when", {"b": 2, "a": frozenset({"x", "y"})}), ("n", 1.5))
    here = make_digest("shop.price", key)
    program = (
        "from controlplane.client.cache import make_digest;"
        "print(make_digest('shop.price', (('sku', 'a'), ('when', {'a': frozenset({'y', 'x'}),"
        " 'b': 2}), ('n', 1.5))))"
    )
    for seed in ("1", "2"):
        output = subprocess.run(
            [sys.executable, "-c", program],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()
        assert output == here
    # The first test vector of docs/protocol.md, 11.3.
    assert make_digest("", "abc") == "0842dd69950d4929dc2d4a0406876d24"
    assert make_digest("shop.price", "abc") != make_digest("", "abc")
    assert make_digest("", 1) != make_digest("", "1") != make_digest("", 1.0)


def test_invalidate_drops_only_that_entry(client_factory: Callable[..., Client]) -> None:
    client = client_factory()
    upstream = Upstream()
    price = client.cached("prices", ttl=30)(upstream.sync())
    price("a")
    price("b", currency="USD")

    price.invalidate("b", "USD")

    assert price("a") == "a-EUR-v1"
    assert price("b", currency="USD") == "b-USD-v3"
    assert upstream.calls == 3


def test_get_set_delete_helpers(client_factory: Callable[..., Client]) -> None:
    cache = client_factory().cache("prices", ttl=30)
    assert cache.get(("sku", 1), "none") == "none"
    cache.set(("sku", 1), {"price": 3})
    assert cache.get(("sku", 1)) == {"price": 3}
    cache.delete(("sku", 1))
    assert cache.get(("sku", 1)) is None


# Policies


def test_generation_bump_invalidates_everything_across_two_clients(
    set_policy: Callable[..., Policy],
    client_factory: Callable[..., Client],
    production: Environment,
) -> None:
    set_policy("cache", "prices", ttl=30)
    first, second = client_factory().start(), client_factory().start()
    upstream = Upstream()
    function = upstream.sync()
    price_1 = first.cached("prices")(function)
    price_2 = second.cached("prices")(function)
    assert price_1("a") == price_2("a") == "a-EUR-v1"
    assert price_1("b") == price_2("b") == "b-EUR-v2"

    set_policy("cache", "prices", generation=1)
    wait_for(lambda: first.cache("prices").generation == second.cache("prices").generation == 1)

    assert price_2("a") == price_1("a") == "a-EUR-v3"
    assert price_1("b") == price_2("b") == "b-EUR-v4"
    assert upstream.calls == 4


def test_a_policy_change_of_ttl_applies_live(
    set_policy: Callable[..., Policy], cp_client: Client
) -> None:
    upstream = Upstream()
    price = cp_client.cached("prices", ttl=30)(upstream.sync())
    price("a")
    set_policy("cache", "prices", ttl=0.2)
    wait_for(lambda: cp_client.cache("prices").ttl == 0.2)
    time.sleep(0.25)  # the new, shorter ttl elapsing is the behaviour under test

    assert price("a") == "a-EUR-v2"  # written under ttl=30, expired by the new ttl
    assert price("a") == "a-EUR-v2"
    assert upstream.calls == 2


def test_disabled_cache_calls_the_function_every_time(
    set_policy: Callable[..., Policy], cp_client: Client, redis_client: redis.Redis
) -> None:
    upstream = Upstream()
    price = cp_client.cached("prices", ttl=30)(upstream.sync())
    set_policy("cache", "prices", enabled=False)
    wait_for(lambda: not cp_client.cache("prices").enabled)

    assert [price("a") for _ in range(3)] == ["a-EUR-v1", "a-EUR-v2", "a-EUR-v3"]
    assert cache_keys(redis_client, cp_client) == []

    set_policy("cache", "prices", enabled=True)
    wait_for(lambda: cp_client.cache("prices").enabled)
    assert price("a") == price("a") == "a-EUR-v4"


def test_disabled_by_code_default(client_factory: Callable[..., Client]) -> None:
    upstream = Upstream()
    price = client_factory().cached("prices", enabled=False)(upstream.sync())
    price("a")
    price("a")
    assert upstream.calls == 2


def test_bad_code_defaults_are_refused(client_factory: Callable[..., Client]) -> None:
    client = client_factory()
    with pytest.raises(PolicyError, match="ttl"):
        Cache(client, "prices", ttl=-1)
    with pytest.raises(PolicyError, match="colour"):
        Cache(client, "prices", colour="red")
    with pytest.raises(ValueError, match="serializer"):
        Cache(client, "prices", serializer="xml")
    with (
        pytest.warns(DeprecationWarning, match="write stale_ttl="),
        pytest.raises(ValueError, match=r"stale_ttl: given twice \(as stale and stale_ttl\)"),
    ):
        Cache(client, "prices", stale=1, stale_ttl=2)


def test_unmanaged_cache_is_reported_as_discovered(
    cp_client: Client, redis_client: redis.Redis
) -> None:
    cp_client.cache("prices", ttl=30, stale_ttl=5)

    def discovered() -> list[dict[str, Any]]:
        entries = redis_client.xrange(cp_client.keys.reports)
        return [
            json.loads(fields["data"]) for _, fields in entries if fields["type"] == "discovered"
        ]

    found = wait_for(discovered)
    assert found[0]["policy"] == "cache:prices"
    assert found[0]["defaults"]["ttl"] == 30.0
    assert found[0]["defaults"]["stale_ttl"] == 5.0


def test_collector_swaps_out_the_counters(client_factory: Callable[..., Client]) -> None:
    client = client_factory()  # not started: no reporter thread takes the counters
    cache = client.cache("prices", ttl=30)
    price = cache.decorate()(Upstream().sync())
    price("a")
    price("a")
    assert cache._collect() == {
        "cache:prices": {"hits": 1, "misses": 1, "stale_hits": 0, "local_hits": 0, "errors": 0}
    }
    assert cache._collect()["cache:prices"]["hits"] == 0


# Stampedes


def test_twenty_threads_compute_a_missing_entry_once(
    client_factory: Callable[..., Client],
) -> None:
    upstream = Upstream(delay=0.2)
    price = client_factory().cached("prices", ttl=30)(upstream.sync())
    barrier = threading.Barrier(20)
    results: list[str] = []

    def call() -> None:
        barrier.wait()
        results.append(price("a"))

    threads = [threading.Thread(target=call) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert results == ["a-EUR-v1"] * 20
    assert upstream.calls == 1


async def test_twenty_tasks_compute_a_missing_entry_once(
    client_factory: Callable[..., Client],
) -> None:
    upstream = Upstream(delay=0.2)
    client = client_factory()
    price = client.cached("prices", ttl=30)(upstream.asynchronous())
    results = await asyncio.gather(*(price("a") for _ in range(20)))
    assert results == ["a-v1"] * 20
    assert upstream.calls == 1
    assert await price("a") == "a-v1"
    assert client.cache("prices").stats()["hits"] == 1
    await client.async_redis().aclose()


def test_two_clients_elect_one_computer_through_the_lock(
    client_factory: Callable[..., Client],
) -> None:
    upstream = Upstream(delay=0.3)
    function = upstream.sync()
    prices = [client_factory().cached("prices", ttl=30)(function) for _ in range(2)]
    barrier = threading.Barrier(20)
    results: list[str] = []

    def call(index: int) -> None:
        barrier.wait()
        results.append(prices[index % 2]("a"))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert results == ["a-EUR-v1"] * 20
    assert upstream.calls == 1


PROCESS_CHILD = """
import sys, threading, time
from controlplane.client import Client
from controlplane.protocol.connection import connect

url, prefix, start_at = sys.argv[1], sys.argv[2], float(sys.argv[3])
counter = connect(url)
client = Client(url, environment="production", key_prefix=prefix)

def price(sku):
    counter.incr(prefix + ":upstream-calls")
    time.sleep(0.3)
    return sku + "-computed"

cached = client.cached("prices", ttl=30)(price)
results = []

def call():
    time.sleep(max(0.0, start_at - time.time()))
    results.append(cached("a"))

threads = [threading.Thread(target=call) for _ in range(5)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join(timeout=20)
print(",".join(results), flush=True)
"""


def test_two_processes_compute_a_missing_entry_once(
    settings: Any, redis_client: redis.Redis
) -> None:
    start_at = str(time.time() + 1.0)
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                PROCESS_CHILD,
                settings.REDIS_URL,
                settings.REDIS_KEY_PREFIX,
                start_at,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=60)[0].strip() for process in processes]
    assert [process.returncode for process in processes] == [0, 0]
    assert outputs == [",".join(["a-computed"] * 5)] * 2
    assert redis_client.get(settings.REDIS_KEY_PREFIX + ":upstream-calls") == "1"


def test_stale_value_is_served_while_one_client_recomputes(
    client_factory: Callable[..., Client],
) -> None:
    upstream = Upstream()
    function = upstream.sync()
    first, second = client_factory(), client_factory()
    price_1 = first.cached("prices", ttl=0.5, stale_ttl=30)(function)
    price_2 = second.cached("prices", ttl=0.5, stale_ttl=30)(function)
    assert price_1("a") == price_2("a") == "a-EUR-v1"
    time.sleep(0.55)  # the entry going stale is the behaviour under test
    upstream.delay = 0.5  # the recomputation is slow

    assert price_1("a") == "a-EUR-v1"  # stale at once; first recomputes in the background
    assert price_2("a") == "a-EUR-v1"  # stale too; the lock is taken, it does not recompute
    wait_for(lambda: not first.cache("prices")._refreshing)  # stored, lock released
    assert upstream.calls == 2
    assert price_2("a") == price_1("a") == "a-EUR-v2"
    assert first.cache("prices").stats()["stale_hits"] == 1
    assert second.cache("prices").stats()["stale_hits"] == 1
    assert second.cache("prices").stats()["misses"] == 0


async def test_async_stale_value_is_served_while_a_task_recomputes(
    client_factory: Callable[..., Client],
) -> None:
    upstream = Upstream()
    client = client_factory()
    price = client.cached("prices", ttl=0.2, stale_ttl=30)(upstream.asynchronous())
    assert await price("a") == "a-v1"
    await asyncio.sleep(0.25)  # the entry going stale is the behaviour under test
    upstream.delay = 0.2

    assert await asyncio.gather(*(price("a") for _ in range(5))) == ["a-v1"] * 5
    deadline = time.monotonic() + 10
    while await price("a") != "a-v2":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert upstream.calls == 2
    await client.async_redis().aclose()


# Failures


def test_exceptions_are_never_cached(
    client_factory: Callable[..., Client], redis_client: redis.Redis
) -> None:
    client = client_factory()
    upstream = Upstream(failures=1)
    price = client.cached("prices", ttl=30)(upstream.sync())

    with pytest.raises(ValueError, match="upstream failure 1"):
        price("a")
    assert cache_keys(redis_client, client) == []  # no entry, and the lock is released

    assert price("a") == "a-EUR-v2"
    assert price("a") == "a-EUR-v2"
    assert upstream.calls == 2


def test_stop_iteration_of_the_function_reaches_the_caller_as_is(
    client_factory: Callable[..., Client],
) -> None:
    calls: list[str] = []

    def next_price(sku: str) -> str:
        calls.append(sku)
        return next(iter([]))  # a bug of the user's: StopIteration, not a RuntimeError

    price = client_factory().cached("prices", ttl=30)(next_price)
    with pytest.raises(StopIteration):
        price("a")
    with pytest.raises(StopIteration):
        price("a")
    assert calls == ["a", "a"]


def test_coalesced_callers_share_the_exception(client_factory: Callable[..., Client]) -> None:
    upstream = Upstream(delay=0.2, failures=1)
    price = client_factory().cached("prices", ttl=30)(upstream.sync())
    barrier = threading.Barrier(10)
    errors: list[BaseException] = []

    def call() -> None:
        barrier.wait()
        try:
            price("a")
        except ValueError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(errors) == 10
    assert upstream.calls == 1
    assert price("a") == "a-EUR-v2"


def test_redis_stopped_still_calls_the_function(
    client_factory: Callable[..., Client], disposable_redis: RedisServer
) -> None:
    client = client_factory()
    upstream = Upstream()
    price = client.cached("prices", ttl=30)(upstream.sync())
    disposable_redis.stop()

    assert price("a") == "a-EUR-v1"
    assert price("a") == "a-EUR-v2"  # no tier left to remember it
    price.invalidate("a")  # does not raise either
    assert client.cache("prices").stats()["errors"] >= 2

    disposable_redis.start()
    wait_for(lambda: not client.cache("prices")._redis_down())  # its short backoff ends
    assert price("a") == "a-EUR-v3"
    assert price("a") == "a-EUR-v3"


async def test_redis_stopped_still_calls_the_async_function(
    client_factory: Callable[..., Client], disposable_redis: RedisServer
) -> None:
    client = client_factory()
    upstream = Upstream()
    price = client.cached("prices", ttl=30)(upstream.asynchronous())
    disposable_redis.stop()
    assert await price("a") == "a-v1"
    assert await price("a") == "a-v2"
    assert client.cache("prices").stats()["errors"] >= 1
    await client.async_redis().aclose()


def test_unreadable_entry_is_a_miss_and_gets_replaced(
    client_factory: Callable[..., Client], raw_redis: redis.Redis
) -> None:
    client = client_factory()
    upstream = Upstream()
    price = client.cached("prices", ttl=30)(upstream.sync())
    price("a")
    [key] = cache_keys(raw_redis, client)
    raw_redis.set(key, b"\x01\x02garbage")

    assert price("a") == "a-EUR-v2"
    assert price("a") == "a-EUR-v2"
    assert client.cache("prices").stats()["errors"] == 1
    assert raw_redis.get(key)[:2] == b"\x01\x02"  # version 1, JSON


# Serializers

UNPICKLED: list[str] = []


class PlantedPayload:
    """What an attacker with write access to Redis would store: code run by unpickling."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (UNPICKLED.append, ("code ran",))


def test_a_pickled_entry_is_a_miss_for_the_json_default_and_is_never_unpickled(
    client_factory: Callable[..., Client], raw_redis: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    old, new = client_factory(), client_factory()
    upstream = Upstream()
    assert old.cached("prices", ttl=30, serializer="pickle")(upstream.sync())("a") == "a-EUR-v1"
    [key] = cache_keys(raw_redis, old)
    assert raw_redis.get(key)[:2] == b"\x01\x01"  # written by pickle (code 1)
    planted = Entry.written(PlantedPayload(), time.time(), 30, 0)
    raw_redis.set(key, encode_envelope(PickleSerializer(), planted))

    price = new.cached("prices", ttl=30)(upstream.sync())
    assert price("a") == "a-EUR-v2"  # a miss: the function ran
    assert price("a") == "a-EUR-v2"  # and its JSON entry replaced the pickled one
    assert UNPICKLED == []
    assert new.cache("prices").stats() == {
        "hits": 1,
        "misses": 1,
        "stale_hits": 0,
        "local_hits": 0,
        "errors": 0,
    }
    assert raw_redis.get(key)[:2] == b"\x01\x02"
    assert "written with serializer code 1" in caplog.text


def test_a_value_json_cannot_encode_is_returned_uncached_and_logged_once_a_minute(
    client_factory: Callable[..., Client], raw_redis: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    client = client_factory()
    calls: list[int] = []

    @client.cached("prices", ttl=30)
    def price(sku: str) -> object:
        calls.append(1)
        return {"sku": sku, "at": object()}

    with caplog.at_level("WARNING", logger="controlplane.client"):
        results = [price("a") for _ in range(3)]
    assert [type(result) for result in results] == [dict] * 3
    assert len(calls) == 3  # never cached
    assert cache_keys(raw_redis, client) == []
    lines = [r for r in caplog.records if "cannot serialize" in r.getMessage()]
    assert len(lines) == 1, caplog.text
    assert "returned to the caller, not cached" in lines[0].getMessage()
    assert client.cache("prices").stats()["errors"] == 3


def test_pickle_is_opt_in_and_round_trips_what_json_cannot(
    client_factory: Callable[..., Client],
) -> None:
    client = client_factory()
    upstream = Upstream()

    @client.cached("prices", ttl=30, serializer="pickle")
    def price(sku: str) -> tuple[str, frozenset[int]]:
        return (upstream.sync()(sku), frozenset({1}))

    assert price("a") == ("a-EUR-v1", frozenset({1}))
    assert price("a") == ("a-EUR-v1", frozenset({1}))  # from Redis, a tuple again
    assert client.cache("prices").serializer.name == "pickle"
    assert client.cache("other").serializer.name == "json"  # the default


# The in-process tier


def test_local_tier_serves_without_redis(
    client_factory: Callable[..., Client], disposable_redis: RedisServer
) -> None:
    client = client_factory()
    upstream = Upstream()
    cache = client.cache("prices", ttl=30, local_size=10)
    price = cache.decorate()(upstream.sync())
    assert price("a") == "a-EUR-v1"
    disposable_redis.stop()

    assert price("a") == "a-EUR-v1"
    assert price("a") == "a-EUR-v1"
    assert cache.stats()["local_hits"] == 2
    assert cache.stats()["errors"] == 0  # Redis was not even tried
    assert price("b") == "b-EUR-v2"  # computed with Redis down, kept in the local tier
    assert price("b") == "b-EUR-v2"
    assert upstream.calls == 2


def test_local_tier_is_bounded_lru(client_factory: Callable[..., Client]) -> None:
    cache = client_factory().cache("prices", ttl=30, local_size=2)
    price = cache.decorate()(Upstream().sync())
    price("a")
    price("b")
    price("a")  # a is now the most recently used
    price("c")
    assert cache.local_entries == 2
    price("a")
    price("c")
    assert cache.stats()["local_hits"] == 3
    price("b")  # evicted from the local tier, still in Redis
    assert cache.stats()["hits"] == 1


def test_local_tier_is_cleared_on_generation_bump(
    set_policy: Callable[..., Policy], cp_client: Client
) -> None:
    set_policy("cache", "prices", ttl=30, local_size=10)
    cache = cp_client.cache("prices")
    wait_for(lambda: cache.local_size == 10)
    upstream = Upstream()
    price = cache.decorate()(upstream.sync())
    price("a")
    price("b")
    assert price("a") == "a-EUR-v1"
    assert cache.local_entries == 2

    set_policy("cache", "prices", generation=1)
    wait_for(lambda: cache.generation == 1)

    assert cache.local_entries == 0
    assert price("a") == "a-EUR-v3"
    assert upstream.calls == 3


def test_invalidate_reaches_the_local_tier_of_other_clients(
    client_factory: Callable[..., Client],
    production: Environment,
    redis_client: redis.Redis,
) -> None:
    first, second = client_factory().start(), client_factory().start()
    upstream = Upstream()
    function = upstream.sync()
    price_1 = first.cached("prices", ttl=30, local_size=10)(function)
    price_2 = second.cached("prices", ttl=30, local_size=10)(function)
    channel = first.cache("prices")._channel
    wait_for(lambda: subscribers(redis_client, channel) == 2)
    assert price_1("a") == price_2("a") == "a-EUR-v1"
    assert second.cache("prices").local_entries == 1

    price_1.invalidate("a")

    wait_for(lambda: second.cache("prices").local_entries == 0)
    assert price_2("a") == "a-EUR-v2"
    assert price_1("a") == "a-EUR-v2"


def test_a_hostile_invalidation_message_is_ignored_and_keeps_the_tier(
    client_factory: Callable[..., Client], caplog: pytest.LogCaptureFixture
) -> None:
    cache = client_factory().cache("prices", ttl=30, local_size=10)
    price = cache.decorate()(Upstream().sync())
    price("a")

    for message in (b"[" * 100_000 + b"]" * 100_000, b'{"schema":1}', b"\xff"):
        cache._on_invalidation(message)  # what the client's channel handler calls

    assert cache.local_entries == 1
    assert "ignoring invalidation" in caplog.text


def test_threads_share_one_computation_even_without_redis(
    client_factory: Callable[..., Client], disposable_redis: RedisServer
) -> None:
    upstream = Upstream(delay=0.2)
    price = client_factory().cached("prices", ttl=30)(upstream.sync())
    disposable_redis.stop()  # no lock to elect anyone: only in-process coalescing is left
    barrier = threading.Barrier(20)
    results: list[str] = []

    def call() -> None:
        barrier.wait()
        results.append(price("a"))

    threads = [threading.Thread(target=call) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert results == ["a-EUR-v1"] * 20
    assert upstream.calls == 1


async def test_tasks_share_one_computation_even_without_redis(
    client_factory: Callable[..., Client], disposable_redis: RedisServer
) -> None:
    upstream = Upstream(delay=0.2)
    client = client_factory()
    price = client.cached("prices", ttl=30)(upstream.asynchronous())
    disposable_redis.stop()
    assert await asyncio.gather(*(price("a") for _ in range(20))) == ["a-v1"] * 20
    assert upstream.calls == 1
    await client.async_redis().aclose()


async def test_a_cancelled_caller_does_not_cancel_the_shared_computation(
    client_factory: Callable[..., Client],
) -> None:
    upstream = Upstream(delay=0.2)
    client = client_factory()
    price = client.cached("prices", ttl=30)(upstream.asynchronous())
    first = asyncio.ensure_future(price("a"))
    second = asyncio.ensure_future(price("a"))
    await asyncio.sleep(0.05)
    first.cancel()
    assert await second == "a-v1"
    assert first.cancelled()
    assert await price("a") == "a-v1"
    assert upstream.calls == 1
    await client.async_redis().aclose()


FORK_CHILD = """
import os, sys, threading
from controlplane.client import Client

client = Client(sys.argv[1], environment="production", key_prefix=sys.argv[2])
calls = []

def price(sku):
    calls.append(sku)
    return sku + "-" + str(os.getpid())

cached = client.cached("prices", ttl=30)(price)
parent_value = cached("a")
pid = os.fork()
if pid == 0:
    ok = cached("a") == parent_value and calls == ["a"]
    threads = [threading.Thread(target=cached, args=("b",)) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    ok = ok and calls == ["a", "b"] and cached("b") == "b-" + str(os.getpid())
    os._exit(0 if ok else 1)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_forked_child_keeps_caching(settings: Any) -> None:
    result = subprocess.run(
        [sys.executable, "-c", FORK_CHILD, settings.REDIS_URL, settings.REDIS_KEY_PREFIX],
        timeout=60,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
