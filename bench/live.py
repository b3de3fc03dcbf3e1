"""Live dashboard: 1,000 breakers reporting, 100 websocket viewers, and the overview page.

Targets (from the issue): from a breaker transition written by a client to the
update arriving at every viewer, p95 under 250 ms; the overview page with 1,000
policies renders in under 150 ms with a number of database queries that does
not grow with the number of policies.

How it is measured:

* the app is served by Daphne's own command line (``python -m daphne``) in a
  child process on loopback (channels-redis on the run's Redis): it only fans
  the pushes out to the websockets. The ingest
  (``controlplane.live.ingest.Ingestor``, its batches timed) runs in this
  process, so this process's pusher (``controlplane.live.push``) is the one
  that renders: each push (``send_now``) and its ``render_rows`` are timed
  here, by kind (state changes or figures). Each scenario gets a fresh
  server, so no backlog carries over;
* 100 viewers (one session each, viewer role) hold a websocket each, in one
  child process of their own (a minimal RFC 6455 reader: reading and scanning
  stay cheap, so the clients are not what is measured);
* clients are simulated by writing to the environment's report stream what
  ``controlplane.client.reporting`` writes: 1,000 breakers on 20 instances.
  Three scenarios: *quiet, 1 viewer* and *quiet, 100 viewers* (transitions
  only; the heartbeats go to the instances hash alone), then *loaded* (each
  instance also sends one counters entry a second for its 50 breakers, the 20
  spread over the second, and a heartbeat every 5 s), the issue's case;
* each transition (``closed -> open`` of a breaker not transitioned before,
  one every 0.6 s) is timed from just before its ``XADD`` to the moment each
  viewer has read a push whose row of that breaker says ``data-state="open"``
  (same machine clock). A push that has not come 15 s after the last
  transition counts as infinitely late;
* the overview page is a ``GET /e/<env>/live/`` through Django's test client
  (middleware, session, view, template) with 10, 100 and 1,000 policies (8
  breakers, 1 limiter and 1 cache in 10), its database queries counted; and
  ``overview()`` (the data) and ``render_rows`` (one push's rows, rendered
  once for every viewer) alone. Rows are kept rendered by the values they
  show, so both are measured with the rows as already shown (what a page or
  a push finds when the figures did not change) and, at 1,000 policies, with
  every row rendered anew (every figure changed).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import os
import queue
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bench.common import Row, percentile
from controlplane.protocol.reports import STREAM_MAXLEN, encode_data, encode_entry

HOST = "127.0.0.1"
ENVIRONMENT = "bench-live"
BREAKERS = 1000
INSTANCES = 20
VIEWERS = 100
TRANSITION_SPACING = 0.6  # seconds between two transitions
# Seconds of counters before the first loaded transition: the overview's rates average
# 5 complete seconds, read half a second after each ends (controlplane.live.history), so
# every row's figures change each second for about 7 s before they settle.
WARMUP = 8.0
ARRIVAL_DEADLINE = 15.0  # a push later than this after the last transition is missing
HEARTBEAT_INTERVAL = 5.0
RENDER_SIZES = (10, 100, 1000)
RENDER_REPEATS = 7
TARGET_P95_MS = 250.0
TARGET_RENDER_MS = 150.0
ROOT = Path(__file__).resolve().parent.parent

HOME = "home page GET"
HOME_ENVIRONMENTS = 20
HOME_POLICIES = 1000  # over all of them
PUSH = "live push: transition to 100 viewers"
PAGE = "live overview page GET"
PUSH_RENDER = "live push render_rows, 1,000 breakers"
DATA = "live overview() data alone"
BASELINES = {
    PUSH + " (p50)": "quiet, 1 viewer",
    PUSH + " (p95)": "quiet, 1 viewer",
    DATA: "10 policies",
    PAGE + " (viewer)": "10 policies",
    PAGE + " (operator)": "10 policies",
    PUSH_RENDER: "1 breaker changed",
    HOME: "1 environment",
}


# The viewers' side: runs in a child process (``viewers_main``).

WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OPEN_MARK = b'data-state="open"'
NAME_MARK = b'data-breaker="'


async def _ws_connect(
    port: int, path: str, cookie: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(HOST, port, limit=2**24)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: http://{HOST}:{port}\r\nCookie: {cookie}\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    accept = base64.b64encode(hashlib.sha1(key.encode() + WEBSOCKET_GUID).digest())
    if not head.startswith(b"HTTP/1.1 101") or accept not in head:
        raise RuntimeError(f"websocket refused: {head.splitlines()[0]!r}")
    return reader, writer


async def _ws_message(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """The next text message; answers pings (Daphne closes sockets that do not)."""
    parts: list[bytes] = []
    while True:
        first, second = await reader.readexactly(2)
        opcode, length = first & 0x0F, second & 0x7F
        if length == 126:
            length = int.from_bytes(await reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await reader.readexactly(8), "big")
        payload = await reader.readexactly(length) if length else b""
        if opcode == 0x8:
            raise ConnectionError("websocket closed by the server")
        if opcode == 0x9:  # ping: a masked pong with the same payload
            mask = os.urandom(4)
            masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            writer.write(bytes([0x8A, 0x80 | len(payload)]) + mask + masked)
        elif opcode in (0x0, 0x1):
            parts.append(payload)
            if first & 0x80:
                return b"".join(parts)


def _opened(message: bytes) -> list[str]:
    """Names of the breakers a push shows as open."""
    names = []
    at = message.find(OPEN_MARK)
    while at != -1:
        start = message.rfind(NAME_MARK, 0, at) + len(NAME_MARK)
        names.append(message[start : message.index(b'"', start)].decode())
        at = message.find(OPEN_MARK, at + 1)
    return names


async def _viewer(
    index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: dict[str, int]
) -> None:
    seen: set[str] = set()
    while True:
        message = await _ws_message(reader, writer)
        arrived = time.time()
        stats["messages"] += 1
        stats["bytes"] += len(message)
        stats["largest"] = max(stats["largest"], len(message))
        for name in _opened(message):
            if name not in seen:
                seen.add(name)
                print(f"seen {index} {name} {arrived:.6f}", flush=True)


async def _viewers(port: int, path: str, cookies: list[str]) -> None:
    connections = await asyncio.wait_for(
        asyncio.gather(*(_ws_connect(port, path, cookie) for cookie in cookies)), timeout=60
    )
    stats = {"messages": 0, "bytes": 0, "largest": 0}
    tasks = [
        asyncio.create_task(_viewer(i, reader, writer, stats))
        for i, (reader, writer) in enumerate(connections)
    ]
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # "stop"
    failed = sum(1 for task in tasks if task.done())
    for task in tasks:
        task.cancel()
    cpu = os.times()
    stats["failed"] = failed
    print("stats " + json.dumps({**stats, "cpu_s": cpu.user + cpu.system}), flush=True)


def viewers_main() -> None:
    """Entry point of the viewers' process: ``port path`` as arguments, cookies on stdin."""
    port, path = int(sys.argv[1]), sys.argv[2]
    cookies = json.loads(sys.stdin.readline())
    asyncio.run(_viewers(port, path, cookies))


