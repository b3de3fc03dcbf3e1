"""The client under real servers on loopback: gunicorn (--preload, 4 sync workers)
serving a Django project, and uvicorn (2 workers) serving a Starlette app.

Each server runs in its own process group on a free 127.0.0.1 port, is polled
until ready, loaded with a bounded number of requests from a few threads, and
stopped (SIGTERM, then SIGKILL) whatever the test's outcome.
"""

from __future__ import annotations

import collections
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from django.conf import settings

from controlplane.live.history import heartbeat_instance, instance_timeout
from controlplane.policies.models import Policy
from controlplane.protocol.keys import KeyLayout
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
LONG = 30 * 24 * 3600.0
READY_WITHIN = 60.0
REQUEST_TIMEOUT = 10.0
HEARTBEAT = 0.5


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def request(self, path: str, method: str = "GET") -> Reply:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT)
        try:
            connection.request(method, path, headers={"Connection": "close"})
            response = connection.getresponse()
            headers = {name.lower(): value for name, value in response.getheaders()}
            return Reply(response.status, headers, response.read())
        finally:
            connection.close()

    def load(self, path: str, count: int, method: str = "GET", threads: int = 8) -> list[Reply]:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            return list(pool.map(lambda _: self.request(path, method), range(count)))

    def children(self) -> set[int]:
        """The pids of the server's worker processes (direct children of its master)."""
        return children_of(self.process.pid)


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        """True while the worker runs: one that exited fails the test with its log at once."""
        assert self.process.poll() is None, f"celery worker exited:\n{self.log.read_text()}"
        return True


def children_of(parent: int) -> set[int]:
    """The pids of the processes whose parent is ``parent``."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            pids.add(int(entry.name))
    return pids


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def serve(tmp_path: Path, key_prefix: str) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def serve(command: list[str], ready_path: str, **env: str) -> Server:
        port = free_port()
        log = tmp_path / f"server-{port}.log"
        environment = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "CP_REDIS_URL": settings.REDIS_URL,
            "CP_KEY_PREFIX": key_prefix,
            "CP_HEARTBEAT": str(HEARTBEAT),
            **env,
        }
        with log.open("wb") as output:
            process = subprocess.Popen(
                [arg.replace("{port}", str(port)) for arg in command],
                cwd=ROOT,
                env=environment,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = Server(process, port, log)
        started.append(server)
        deadline = time.monotonic() + READY_WITHIN
        while True:
            assert process.poll() is None, f"server exited:\n{log.read_text()}"
            try:
                if server.request(ready_path).status == 200:
                    return server
            except OSError:
                pass
            assert time.monotonic() < deadline, f"server not ready:\n{log.read_text()}"
            time.sleep(0.1)

    yield serve
    for server in started:
        _stop(server.process)


@pytest.fixture
def serve_worker(tmp_path: Path, key_prefix: str) -> Iterator[Callable[[str], Worker]]:
    """Start a real ``celery worker`` (prefork, 2 children) on the test's Redis as broker."""
    started: list[Worker] = []

    def serve_worker(queue: str) -> Worker:
        environment = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "CP_REDIS_URL": settings.REDIS_URL,
            "CP_BROKER_URL": broker_url(settings.REDIS_URL),
            "CP_QUEUE": queue,
            "CP_KEY_PREFIX": key_prefix,
            "CP_HEARTBEAT": str(HEARTBEAT),
        }
        log = tmp_path / "celery.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                CELERY,
                cwd=ROOT,
                env=environment,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = Worker(process, log)
        started.append(worker)
        return worker

    yield serve_worker
    for worker in started:
        _stop(worker.process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def instances(redis_client: redis.Redis, service: str) -> dict[str, dict[str, Any]]:
    keys = KeyLayout("production", settings.REDIS_KEY_PREFIX)
    documents = {
        field: json.loads(value) for field, value in redis_client.hgetall(keys.instances).items()
    }
    return {field: doc for field, doc in documents.items() if doc["service"] == service}


def live_pids(redis_client: redis.Redis, service: str) -> set[int]:
    """The pids of ``service``'s instances the control plane shows as live now."""
    now = time.time()
    return {
        instance.pid
        for field, document in instances(redis_client, service).items()
        if now - (instance := heartbeat_instance(field, document)).last_seen <= instance.timeout
    }


def broker_url(redis_url: str) -> str:
    """The Celery broker URL of ``redis_url``: kombu spells a socket ``redis+socket://``."""
    if redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url.removeprefix("unix://")
    return redis_url


def count(replies: list[Reply]) -> collections.Counter[int]:
    return collections.Counter(reply.status for reply in replies)


GUNICORN = [
    sys.executable,
    "-m",
    "gunicorn",
    "--preload",
    "--workers=4",
    "--worker-class=sync",
    "--bind=127.0.0.1:{port}",
    "--graceful-timeout=5",
    "--config=python:tests.client.apps.gunicorn_conf",
    "tests.client.apps.django_wsgi:application",
]
CELERY = [
    sys.executable,
    "-m",
    "celery",
    "--app=tests.client.apps.celery_app",
    "worker",
    "--pool=prefork",
    "--concurrency=2",
    "--without-gossip",
    "--without-mingle",
    "--without-heartbeat",
    "--loglevel=WARNING",
]
UVICORN = [
    sys.executable,
    "-m",
    "uvicorn",
    "tests.client.apps.starlette_app:app",
    "--host=127.0.0.1",
    "--port={port}",
    "--workers=2",
    "--lifespan=on",
    "--timeout-graceful-shutdown=5",
    "--log-level=warning",
]


def test_gunicorn_preload_workers_share_exact_limits_and_the_master_is_no_instance(
    serve: Callable[..., Server],
    set_policy: Callable[..., Policy],
    redis_client: redis.Redis,
) -> None:
    set_policy("rate_limit", "api", algorithm="fixed_window", limit=50, period=LONG, key="global")
    server = serve(GUNICORN, "/ready/", DJANGO_SETTINGS_MODULE="tests.client.apps.django_settings")
    workers = wait_for(lambda: len(server.children()) == 4 and server.children(), timeout=30)
    wait_for(lambda: len(instances(redis_client, "shop")) == 4, timeout=30)

    replies = server.load("/api/hello/", 300)

    assert count(replies) == {200: 50, 429: 250}
    assert len({r.body for r in replies if r.status == 200}) > 1  # several workers answered
    rejected = next(r for r in replies if r.status == 429)
    assert int(rejected.headers["retry-after"]) >= 1
    assert rejected.headers["ratelimit-policy"] == f'"api";q=50;w={int(LONG)}'
    assert rejected.headers["ratelimit"].startswith('"api";r=0;t=')
    admitted = next(r for r in replies if r.status == 200)
    assert admitted.headers["ratelimit-limit"] == "50"

    # Method rule and code defaults from the settings, exact across workers too.
    assert count(server.load("/login/", 12, method="POST")) == {200: 3, 429: 9}
    assert count(server.load("/login/", 5)) == {200: 5}

    live = instances(redis_client, "shop")
    assert {doc["pid"] for doc in live.values()} == workers
    assert server.process.pid not in {doc["pid"] for doc in live.values()}

    # A killed worker is gone from the control plane's live instances within one
    # heartbeat interval plus the margin; the others stay.
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: victim not in server.children())
    wait_for(lambda: victim not in live_pids(redis_client, "shop"), timeout=10)
    assert time.monotonic() - killed_at <= instance_timeout(HEARTBEAT) + 1.0
    assert workers - {victim} <= live_pids(redis_client, "shop")


