"""One Redis health state per client: one failure marks every enforcer down, one probe
brings them back; a goodbye on close() and instances timed out after their heartbeat
interval plus a margin; start-up that never waits on Redis inside a fork or an event loop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from django.conf import settings
from prometheus_client import REGISTRY

from controlplane.client import Client
from controlplane.client.health import describe, shown_url
from controlplane.embedded_redis import RedisServer
from controlplane.live import history
from controlplane.protocol.keys import KeyLayout
from controlplane.redis_connection import get_redis
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]


def redis_errors(operation: str) -> float:
    labels = {"operation": operation}
    return REGISTRY.get_sample_value("controlplane_client_redis_errors_total", labels) or 0.0


def redis_up(environment: str) -> float | None:
    labels = {"environment": environment}
    return REGISTRY.get_sample_value("controlplane_client_redis_up", labels)


def test_one_failure_sends_every_enforcer_to_its_fallback_and_one_probe_brings_them_back(
    client_factory: Callable[..., Client],
    disposable_redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = client_factory().start()
    limiters = [client.limiter(name, on_redis_error="local") for name in ("a", "b", "c")]
    cache = client.cache("prices", ttl=60)
    back: list[float] = []
    client.health.on_up(lambda: back.append(time.monotonic()))
    assert [limiter.hit("u").source for limiter in limiters] == ["redis"] * 3
    caplog.set_level(logging.INFO, logger="controlplane.client")
    before = redis_errors("rate_limit")

    disposable_redis.stop()
    wait_for(lambda: client.health.down)  # the follower's connection dropped: it noticed
    assert [limiter.hit("u").source for limiter in limiters] == ["local"] * 3
    assert cache.get("sku", "called") == "called"
    assert client.health.cause == "unreachable"
    assert redis_errors("rate_limit") == before  # no limiter tried Redis again
    assert redis_up("production") == 0
    for _ in range(100):
        for limiter in limiters:
            limiter.hit("u")

    disposable_redis.start()
    wait_for(lambda: not client.health.down, timeout=5)
    assert len(back) == 1
    assert [limiter.hit("u").source for limiter in limiters] == ["redis"] * 3
    assert redis_up("production") == 1
    lines = [r for r in caplog.records if r.name == "controlplane.client"]
    [lost] = [r.getMessage() for r in lines if r.levelno == logging.WARNING]
    assert lost.startswith("Lost Redis (follow): Cannot reach Redis at " + client.redis_url)
    [answers] = [r.getMessage() for r in lines if "answers again" in r.getMessage()]
    assert answers.startswith(f"Redis at {client.redis_url} answers again after ")
    fell_back = int(answers.split("; ")[1].split()[0])
    assert fell_back >= 303  # three limiters, a cache lookup, the 100 rounds


def test_an_error_reply_about_one_key_marks_nothing_down(
    cp_client: Client, redis_client: redis.Redis
) -> None:
    limiter = cp_client.limiter("api", on_redis_error="deny")
    redis_client.set(limiter.key_for("mallory"), "not a bucket")  # WRONGTYPE for the script
    assert limiter.hit("mallory").source == "deny"
    assert not cp_client.health.down
    assert limiter.hit("alice").source == "redis"


def test_the_probe_backs_off_and_tells_a_new_cause(
    client_factory: Callable[..., Client], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(tmp_path / "redis", password="right")
    url = f"redis://:wrong@127.0.0.1:{server.port}/0"
    caplog.set_level(logging.WARNING, logger="controlplane.client")
    client = client_factory(redis_url=url, start_timeout=2).start()  # refused: nothing there
    assert client.health.cause == "unreachable"
    before = redis_errors("probe")
    threading.Event().wait(1.5)
    probes = redis_errors("probe") - before
    assert 2 <= probes <= 10  # 50 ms, doubling up to 0.5 s, with jitter: not a hot loop
    server.start()  # now there, but refusing the password: a new cause, said once
    try:
        wait_for(lambda: client.health.cause == "auth", timeout=5)
        threading.Event().wait(1.0)
    finally:
        server.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "controlplane.client"]
    assert [line.split(" ", 4)[:4] for line in lines] == [
        ["Cannot", "reach", "Redis", "at"],
        ["Redis", "at", shown_url(url), "refused"],
    ]


@pytest.mark.parametrize(
    "url",
    ["unix:///var/run/redis.sock", "unix:///var/run/redis.sock?db=2", "redis://r:6379/0?x=1"],
)
def test_a_url_without_a_secret_is_shown_as_given(url: str) -> None:
    assert shown_url(url) == url


def test_describe_names_the_cause_and_hides_the_password() -> None:
    url = "redis://user:p%40ss@redis.internal:6379/0"
    assert shown_url(url) == "redis://user:***@redis.internal:6379/0"
    assert describe(url, redis.TimeoutError("Timeout reading from socket")) == (
        "timeout",
        "Redis at redis://user:***@redis.internal:6379/0 did not answer in time "
        "(Timeout reading from socket)",
    )
    cause, _ = describe(url, redis.ResponseError("WRONGPASS invalid username-password pair"))
    assert cause == "auth"


async def test_astart_does_not_block_the_event_loop(
    client_factory: Callable[..., Client],
) -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        client = client_factory(redis_url=f"redis://127.0.0.1:{port}/0", timeout=0.5)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        started = time.monotonic()
        assert await client.astart() is client
        waited = time.monotonic() - started
        task.cancel()
    assert waited >= 0.4  # the subscription timed out: start() did wait...
    assert ticks >= waited / 0.01 / 3  # ...in a thread: the loop kept running meanwhile
    assert client.health.down and client.health.cause == "timeout"


def test_a_fork_while_redis_hangs_does_not_wait_in_the_child() -> None:
    script = textwrap.dedent(
        """
        import os, socket, sys, time
        from controlplane.client import Client

        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = "redis://127.0.0.1:%d/0" % silent.getsockname()[1]
        client = Client(url, environment="production", service="forks", timeout=2.0,
                        start_timeout=5.0).start()
        began = time.monotonic()
        pid = os.fork()
        if pid == 0:
            print("child %.3f" % (time.monotonic() - began), flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        print("parent started %s" % client.health.down, flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert float(lines["child"]) < 1.0  # not start_timeout (5 s), not the Redis timeout (2 s)


@pytest.fixture
def instances() -> Callable[[], list[str]]:
    keys = KeyLayout("production", settings.REDIS_KEY_PREFIX)
    connection = get_redis()

    def live() -> list[str]:
        return [i.instance for i in history.read_snapshot(connection, keys).instances]

    return live


def test_close_removes_the_instance_at_once(
    client_factory: Callable[..., Client],
    instances: Callable[[], list[str]],
    redis_client: redis.Redis,
) -> None:
    client = client_factory(heartbeat_interval=60).start()
    wait_for(lambda: client.instance_id in instances())
    client.close()
    assert client.instance_id not in instances()
    assert not redis_client.hexists(client.keys.instances, client.instance_id)
    entries = redis_client.xrange(client.keys.reports)
    last = [fields for _, fields in entries if fields["type"] == "heartbeat"][-1]
    assert '"closing":true' in last["data"] and '"connected":false' in last["data"]


@pytest.fixture
def victim() -> Iterator[subprocess.Popen[str]]:
    script = textwrap.dedent(
        f"""
        import time
        from controlplane.client import Client

        client = Client({settings.REDIS_URL!r}, environment="production", service="victim",
                        key_prefix={settings.REDIS_KEY_PREFIX!r}, heartbeat_interval=1.0)
        client.start()
        print(client.instance_id, flush=True)
        time.sleep(60)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        assert process.stdout is not None
        process.stdout.close()


def test_a_killed_instance_is_gone_after_its_interval_and_margin(
    victim: subprocess.Popen[str], instances: Callable[[], list[str]]
) -> None:
    assert victim.stdout is not None
    instance = victim.stdout.readline().strip()
    wait_for(lambda: instance in instances())
    alive_until = time.monotonic() + 4.0  # 4 heartbeats of 1 s: never taken for gone
    while time.monotonic() < alive_until:
        assert instance in instances()
        threading.Event().wait(0.1)
    os.kill(victim.pid, signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: instance not in instances(), timeout=10)
    # The last heartbeat was at most 1 s before the kill; gone 1 + max(2, 0.5) s after it.
    assert time.monotonic() - killed < 3.5