VIEWERS_CHILD = "from bench.live import viewers_main; viewers_main()"


# The server's side: Daphne's own command line; it renders nothing for the overview.


class Server:
    """One Daphne process on a loopback port (ingest and reconciler off: this process ingests).

    Its overview consumers only forward the HTML this process's pusher sends
    through the channel layer.
    """

    def __init__(self, directory: Path) -> None:
        from controlplane.embedded_redis import free_port

        self.port = free_port()
        self.log = directory / f"daphne-{self.port}.log"
        env = {**os.environ, "INGEST_ENABLED": "false", "RECONCILER_ENABLED": "false"}
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "daphne", "-b", HOST, "-p", str(self.port)]
                + ["controlplane.asgi:application"],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait(lambda: self.process.poll() is not None or _port_open(self.port), 60, "Daphne")
            if self.process.poll() is not None:
                raise RuntimeError(f"Daphne exited; see {self.log}")
        except BaseException:
            self.stop()
            raise

    def cpu_seconds(self) -> float:
        return _process_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


# The control plane's side.


def _process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"live benchmark: {what} not ready within {timeout:.0f}s")
        time.sleep(0.05)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


def _ensure_policies(environment_name: str, names: list[tuple[str, str]]) -> Any:
    """The environment, with these ``(kind, name)`` policies (created through the actions)."""
    from controlplane.accounts.actors import Actor
    from controlplane.policies.actions import do_create_environment, do_create_policy
    from controlplane.policies.models import Environment

    actor = Actor.system("bench")
    environment = Environment.objects.filter(name=environment_name).first()
    if environment is None:
        environment = do_create_environment(environment_name, actor)
    existing = set(environment.policies.values_list("kind", "name"))
    specs: dict[str, dict[str, Any]] = {"breaker": {}, "rate_limit": {}, "cache": {"ttl": 30}}
    for kind, name in names:
        if (kind, name) not in existing:
            do_create_policy(environment, kind, name, specs[kind], actor)
    environment.refresh_from_db()
    return environment