def test_uvicorn_workers_share_exact_limits_with_the_asgi_middleware(
    serve: Callable[..., Server],
    set_policy: Callable[..., Policy],
    redis_client: redis.Redis,
) -> None:
    set_policy("rate_limit", "api", algorithm="fixed_window", limit=40, period=LONG, key="global")
    server = serve(UVICORN, "/ready")
    wait_for(lambda: len(instances(redis_client, "catalogue")) == 2, timeout=30)

    replies = server.load("/api/hello", 200)

    assert count(replies) == {200: 40, 429: 160}
    rejected = next(r for r in replies if r.status == 429)
    assert int(rejected.headers["retry-after"]) >= 1
    assert rejected.headers["ratelimit-policy"] == f'"api";q=40;w={int(LONG)}'
    assert rejected.body == b"Too Many Requests\n"
    admitted = next(r for r in replies if r.status == 200)
    assert admitted.headers["ratelimit-limit"] == "40"
    assert admitted.headers["ratelimit"].startswith('"api";r=')

    live = instances(redis_client, "catalogue")
    assert server.process.pid not in {doc["pid"] for doc in live.values()}
    assert {doc["pid"] for doc in live.values()} <= server.children()


def test_celery_prefork_children_each_start_a_client_and_share_exact_limits(
    serve_worker: Callable[..., Worker],
    set_policy: Callable[..., Policy],
    redis_client: redis.Redis,
    key_prefix: str,
) -> None:
    set_policy("rate_limit", "jobs", algorithm="fixed_window", limit=10, period=LONG, key="global")
    queue = f"{key_prefix}:jobs"  # under the prefix: the test's clean-up removes it
    worker = serve_worker(queue)
    children = wait_for(
        lambda: worker.alive() and len(children_of(worker.pid)) == 2 and children_of(worker.pid),
        timeout=60,
    )
    # A worker that cannot use its broker exits (kombu 5.7 refuses redis-py < 6.1):
    # say so with its log rather than wait the whole minute for its children.
    wait_for(
        lambda: worker.alive() and len(instances(redis_client, "billing-worker")) == 2,
        timeout=60,
    )

    outcomes = f"{key_prefix}:celery-outcomes"
    sender = Celery(broker=broker_url(settings.REDIS_URL))
    try:
        for _ in range(30):
            sender.send_task("controlplane_tests.limited_job", args=[outcomes], queue=queue)
    finally:
        sender.close()
    done = wait_for(
        lambda: redis_client.llen(outcomes) == 30 and redis_client.lrange(outcomes, 0, -1)
    )

    allowed = [entry for entry in done if entry.endswith(":1")]
    assert len(allowed) == 10
    assert {int(entry.split(":")[0]) for entry in done} <= children
    live = instances(redis_client, "billing-worker")
    assert {doc["pid"] for doc in live.values()} == children
    assert worker.pid not in {doc["pid"] for doc in live.values()}
