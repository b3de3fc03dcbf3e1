"""Propagation: a policy saved in the control plane, applied by 20 and by 50 client processes.

Compared in the same run with the floor: a bare Redis PUBLISH received by as
many subscriber processes. Latency is from just before the save (or the publish)
to the moment each process has applied the new value, on the machine's clock.

Two measurements tell the database from the fan-out: the save alone (until
``do_update_policy`` returns: the commit, then the publish script) is timed and
given in the note, and a third contender publishes the same policy document
through the control plane's publisher without saving it (an environment of its
own, never in the database), so the clients' part is measured against the floor.
"""

from __future__ import annotations

import itertools
import os
import selectors
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable

import redis

from bench.common import Row, percentile
from bench.context import BenchContext
from controlplane.protocol.documents import PolicyDocument
from controlplane.protocol.keys import KeyLayout

PROCESSES = (20, 50)
ROUNDS = 100
WARM_UP = 5  # rounds before the measured ones: imports, caches, the first queries
KEY = "bench.propagation"
UNSAVED_ENVIRONMENT = "bench-unsaved"  # published to, never saved: see _publisher

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


class _Lines:
    """The children's output, line by line, read by the caller's thread alone.

    One reader thread per child would put 50 threads of this process on the two
    cores, waking together just as the children being timed need them.
    """

    def __init__(self, children: list[subprocess.Popen[bytes]]) -> None:
        self._selector = selectors.DefaultSelector()
        for child in children:
            assert child.stdout is not None
            self._selector.register(child.stdout, selectors.EVENT_READ)
        self._partial: dict[int, bytes] = {}
        self._lines: deque[str] = deque()

    def get(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while not self._lines:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError("a benchmark child did not answer in time")
            for key, _ in self._selector.select(remaining):
                chunk = os.read(key.fd, 65536)
                if not chunk:  # the child exited: its rounds will time out
                    self._selector.unregister(key.fileobj)
                    continue
                *complete, rest = (self._partial.pop(key.fd, b"") + chunk).split(b"\n")
                if rest:
                    self._partial[key.fd] = rest
                self._lines.extend(line.decode() for line in complete)
        return self._lines.popleft()

    def close(self) -> None:
        self._selector.close()


def _publisher() -> Callable[[int], object]:
    """Publish the policy with a value, as a save would after its commit, without the save.

    Revisions follow one another from 1, as the clients expect (a gap would make
    them read the whole store again), in an environment no save touches.
    """
    from django.conf import settings

    from controlplane.policies.publish import publish_policy

    keys = KeyLayout(UNSAVED_ENVIRONMENT, settings.REDIS_KEY_PREFIX)
    revisions = itertools.count(1)

    def publish(value: int) -> object:
        revision = next(revisions)
        spec = {"value_type": "integer", "value": value}
        document = PolicyDocument("config", KEY, revision, revision, spec, "", "bench")
        return publish_policy(keys, document)

    return publish


def _measure(
    mode: str,
    ctx: BenchContext,
    processes: int,
    send: Callable[[int], object],
    environment: str = "",
) -> tuple[list[float], list[float]]:
    """Milliseconds to each process's apply, and to ``send``'s return, per round."""
    command = [CHILD, mode, ctx.redis_url, environment or ctx.environment, KEY]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", *command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for _ in range(processes)
    ]
    lines = _Lines(children)
    try:
        for _ in children:
            if lines.get(timeout=60) != "ready":
                raise RuntimeError("a benchmark child did not start")
        latencies: list[float] = []
        sends: list[float] = []
        for round_number in range(1, WARM_UP + ROUNDS + 1):
            started = time.time()
            send(round_number)
            sent = time.time()
            seen = []
            for _ in children:
                value, seen_at = lines.get(timeout=10).split()
                if int(value) != round_number:
                    raise RuntimeError(f"expected value {round_number}, got {value}")
                seen.append((float(seen_at) - started) * 1000)
            if round_number > WARM_UP:
                latencies += seen
                sends.append((sent - started) * 1000)
        return latencies, sends
    finally:
        lines.close()
        for child in children:
            child.kill()
            child.wait()


def run(ctx: BenchContext) -> list[Row]:
    publisher = redis.Redis.from_url(ctx.redis_url)
    unsaved = _publisher()
    rows = []
    for processes in PROCESSES:
        ctx.publish("config", KEY, {"value_type": "integer", "value": 0})
        unsaved(0)
        bare, _ = _measure("bare", ctx, processes, lambda i: publisher.publish(KEY, str(i)))
        published, _ = _measure("client", ctx, processes, unsaved, UNSAVED_ENVIRONMENT)
        ours, saves = _measure(
            "client",
            ctx,
            processes,
            lambda i: ctx.publish("config", KEY, {"value_type": "integer", "value": i}),
        )
        save = f"the save alone p50 {_ms(saves, 0.5)}, p99 {_ms(saves, 0.99)}"
        name = f"propagation to {processes} processes"
        for contender, samples, note in (
            ("bare Redis PUBLISH", bare, "the floor: one message, no database"),
            ("controlplane: publish + apply, no save", published, "the clients' part"),
            ("controlplane: save + publish + apply", ours, f"database commit included; {save}"),
        ):
            rows.append(Row.of(name + " (p50)", contender, samples, "ms", note))
            p99 = percentile(samples, 0.99)
            rows.append(Row(name + " (p99)", contender, p99, "ms", note, samples=[p99]))
        print(
            f"  {name} p99: bare {_ms(bare, 0.99)}, publish + apply {_ms(published, 0.99)}, "
            f"save + publish + apply {_ms(ours, 0.99)}; {save}",
            file=sys.stderr,
        )
    return rows


def _ms(samples: list[float], fraction: float) -> str:
    return f"{percentile(samples, fraction):.2f} ms"