def _user(username: str, role: Any) -> Any:
    from django.contrib.auth.models import Group, User

    from controlplane.accounts.roles import group_name

    user, _ = User.objects.get_or_create(username=username)
    user.groups.add(Group.objects.get(name=group_name(role)))
    return user


def _session_cookie(user: Any) -> str:
    from django.test import Client

    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


def _heartbeat(instance: str, revision: int) -> dict[str, Any]:
    return {
        "instance": instance,
        "service": "bench-shop",
        "host": "bench",
        "pid": 1000 + int(instance.rsplit("-", 1)[1]),
        "library_version": "0.1.0",
        "revision": revision,
        "connected": True,
        "at": time.time(),
    }


def _entry(kind: str, instance: str, data: dict[str, Any]) -> dict[str, str]:
    return encode_entry(kind, instance, "bench-shop", data)


# The overview page.


def _feed_live_state(environment: Any) -> None:
    """Heartbeats and one second of counters for every policy, so rows show figures."""
    from controlplane.live.ingest import process_entries
    from controlplane.redis_connection import get_redis

    client = get_redis()
    keys = environment.keys()
    at = time.time() - 1.5
    entries = []
    policies = list(environment.policies.filter(deleted=False))
    for i in range(INSTANCES):
        instance = f"bench-i-{i:02d}"
        client.hset(keys.instances, instance, encode_data(_heartbeat(instance, 0)))
        counters: dict[str, Any] = {}
        for policy in policies[i::INSTANCES]:
            if policy.kind == "breaker":
                counters[policy.field] = {
                    "calls": 100,
                    "successes": 97,
                    "failures": 3,
                    "state": "closed",
                }
            elif policy.kind == "rate_limit":
                counters[policy.field] = {
                    "allowed": 90,
                    "rejected": 10,
                    "top_rejected": {f"user:{n}": 10 - n for n in range(5)},
                }
            else:
                counters[policy.field] = {"hits": 80, "misses": 20}
        entries.append((f"{i}-0", _entry("counters", instance, {"at": at, "policies": counters})))
    process_entries(environment, entries)


def _mixed_names(count: int) -> list[tuple[str, str]]:
    """Eight breakers, one limiter and one cache in every ten policies."""
    kinds = ["breaker"] * 8 + ["rate_limit", "cache"]
    return [(kinds[i % 10], f"p{i:04d}") for i in range(count)]


