"""Circuit breakers on the closed path: our decorator against pybreaker and circuitbreaker.

Two measurements, all contenders in the same run:

* the cost per call of a trivial function (``return 1``) through each breaker,
  next to the bare call, and the overhead above it;
* the throughput of 4 threads calling a 1 ms function through one shared
  breaker: a breaker that holds a lock around the call (pybreaker) runs one
  call at a time, ours lets them overlap.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable

import pybreaker
import redis
from circuitbreaker import circuit

from bench.common import Row, interleaved
from bench.context import BenchContext
from controlplane.client import Client

NAME = "breaker closed path, trivial call"
THREADS_NAME = "breaker, 4 threads, 1 ms call"
THREADS = 4
CALLS_PER_THREAD = 250
THREAD_REPEATS = 5


def trivial() -> int:
    return 1


def one_ms() -> int:
    time.sleep(0.001)
    return 1


def _threaded_throughput(fn: Callable[[], object], repeats: int = THREAD_REPEATS) -> list[float]:
    """Calls per second of ``THREADS`` threads calling ``fn`` together, one sample per repeat."""
    samples = []
    for _ in range(repeats):
        barrier = threading.Barrier(THREADS + 1)

        def worker(barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            for _ in range(CALLS_PER_THREAD):
                fn()

        threads = [threading.Thread(target=worker) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        barrier.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        samples.append(THREADS * CALLS_PER_THREAD / (time.perf_counter() - started))
    return samples


def run(ctx: BenchContext) -> list[Row]:
    client = Client(ctx.redis_url, environment=ctx.environment, service="bench").start()
    pb_redis_connection = redis.Redis.from_url(ctx.redis_url)  # bytes replies: pybreaker decodes
    try:
        ours_breaker = client.breaker("bench")
        pb_memory = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
        pb_redis = pybreaker.CircuitBreaker(
            fail_max=5,
            reset_timeout=60,
            state_storage=pybreaker.CircuitRedisStorage(
                pybreaker.STATE_CLOSED, pb_redis_connection, namespace="bench"
            ),
        )
        cb = circuit(failure_threshold=5, recovery_timeout=60, name="bench")

        samples = interleaved(
            {
                "bare call": (trivial, 200_000),
                "controlplane @client.breaker": (ours_breaker(trivial), 200_000),
                "pybreaker (memory)": (pb_memory(trivial), 50_000),
                "pybreaker (CircuitRedisStorage)": (pb_redis(trivial), 1_000),
                "circuitbreaker @circuit": (cb(trivial), 200_000),
            },
            repeats=9,
        )
        threaded = {
            "bare call": _threaded_throughput(one_ms),
            "controlplane @client.breaker": _threaded_throughput(ours_breaker(one_ms)),
            "pybreaker (memory)": _threaded_throughput(pb_memory(one_ms)),
        }
        assert ours_breaker.state == "closed"
    finally:
        client.close()
        pb_redis_connection.close()

    bare = statistics.median(samples["bare call"])
    notes = {
        "bare call": "def f(): return 1",
        "controlplane @client.breaker": "no Redis, no lock on success",
        "pybreaker (memory)": "lock held around the call",
        "pybreaker (CircuitRedisStorage)": "GET state + SET counter per call",
        "circuitbreaker @circuit": "in process, no lock",
    }
    rows = []
    for contender, values in samples.items():
        note = notes[contender]
        if contender != "bare call":
            note = f"+{statistics.median(values) - bare:,.2f} µs over bare; {note}"
        rows.append(Row.of(NAME, contender, values, "µs", note))
    ideal = THREADS / 0.001
    threaded_notes = {
        "bare call": f"unprotected; {ideal:,.0f}/s if sleep(1 ms) were exact",
        "controlplane @client.breaker": "calls overlap",
        "pybreaker (memory)": "one call at a time",
    }
    for contender, values in threaded.items():
        rows.append(Row.of(THREADS_NAME, contender, values, "calls/s", threaded_notes[contender]))
    return rows
