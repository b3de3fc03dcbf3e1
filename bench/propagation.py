"""Propagation: a policy saved in the control plane, applied by 20 client processes.

Compared in the same run with the floor: a bare Redis PUBLISH received by 20
subscriber processes. Latency is from just before the save (or the publish) to
the moment each process has applied the new value, on the machine's clock.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from typing import IO

import redis

from bench.common import Row, percentile
from bench.context import BenchContext

NAME = "propagation to 20 processes"
PROCESSES = 20
ROUNDS = 100
KEY = "bench.propagation"

CHILD = """
import sys, time
mode, url, environment, key = sys.argv[1:5]
if mode == "client":
    from controlplane.client import Client
    client = Client(url, environment=environment, service="bench-propagation").start()
    assert client.wait_synced(10)
    client.config.on_change(key, lambda _, value: print(value, time.time(), flush=True))
    print("ready", flush=True)
    sys.stdin.readline()
    client.close()
else:
    import redis
    pubsub = redis.Redis.from_url(url).pubsub()
    pubsub.subscribe(key)
    pubsub.get_message(timeout=5)
    print("ready", flush=True)
    for message in pubsub.listen():
        if message["type"] == "message":
            print(message["data"].decode(), time.time(), flush=True)
"""


def _read(stream: IO[str], sink: queue.Queue[str]) -> None:
    for line in stream:
        sink.put(line.strip())


def _measure(mode: str, ctx: BenchContext, send: object) -> list[float]:
    lines: queue.Queue[str] = queue.Queue()
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, mode, ctx.redis_url, ctx.environment, KEY],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            threading.Thread(target=_read, args=(child.stdout, lines), daemon=True).start()
        for _ in children:
            if lines.get(timeout=30) != "ready":
                raise RuntimeError("a benchmark child did not start")
        latencies: list[float] = []
        for round_number in range(1, ROUNDS + 1):
            started = time.time()
            send(round_number)  # type: ignore[operator]
            for _ in children:
                value, seen_at = lines.get(timeout=10).split()
                if int(value) != round_number:
                    raise RuntimeError(f"expected value {round_number}, got {value}")
                latencies.append((float(seen_at) - started) * 1000)
        return latencies
    finally:
        for child in children:
            child.kill()
            child.wait()


def run(ctx: BenchContext) -> list[Row]:
    ctx.publish("config", KEY, {"value_type": "integer", "value": 0})
    publisher = redis.Redis.from_url(ctx.redis_url)
    bare = _measure("bare", ctx, lambda i: publisher.publish(KEY, str(i)))
    ours = _measure(
        "client",
        ctx,
        lambda i: ctx.publish("config", KEY, {"value_type": "integer", "value": i}),
    )
    rows = []
    for contender, samples, note in (
        ("bare Redis PUBLISH", bare, "the floor: one message, no database"),
        ("controlplane: save + publish + apply", ours, "database commit included"),
    ):
        rows.append(Row.of(NAME + " (p50)", contender, samples, "ms", note))
        p99 = percentile(samples, 0.99)
        rows.append(Row(NAME + " (p99)", contender, p99, "ms", note, samples=[p99]))
    return rows