def _page_rows(viewer: Any, operator: Any) -> list[Row]:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from controlplane.live.widgets import _rendered_row, overview

    rows = []
    for size in RENDER_SIZES:
        environment = _ensure_policies(f"bench-render-{size}", _mixed_names(size))
        _feed_live_state(environment)
        url = f"/e/{environment.name}/live/"
        # Rows are kept rendered by the values they show (as the pusher leaves them when
        # it pushes them); the largest page also with every row rendered anew.
        anew = (False, True) if size == max(RENDER_SIZES) else (False,)
        for role, user in (("viewer", viewer), ("operator", operator)):
            client = Client(HTTP_HOST=HOST)
            client.force_login(user)
            assert client.get(url, secure=True).status_code == 200  # warm: templates, connections
            for render_all in anew:
                samples, cpu, queries = [], [], []
                for _ in range(RENDER_REPEATS):
                    if render_all:
                        _rendered_row.cache_clear()
                    with CaptureQueriesContext(connection) as captured:
                        started, cpu_started = time.perf_counter(), time.thread_time()
                        response = client.get(url, secure=True)
                        samples.append((time.perf_counter() - started) * 1000)
                        cpu.append((time.thread_time() - cpu_started) * 1000)
                    assert response.status_code == 200
                    queries.append(len(captured.captured_queries))
                note = (
                    f"{max(queries)} DB queries, {len(response.content) // 1024} KiB,"
                    f" {statistics.median(cpu):.0f} ms CPU"
                )
                if size == max(RENDER_SIZES):
                    met = "met" if statistics.median(samples) < TARGET_RENDER_MS else "MISSED"
                    note += f"; target < {TARGET_RENDER_MS:.0f} ms {met}"
                contender = f"{size} policies" + (", every row rendered anew" if render_all else "")
                rows.append(Row.of(f"{PAGE} ({role})", contender, samples, "ms", note))
        # The data alone (snapshot from Redis, overrides and policies from the database).
        samples, queries = [], []
        for _ in range(RENDER_REPEATS):
            with CaptureQueriesContext(connection) as captured:
                started = time.perf_counter()
                overview(environment)
                samples.append((time.perf_counter() - started) * 1000)
            queries.append(len(captured.captured_queries))
        rows.append(Row.of(DATA, f"{size} policies", samples, "ms", f"{max(queries)} DB queries"))
    return rows


