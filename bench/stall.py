"""A Redis stall under load: how long a request waits when Redis stops answering.

Three threads send requests, each through three rate limiters (and, for ours, a cache
and a breaker), against a Redis server of the benchmark's own. After 0.5 s the server
is paused for 2 s (``CLIENT PAUSE 2000 ALL``); the rows are the requests of the pause:
how many were served and how long they took. Ours decides from one health state per
client (one timeout, then every enforcer falls back at once until a single probe finds
Redis again); ``limits`` with the same 0.25 s socket timeout waits it out per limiter
and per request (failing open here, as a service would have to write by hand).
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import redis
from limits import RateLimitItemPerSecond, strategies
from limits.storage import RedisStorage

from bench.common import Row, percentile
from controlplane.client import Client
from controlplane.embedded_redis import RedisServer

if TYPE_CHECKING:
    from bench.context import BenchContext

TIMEOUT = 0.25  # seconds: the client's default, and the socket timeout given to limits
PAUSE_MS = 2000
WORKERS = 3
PACE = 0.005  # seconds between two requests of one worker
OURS = "controlplane: 3 limiters + cache + breaker"
BASELINES = {"stall": "limits FixedWindow: 3 limiters"}


def _load(request: Callable[[int, int], None], server: RedisServer) -> list[float]:
    """Durations (s) of the requests that began during the pause."""
    timings: list[tuple[float, float]] = []
    stop = threading.Event()

    def work(worker: int) -> None:
        for n in range(100_000):  # bounded; the pause ends the run long before
            if stop.wait(PACE):
                return
            began = time.monotonic()
            request(worker, n)
            timings.append((began, time.monotonic() - began))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(WORKERS)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # steady state before the pause
    admin = redis.Redis.from_url(server.url, socket_timeout=10)
    begin = time.monotonic()
    admin.execute_command("CLIENT", "PAUSE", str(PAUSE_MS), "ALL")
    admin.ping()  # answered when the pause ends
    back = time.monotonic()
    time.sleep(0.3)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    admin.close()
    return [spent for began, spent in timings if begin <= began < back]


def _rows(contender: str, durations: list[float]) -> list[Row]:
    ms = [d * 1000 for d in durations]
    note = (
        f"{len(ms)} requests served in the {PAUSE_MS / 1000:g} s pause; "
        f"p99 {percentile(ms, 0.99):.1f} ms, max {max(ms):.0f} ms"
    )
    return [Row.of("stall", contender, ms, "ms", note)]


def _ours(server: RedisServer) -> list[float]:
    client = Client(
        server.url, environment="bench", service="bench", key_prefix="stall", timeout=TIMEOUT
    ).start()
    try:
        limiters = [
            client.limiter(name, limit=100_000, period=1, on_redis_error="local")
            for name in ("a", "b", "c")
        ]
        cache = client.cache("prices", ttl=60)
        breaker = client.breaker("inventory")

        def request(worker: int, n: int) -> None:
            for limiter in limiters:
                limiter.hit(f"user{worker}")
            key = f"k{n % 5}"
            if cache.get(key) is None:
                cache.set(key, n)
            breaker.call(lambda: 1)

        return _load(request, server)
    finally:
        client.close()


def _limits(server: RedisServer) -> list[float]:
    storage = RedisStorage(server.url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
    limiter = strategies.FixedWindowRateLimiter(storage)
    items = [RateLimitItemPerSecond(100_000, 1, namespace=name) for name in ("a", "b", "c")]

    def request(worker: int, n: int) -> None:
        for item in items:
            # Fail open, as a service would have to write around it.
            with contextlib.suppress(redis.RedisError, OSError):
                limiter.hit(item, f"user{worker}")

    return _load(request, server)


def run(ctx: BenchContext) -> list[Row]:
    rows: list[Row] = []
    for contender, measure in ((OURS, _ours), (BASELINES["stall"], _limits)):
        server = RedisServer(Path(tempfile.mkdtemp(prefix="bench-stall-")) / "redis")
        server.start()
        try:
            rows += _rows(contender, measure(server))
        finally:
            server.stop()
    return rows
