"""Rate-limit checks: our limiter against ``limits``, on the same Redis, in the same run.

* sync: one subject and a limit never reached, the latency of one check next
  to the floor, a bare Redis ``PING`` round trip from this process;
* async: 64 coroutines sharing a fixed number of checks, throughput. Ours
  batches the checks of one event-loop iteration into one pipeline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any

import redis
from limits import RateLimitItemPerHour, aio, strategies
from limits.storage import RedisStorage

from bench.common import Row, interleaved
from bench.context import BenchContext
from controlplane.client import Client
from controlplane.client.limiter import SCRIPTS

NAME = "rate-limit check, sync"
ASYNC_NAME = "rate-limit checks, async, 64 callers"
BASELINES = {ASYNC_NAME: "limits.aio FixedWindow hit"}

LIMIT = 10**9  # never reached: every check is admitted
PERIOD = 3600.0
SUBJECT = "user:1"
SYNC_CALLS = 2_000
SYNC_REPEATS = 9
CALLERS = 64
ASYNC_CHECKS = 20_000
ASYNC_REPEATS = 5
ALGORITHMS = ("token_bucket", "gcra", "fixed_window", "sliding_window")


def _limiter_name(algorithm: str) -> str:
    return "bench-" + algorithm.replace("_", "-")


def _sync(ctx: BenchContext, client: Client) -> list[Row]:
    bare = redis.Redis.from_url(ctx.redis_url)
    # One storage (and key prefix) per strategy: their states under one key would collide.
    storages = {
        label: RedisStorage(ctx.redis_url, key_prefix=f"LIMITS-{label}")
        for label in ("FixedWindow", "MovingWindow", "SlidingWindowCounter")
    }
    item = RateLimitItemPerHour(LIMIT)
    contenders: dict[str, tuple[Callable[[], object], int]] = {
        "bare Redis PING": (bare.ping, SYNC_CALLS),
    }
    # The same script ours runs, sent straight through redis-py: Redis's share of a check.
    token_bucket = client.limiter(_limiter_name("token_bucket"))
    script_keys = (token_bucket.key_for("bare-evalsha"),)
    script_args = (*token_bucket.settings.argv, "1", "0")
    contenders["bare EVALSHA of our token_bucket script"] = (
        lambda: SCRIPTS["token_bucket"].run(bare, script_keys, script_args),
        SYNC_CALLS,
    )
    for algorithm in ALGORITHMS:
        limiter = client.limiter(_limiter_name(algorithm))
        contenders[f"controlplane {algorithm} hit"] = (partial(limiter.hit, SUBJECT), SYNC_CALLS)
    for label, strategy in (
        ("FixedWindow", strategies.FixedWindowRateLimiter(storages["FixedWindow"])),
        ("MovingWindow", strategies.MovingWindowRateLimiter(storages["MovingWindow"])),
        (
            "SlidingWindowCounter",
            strategies.SlidingWindowCounterRateLimiter(storages["SlidingWindowCounter"]),
        ),
    ):

        def hit_only(strategy: strategies.RateLimiter = strategy) -> object:
            return strategy.hit(item, SUBJECT)

        def hit_and_stats(strategy: strategies.RateLimiter = strategy) -> object:
            return strategy.hit(item, SUBJECT) and strategy.get_window_stats(item, SUBJECT)

        contenders[f"limits {label} hit"] = (hit_only, SYNC_CALLS)
        contenders[f"limits {label} hit + get_window_stats"] = (hit_and_stats, SYNC_CALLS)
    try:
        samples = interleaved(contenders, repeats=SYNC_REPEATS)
        for algorithm in ALGORITHMS:
            assert client.limiter(_limiter_name(algorithm)).hit(SUBJECT).source == "redis"
    finally:
        bare.close()
        for storage in storages.values():
            storage.storage.close()
    notes = {
        "bare Redis PING": "the floor: one round trip, no work",
        "bare EVALSHA of our token_bucket script": "redis-py only, no limiter code",
        "limits FixedWindow hit": "1 round trip, admitted or not only",
        "limits FixedWindow hit + get_window_stats": "3 round trips (incr, GET, TTL)",
        "limits MovingWindow hit": "1 round trip, admitted or not; a list entry per request",
        "limits MovingWindow hit + get_window_stats": "2 round trips",
        "limits SlidingWindowCounter hit": "1 round trip, admitted or not only",
        "limits SlidingWindowCounter hit + get_window_stats": "2 round trips",
    }
    ours = "1 round trip, decision + header values"
    return [
        Row.of(NAME, contender, values, "µs", notes.get(contender, ours))
        for contender, values in samples.items()
    ]


async def _checks_per_second(check: Callable[[], Awaitable[object]]) -> float:
    """``ASYNC_CHECKS`` checks shared by ``CALLERS`` coroutines, in checks per second."""
    per_caller = ASYNC_CHECKS // CALLERS

    async def caller() -> None:
        for _ in range(per_caller):
            await check()

    await asyncio.gather(*(check() for _ in range(CALLERS)))  # connections open, scripts loaded
    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(CALLERS)))
    return per_caller * CALLERS / (time.perf_counter() - started)


async def _ours(client: Client, algorithm: str) -> float:
    limiter = client.limiter(_limiter_name(algorithm))
    try:
        return await _checks_per_second(lambda: limiter.ahit(SUBJECT))
    finally:
        await client.async_redis().aclose()


async def _limits(url: str, strategy_class: type[aio.strategies.RateLimiter]) -> float:
    storage = aio.storage.RedisStorage(
        "async+" + url, implementation="redispy", key_prefix=f"LIMITS-aio-{strategy_class.__name__}"
    )
    strategy = strategy_class(storage)
    item = RateLimitItemPerHour(LIMIT)
    try:
        return await _checks_per_second(lambda: strategy.hit(item, SUBJECT))
    finally:
        await storage.bridge.storage.aclose()


def _async(ctx: BenchContext, client: Client) -> list[Row]:
    runs: dict[str, Callable[[], Coroutine[Any, Any, float]]] = {
        "controlplane token_bucket ahit": lambda: _ours(client, "token_bucket"),
        "controlplane fixed_window ahit": lambda: _ours(client, "fixed_window"),
        "limits.aio FixedWindow hit": lambda: _limits(
            ctx.redis_url, aio.strategies.FixedWindowRateLimiter
        ),
        "limits.aio SlidingWindowCounter hit": lambda: _limits(
            ctx.redis_url, aio.strategies.SlidingWindowCounterRateLimiter
        ),
    }
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(ASYNC_REPEATS):  # taking turns, each run in a fresh event loop
        for contender, make in runs.items():
            samples[contender].append(asyncio.run(make()))
    notes = {
        "controlplane token_bucket ahit": "concurrent checks share one pipeline",
        "controlplane fixed_window ahit": "concurrent checks share one pipeline",
        "limits.aio FixedWindow hit": "redis-py asyncio, one round trip per check",
        "limits.aio SlidingWindowCounter hit": "redis-py asyncio, one round trip per check",
    }
    return [
        Row.of(ASYNC_NAME, contender, values, "checks/s", notes[contender])
        for contender, values in samples.items()
    ]


def run(ctx: BenchContext) -> list[Row]:
    client = Client(ctx.redis_url, environment=ctx.environment, service="bench").start()
    try:
        for algorithm in ALGORITHMS:
            name = _limiter_name(algorithm)
            client.limiter(name, algorithm=algorithm, limit=LIMIT, period=PERIOD)
        rows = _sync(ctx, client)
        rows += _async(ctx, client)
    finally:
        client.close()
    return rows