def _home_rows(viewer: Any) -> list[Row]:
    """``GET /`` with 1 environment, then 20, of 1,000 policies in all, every one reporting."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from controlplane.policies.models import Environment, Policy

    rows = []
    per_environment = HOME_POLICIES // HOME_ENVIRONMENTS
    for count in (1, HOME_ENVIRONMENTS):
        for number in range(count):
            names = _mixed_names(per_environment)
            environment = _ensure_policies(f"bench-home-{number:02d}", names)
            _feed_live_state(environment)
        client = Client(HTTP_HOST=HOST)
        client.force_login(viewer)
        assert client.get("/", secure=True).status_code == 200  # warm
        samples, queries = [], []
        for _ in range(RENDER_REPEATS):
            with CaptureQueriesContext(connection) as captured:
                started = time.perf_counter()
                response = client.get("/", secure=True)
                samples.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200
            queries.append(len(captured.captured_queries))
        environments = Environment.objects.count()
        policies = Policy.objects.filter(deleted=False).count()
        counted = f"{_plural(environments, 'environment')}, {policies} policies"
        note = f"{counted}, {max(queries)} DB queries"
        if count == HOME_ENVIRONMENTS:
            met = "met" if statistics.median(samples) < TARGET_RENDER_MS else "MISSED"
            note += f"; target < {TARGET_RENDER_MS:.0f} ms {met}"
        contender = "1 environment" if count == 1 else f"{count} environments"
        rows.append(Row.of(HOME, contender, samples, "ms", note))
    return rows


# The pushes.


class Simulation:
    """The fleet's reports, written to the stream as the client library writes them."""

    def __init__(self, redis_url: str, keys: Any, revision: int) -> None:
        import redis

        self.client = redis.Redis.from_url(redis_url)
        self.keys = keys
        self.revision = revision
        self.breakers = [f"b{i:04d}" for i in range(BREAKERS)]
        self.states = dict.fromkeys(self.breakers, "closed")
        self.instances = [f"bench-i-{i:02d}" for i in range(INSTANCES)]
        self.loaded = False
        # Like a client's one reporting thread: a counters entry never carries
        # a state older than a transition written before it.
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-live-fleet", daemon=True)
        self._thread.start()

    def instance_of(self, breaker: str) -> str:
        return self.instances[int(breaker[1:]) % INSTANCES]

    def _heartbeats(self, to_stream: bool) -> None:
        with self.client.pipeline(transaction=False) as pipe:
            for instance in self.instances:
                document = _heartbeat(instance, self.revision)
                pipe.hset(self.keys.instances, instance, encode_data(document))
                if to_stream:
                    pipe.xadd(self.keys.reports, _entry("heartbeat", instance, document))
            pipe.execute()

    def _counters(self, index: int) -> None:
        with self._lock:
            policies = {
                f"breaker:{name}": {
                    "calls": 120,
                    "successes": 116,
                    "failures": 4,
                    "slow": 1,
                    "ignored": 0,
                    "rejected": 0,
                    "would_reject": 0,
                    "state": self.states[name],
                }
                for name in self.breakers[index::INSTANCES]
            }
            data = {"at": time.time(), "policies": policies}
            entry = _entry("counters", self.instances[index], data)
            self.client.xadd(self.keys.reports, entry, maxlen=STREAM_MAXLEN, approximate=True)

    def transition(self, name: str) -> float:
        """Write one ``closed -> open`` transition; return when it was written."""
        data = {
            "policy": f"breaker:{name}",
            "from_state": "closed",
            "to_state": "open",
            "reason": "failure_rate",
            "failure_rate": 62.5,
            "slow_call_rate": 0.0,
            "source": "local",
            "epoch": 1,
        }
        with self._lock:
            written = time.time()
            entry = _entry("transition", self.instance_of(name), {**data, "at": written})
            self.client.xadd(self.keys.reports, entry, maxlen=STREAM_MAXLEN, approximate=True)
            self.states[name] = "open"
        return written

    def _run(self) -> None:
        """Heartbeats; when loaded, also one counters entry per instance a second."""
        next_heartbeat = 0.0
        tick = 0
        next_step = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            loaded = self.loaded
            if now >= next_heartbeat:
                self._heartbeats(to_stream=loaded)  # quiet: the instances hash alone
                next_heartbeat = now + HEARTBEAT_INTERVAL
            if loaded:
                self._counters(tick % INSTANCES)
                tick += 1
            next_step += 1.0 / INSTANCES  # instances spread evenly over each second
            self._stop.wait(max(0.0, next_step - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Viewers:
    """The viewers' child process, and when each saw which breaker open."""

    def __init__(
        self, port: int, cookies: list[str], path: str = f"/ws/live/{ENVIRONMENT}/"
    ) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.arrivals: dict[tuple[int, str], float] = {}
        self.stats: dict[str, Any] = {}
        self.process = subprocess.Popen(
            [sys.executable, "-c", VIEWERS_CHILD, str(port), path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            assert self.process.stdout is not None and self.process.stdin is not None
            threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()
            self.process.stdin.write(json.dumps(cookies) + "\n")
            self.process.stdin.flush()
            if self.lines.get(timeout=90) != "ready":
                raise RuntimeError("the viewers did not connect")
        except BaseException:
            self.stop()
            raise

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line.strip())

    def drain(self) -> None:
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return
            if line.startswith("seen "):
                _, viewer, name, at = line.split()
                self.arrivals[(int(viewer), name)] = float(at)
            elif line.startswith("stats "):
                self.stats = json.loads(line[6:])

    def stop(self) -> None:
        try:
            if self.process.poll() is None and self.process.stdin is not None:
                self.process.stdin.write("stop\n")
                self.process.stdin.flush()
                deadline = time.monotonic() + 10
                while not self.stats and time.monotonic() < deadline:
                    time.sleep(0.02)
                    self.drain()
        except OSError:
            pass
        finally:
            self.process.kill()
            self.process.wait(timeout=10)


@dataclass
class Push:
    """One push of this process's pusher, timed."""

    kind: str  # "state" or "figures"
    seconds: float  # the whole ``send_now``: lookup, render, sends through the layer
    render_seconds: float  # its ``render_rows``
    render_cpu: float  # CPU seconds of that render (its thread's)
    rows: int  # policy rows rendered (the ``@summary`` aside)


class PushTimings:
    """Times each ``send_now`` and its ``render_rows``, in whichever thread runs them.

    The product's pusher renders in the process that learned of the change,
    here the bench process running the ingest, so this is where rendering is
    timed. Both functions are module globals of ``push``, looked up at call
    time, so replacing them there times every push without changing the product.
    """

    def __init__(self) -> None:
        import controlplane.live.push as push

        self._push = push
        self._send, self._render = push.send_now, push.render_rows
        self._local = threading.local()
        self._lock = threading.Lock()
        self.pushes: list[Push] = []
        push.send_now = self._timed_send
        push.render_rows = self._timed_render

    def _timed_send(self, environment_name: str, changed: set[str], *, state: bool = True) -> None:
        self._local.render = None
        started = time.perf_counter()
        try:
            self._send(environment_name, changed, state=state)
        finally:
            seconds = time.perf_counter() - started
            render = self._local.render
            self._local.render = None
            if render is not None:  # pushes that rendered (not those with no layer)
                with self._lock:
                    self.pushes.append(Push("state" if state else "figures", seconds, *render))

    def _timed_render(
        self, environment: Any, changed: set[str], variants: dict[str, dict[str, bool]]
    ) -> dict[str, dict[str, str]]:
        started, cpu = time.perf_counter(), time.thread_time()
        rendered = self._render(environment, changed, variants)
        policy_rows = (sum(1 for r in by_row if r[0] != "@") for by_row in rendered.values())
        rows = max(policy_rows, default=0)
        self._local.render = (time.perf_counter() - started, time.thread_time() - cpu, rows)
        return rendered

    def take(self) -> list[Push]:
        with self._lock:
            pushes, self.pushes = self.pushes, []
        return pushes

    def restore(self) -> None:
        self._push.send_now = self._send
        self._push.render_rows = self._render


def _plural(count: float, noun: str) -> str:
    return f"{count:.0f} {noun}{'' if round(count) == 1 else 's'}"


def _pushes_note(pushes: list[Push], kind: str, elapsed: float) -> str:
    """``N state pushes, median 12 ms (render 8 ms, 7 ms CPU, 1 row), 3% of a core``."""
    mine = [p for p in pushes if p.kind == kind]
    if not mine:
        return f"0 {kind} pushes"
    return (
        f"{len(mine)} {kind} pushes, median {statistics.median(p.seconds for p in mine) * 1000:.0f}"
        f" ms (render {statistics.median(p.render_seconds for p in mine) * 1000:.0f} ms,"
        f" {statistics.median(p.render_cpu for p in mine) * 1000:.0f} ms CPU,"
        f" {_plural(statistics.median(p.rows for p in mine), 'row')}),"
        f" render CPU {sum(p.render_cpu for p in mine) / elapsed:.0%} of a core"
    )


def _start_ingestor() -> Any:
    """The product's Ingestor, each batch timed (entries, seconds)."""
    from controlplane.live.ingest import Ingestor

    class TimedIngestor(Ingestor):
        batches: list[tuple[int, float]]

        def _handle(self, client: Any, environment: Any, stream: str, entries: Any) -> None:
            started = time.perf_counter()
            super()._handle(client, environment, stream, entries)
            if entries:
                self.batches.append((len(entries), time.perf_counter() - started))

    ingestor = TimedIngestor(block_ms=1000)
    ingestor.batches = []
    ingestor.start()
    return ingestor


@dataclass
class Scenario:
    name: str
    viewers: int
    transitions: int
    loaded: bool


SCENARIOS = [
    Scenario("quiet, 1 viewer", 1, 20, loaded=False),
    Scenario("quiet, 100 viewers", VIEWERS, 20, loaded=False),
    Scenario(f"loaded: {BREAKERS:,} breakers reporting, 100 viewers", VIEWERS, 50, loaded=True),
]


def arrival_latencies(
    viewers: Viewers, written: dict[str, float], expected: int
) -> tuple[list[float], list[float]]:
    """Milliseconds from each breaker's transition to each viewer seeing it open; and the
    same sorted, with a push that never came counted as infinitely late."""
    latencies = [
        (at - written[breaker]) * 1000
        for (_, breaker), at in viewers.arrivals.items()
        if breaker in written
    ]
    return latencies, sorted(latencies) + [math.inf] * (expected - len(latencies))


def _await_arrivals(viewers: Viewers, written: dict[str, float], expected: int) -> None:
    deadline = time.monotonic() + ARRIVAL_DEADLINE
    while time.monotonic() < deadline:
        viewers.drain()
        if sum(1 for _, b in viewers.arrivals if b in written) >= expected:
            return
        time.sleep(0.05)


def _scenario(
    scenario: Scenario,
    breakers: list[str],
    cookies: list[str],
    simulation: Simulation,
    ingestor: Any,
    timings: PushTimings,
    directory: Path,
) -> list[Row]:
    server = Server(directory)
    viewers: Viewers | None = None
    try:
        viewers = Viewers(server.port, cookies[: scenario.viewers])
        simulation.loaded = scenario.loaded
        if scenario.loaded:
            time.sleep(WARMUP)  # the counters reach their steady rate, pushes flow
        else:  # one push to every viewer first: templates compiled, connections open
            warm_up, breakers = breakers[0], breakers[1:]
            warm = {warm_up: simulation.transition(warm_up)}
            _await_arrivals(viewers, warm, scenario.viewers)
        ingestor.batches.clear()
        timings.take()
        cpu_before, started = server.cpu_seconds(), time.monotonic()
        written: dict[str, float] = {}
        next_at = time.monotonic()
        for breaker in breakers:
            time.sleep(max(0.0, next_at - time.monotonic()))
            written[breaker] = simulation.transition(breaker)
            next_at += TRANSITION_SPACING
        expected = len(breakers) * scenario.viewers
        _await_arrivals(viewers, written, expected)
        elapsed = time.monotonic() - started
        server_cpu = (server.cpu_seconds() - cpu_before) / elapsed
        pushes = timings.take()
        simulation.loaded = False
        viewers.stop()
    finally:
        if viewers is not None:
            viewers.stop()
        server.stop()
    latencies, samples = arrival_latencies(viewers, written, expected)
    missing = expected - len(latencies)
    batches = list(ingestor.batches)
    note = (
        f"{len(latencies)}/{expected} pushes in time"
        + (
            f" ({missing} not within {ARRIVAL_DEADLINE:.0f} s; those in time: median"
            f" {statistics.median(latencies) / 1000:.1f} s)"
            if missing and latencies
            else ""
        )
        + f"; pusher: {_pushes_note(pushes, 'state', elapsed)};"
        + f" {_pushes_note(pushes, 'figures', elapsed)}"
        + f"; Daphne (fan-out) {server_cpu:.0%} of a core"
        + f"; ingest: {len(batches)} batches, median"
        + f" {statistics.median(t for _, t in batches) * 1000 if batches else 0:.0f} ms"
    )
    stats = viewers.stats
    print(
        f"  {scenario.name}: {note}; viewers received {stats.get('messages', 0)} messages, "
        f"{stats.get('bytes', 0) / 1e6:.1f} MB (largest {stats.get('largest', 0) // 1024} KiB), "
        f"client CPU {stats.get('cpu_s', 0.0):.1f} s",
        file=sys.stderr,
        flush=True,
    )
    p50, p95 = percentile(samples, 0.50), percentile(samples, 0.95)
    met = "met" if p95 < TARGET_P95_MS else "MISSED"
    return [
        Row(PUSH + " (p50)", scenario.name, p50, "ms", note, samples=latencies),
        Row(PUSH + " (p95)", scenario.name, p95, "ms", f"target < 250 ms {met}", samples=[p95]),
    ]


def _render_rows_rows(environment: Any) -> list[Row]:
    """What one push costs to render: ``render_rows``, once per push for every viewer."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from controlplane.live.push import VARIANTS
    from controlplane.live.widgets import _rendered_row, render_rows

    breakers = [f"breaker:b{i:04d}" for i in range(BREAKERS)]
    # (policies reported as changed, every row's figures new: no row kept rendered)
    cases = {
        "1 breaker changed": ({breakers[7]}, False),
        "50 changed (one instance's counters)": (set(breakers[3::INSTANCES]), False),
        "1,000 changed (a second of counters), rows as shown": (set(breakers), False),
        "1,000 changed, every row's figures new": (set(breakers), True),
        "@instances only (a heartbeat)": ({"@instances"}, False),
    }
    rows = []
    for label, (changed, render_all) in cases.items():
        render_rows(environment, changed, VARIANTS)
        samples, cpu, queries, sizes = [], [], 0, {}
        for _ in range(5):
            if render_all:
                _rendered_row.cache_clear()
            with CaptureQueriesContext(connection) as captured:
                started, cpu_started = time.perf_counter(), time.thread_time()
                rendered = render_rows(environment, changed, VARIANTS)
                samples.append((time.perf_counter() - started) * 1000)
                cpu.append((time.thread_time() - cpu_started) * 1000)
            queries = len(captured.captured_queries)
            sizes = {v: sum(map(len, by_row.values())) for v, by_row in rendered.items()}
        kib = ", ".join(f"{variant} {size // 1024} KiB" for variant, size in sizes.items())
        note = (
            f"{statistics.median(cpu):.0f} ms CPU; {queries} DB queries; {kib};"
            " once per push, whatever the number of viewers"
        )
        rows.append(Row.of(PUSH_RENDER, label, samples, "ms", note))
    return rows


def _push_rows(ctx: Any) -> list[Row]:
    from controlplane.accounts.roles import Role

    started = time.monotonic()
    breakers = [("breaker", f"b{i:04d}") for i in range(BREAKERS)]
    environment = _ensure_policies(ENVIRONMENT, breakers)
    print(f"  {BREAKERS} breakers in {time.monotonic() - started:.1f} s", file=sys.stderr)
    viewer = _user("bench-live-viewer", Role.VIEWER)
    cookies = [_session_cookie(viewer) for _ in range(VIEWERS)]  # one session per viewer
    chosen = random.Random(20).sample(
        [name for _, name in breakers], sum(s.transitions + 1 for s in SCENARIOS)
    )
    directory = Path(tempfile.mkdtemp(prefix="cp-bench-live-"))
    simulation = Simulation(ctx.redis_url, environment.keys(), environment.revision)
    timings = PushTimings()
    ingestor = _start_ingestor()
    rows: list[Row] = []
    try:
        for scenario in SCENARIOS:
            print(f"  scenario {scenario.name}...", file=sys.stderr, flush=True)
            count = scenario.transitions + (0 if scenario.loaded else 1)  # + a warm-up
            picked, chosen = chosen[:count], chosen[count:]
            rows += _scenario(scenario, picked, cookies, simulation, ingestor, timings, directory)
    finally:
        simulation.stop()
        ingestor.stop()
        timings.restore()
    rows += _render_rows_rows(environment)
    return rows


def run(ctx: Any) -> list[Row]:
    from controlplane.accounts.roles import Role

    viewer = _user("bench-live-page-viewer", Role.VIEWER)
    operator = _user("bench-live-page-operator", Role.OPERATOR)
    return _home_rows(viewer) + _page_rows(viewer, operator) + _push_rows(ctx)
