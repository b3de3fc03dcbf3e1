"""Rate limits and breakers on a Redis Cluster, with the dashboard open.

Underneath: a three-master Redis Cluster started from ``redis-server`` on loopback,
and a Daphne process of the control plane on it (``REDIS_URL`` the cluster,
``CHANNEL_LAYER_URL`` the run's single server; ingest and reconciler on), with
``VIEWERS`` websocket viewers on the live overview, which the clients of this
benchmark feed with their reports. Each figure is taken on the cluster and on the
run's single server in the same run, taking turns:

* a sync rate-limit check (token bucket), next to ``limits``' FixedWindow ``hit``
  on the same cluster (its ``redis+cluster`` storage);
* 64 async callers sharing rate-limit checks (ours batches per node on a cluster);
* a breaker transition: one client's breaker opens, how long until another
  client's breaker (another process would be the same) is open too.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any

from limits import RateLimitItemPerHour, strategies
from limits.storage import storage_from_string

from bench.common import Row, interleaved, percentile
from bench.context import BenchContext
from bench.live import ENVIRONMENT, ROOT, Viewers, _port_open, _session_cookie, _user, _wait
from controlplane.client import Client
from controlplane.embedded_redis import RedisClusterServers, free_port

SYNC_NAME = "rate-limit check, sync, cluster + dashboard"
ASYNC_NAME = "rate-limit checks, async, 64 callers, cluster + dashboard"
BREAKER_NAME = "breaker transition seen by another client, cluster + dashboard"
BASELINES = {
    SYNC_NAME: "controlplane hit, one server",
    ASYNC_NAME: "controlplane ahit, one server",
    BREAKER_NAME: "one server",
}
VIEWERS = 50
SYNC_CALLS = 2_000
SYNC_REPEATS = 7
CALLERS = 64
ASYNC_CHECKS = 20_000
ASYNC_REPEATS = 5
TRANSITIONS = 30
LIMIT = 10**9


@contextmanager
def _dashboard(cluster_url: str, channel_layer_url: str, directory: Path) -> Iterator[Viewers]:
    """A Daphne process on the cluster, with ``VIEWERS`` viewers on its live overview."""
    from controlplane.accounts.roles import Role
    from controlplane.policies.actions import do_create_environment
    from controlplane.policies.models import Environment

    if not Environment.objects.filter(name=ENVIRONMENT).exists():
        do_create_environment(ENVIRONMENT, _system())
    port = free_port()
    env = {**os.environ, "REDIS_URL": cluster_url, "CHANNEL_LAYER_URL": channel_layer_url}
    log = directory / "daphne.log"
    with log.open("w") as output:
        daphne = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port)]
            + ["controlplane.asgi:application"],
            env=env,
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    viewers: Viewers | None = None
    try:
        _wait(lambda: daphne.poll() is not None or _port_open(port), 60, "Daphne")
        if daphne.poll() is not None:
            raise RuntimeError(f"Daphne exited; see {log}")
        cookie = _session_cookie(_user("cluster-viewer", Role.VIEWER))
        viewers = Viewers(port, [cookie] * VIEWERS)
        yield viewers
    finally:
        if viewers is not None:
            viewers.stop()
        daphne.terminate()
        try:
            daphne.wait(timeout=15)
        except subprocess.TimeoutExpired:
            daphne.kill()
            daphne.wait(timeout=10)


def _system() -> Any:
    from controlplane.accounts.actors import Actor

    return Actor.system("bench")


def _client(url: str) -> Client:
    return Client(url, environment=ENVIRONMENT, service="bench-cluster", start_timeout=5).start()


def _sync_rows(clients: dict[str, Client], urls: dict[str, str]) -> list[Row]:
    item = RateLimitItemPerHour(LIMIT)
    contenders: dict[str, tuple[Any, int]] = {}
    storages = []
    for where, client in clients.items():
        limiter = client.limiter("bench-cluster-api", limit=LIMIT, period=3600)
        contenders[f"controlplane hit, {where}"] = (partial(limiter.hit, "user:1"), SYNC_CALLS)
        address = urls[where].split("://", 1)[1].split("/", 1)[0]
        scheme = "redis+cluster" if where == "cluster" else "redis"
        storage = storage_from_string(f"{scheme}://{address}", key_prefix=f"LIMITS-{where}")
        storages.append(storage)
        strategy = strategies.FixedWindowRateLimiter(storage)
        contenders[f"limits FixedWindow hit, {where}"] = (
            partial(strategy.hit, item, "user:1"),
            SYNC_CALLS,
        )
    samples = interleaved(contenders, repeats=SYNC_REPEATS)
    for where, client in clients.items():
        decision = client.limiter("bench-cluster-api").hit("user:1")
        assert decision.source == "redis", f"{where}: {decision.source}"
    return [Row.of(SYNC_NAME, name, values, "µs") for name, values in samples.items()]


async def _checks_per_second(client: Client) -> float:
    limiter = client.limiter("bench-cluster-async", limit=LIMIT, period=3600)
    per_caller = ASYNC_CHECKS // CALLERS

    async def caller(index: int) -> None:
        for _ in range(per_caller):
            await limiter.ahit(f"user:{index}")  # 64 subjects: spread over the slots

    await asyncio.gather(*(limiter.ahit(f"user:{i}") for i in range(CALLERS)))
    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(CALLERS)))
    return per_caller * CALLERS / (time.perf_counter() - started)


def _async_rows(clients: dict[str, Client]) -> list[Row]:
    samples: dict[str, list[float]] = {where: [] for where in clients}
    for _ in range(ASYNC_REPEATS):
        for where, client in clients.items():
            samples[where].append(asyncio.run(_checks_per_second(client)))
    return [
        Row.of(ASYNC_NAME, f"controlplane ahit, {where}", values, "checks/s")
        for where, values in samples.items()
    ]


def _transition_ms(first: Client, second: Client, name: str) -> float:
    options = {"minimum_calls": 1, "failure_rate_threshold": 50, "open_for": 600}
    opener, watcher = first.breaker(name, **options), second.breaker(name, **options)
    deadline = time.monotonic() + 5
    while watcher.state != "closed" and time.monotonic() < deadline:
        time.sleep(0.001)
    started = time.perf_counter()
    with suppress(ZeroDivisionError):
        opener.call(lambda: 1 / 0)
    while watcher.state != "open":
        if time.monotonic() > deadline:
            raise RuntimeError(f"breaker {name}: the other client never saw it open")
        time.sleep(0.0005)
    return (time.perf_counter() - started) * 1000


def _breaker_rows(pairs: dict[str, tuple[Client, Client]]) -> list[Row]:
    samples: dict[str, list[float]] = {where: [] for where in pairs}
    run = os.getpid()
    for index in range(TRANSITIONS):
        for where, (first, second) in pairs.items():
            samples[where].append(
                _transition_ms(first, second, f"bench-{run}-{where.replace(' ', '-')}-{index}")
            )
    rows = []
    for where, values in samples.items():
        note = f"p95 {percentile(values, 0.95):.2f} ms, max {max(values):.2f} ms"
        rows.append(Row.of(BREAKER_NAME, where, values, "ms", note))
    return rows


def run(ctx: BenchContext) -> list[Row]:
    directory = Path(tempfile.mkdtemp(prefix="cp-bench-cluster-"))
    cluster = RedisClusterServers(directory / "cluster")
    cluster.start()
    urls = {"one server": ctx.redis_url, "cluster": cluster.url}
    made: list[Client] = []
    try:
        with _dashboard(cluster.url, ctx.redis_url, directory) as viewers:
            pairs = {}
            for where, url in urls.items():
                first, second = _client(url), _client(url)
                made += [first, second]
                pairs[where] = (first, second)
            clients = {where: pair[0] for where, pair in pairs.items()}
            rows = _sync_rows(clients, urls)
            rows += _async_rows(clients)
            rows += _breaker_rows(pairs)
        pushes = viewers.stats.get("messages", 0)  # counted when the viewers stopped
        for row in rows:
            if row.contender.endswith("cluster") and not row.note:
                row.note = f"{VIEWERS} viewers received {pushes} pushes in the run"
        return rows
    finally:
        for client in made:
            client.close()
        cluster.stop()
