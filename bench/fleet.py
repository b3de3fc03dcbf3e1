"""A fleet of 1,000, 5,000 and 10,000 instances: the ingest, Redis, the pages and the pushes.

    python -m bench --only fleet            # FLEET_SIZES=1000,5000,10000 FLEET_SECONDS=20
    python -m bench --only soak             # SOAK_MINUTES=30, 2,000 instances coming and going

How it is measured:

* **The fleet** is simulated by child processes (``simulate_main``) writing
  exactly what ``controlplane.client.reporting`` writes, through the protocol's
  own encoders (``encode_entry``, ``encode_data``), at the library's intervals:
  per instance a ``counters`` entry every second (``report_interval``) and a
  heartbeat every 5 s (``heartbeat_interval``: ``HSET`` of the instances hash
  and an entry), spread evenly over the second; a breaker transition for 1
  instance in 1,000 each second. 100 services; each uses 5 breakers, 2 rate
  limits, a cache and 2 configs (1,000 policies), and reports the counters of
  its 8 policies that count.
* **The ingest** runs as 1, 2 or 3 replica processes (``replica_main``): each
  the product's own ``Ingestor`` thread, in one consumer group. The *ceiling*
  is how fast they empty a stream preloaded with 5 seconds of a 10,000-instance
  fleet (60,050 entries); every entry must be processed exactly once, else the
  run fails. Beside them, the floor: one process that only reads each batch
  through the group and acknowledges it. The *real-time* runs feed them the simulated fleet for
  ``FLEET_SECONDS`` and sample the lag twice a second (how old the oldest entry
  not yet read is; 0 when none waits).
* **Redis** memory is read with ``MEMORY USAGE`` per key after each real-time
  run: the instances hash and the breaker states per instance, the per-second
  and per-minute sums per policy; the stream is bounded by its ``MAXLEN``
  whatever the fleet. Redis CPU is ``INFO cpu`` over the run.
* **Pages** (home, live overview, instances: first page, a search, a filter)
  are fetched through Django's test client in this process while 10,000
  instances report and two replicas ingest; **pushes**: a Daphne process, 100
  websocket viewers and 30 breaker transitions, as ``bench.live`` measures them,
  but with 10,000 instances reporting.

On this 2-core machine the replicas, the simulator and Redis share two cores:
more replicas than cores cannot scale, and the note of each row says how much
CPU each took, so the cost per report (which does not depend on the machine's
load) can be read beside the rate.
"""

from __future__ import annotations

import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import redis

from bench.common import Row, percentile
from controlplane.protocol.reports import (
    COUNTERS,
    HEARTBEAT,
    STREAM_MAXLEN,
    TRANSITION,
    encode_data,
    encode_entry,
)

ENVIRONMENT = "bench-fleet"
SERVICES = 100
BREAKERS, LIMITERS, CACHES, CONFIGS = 5, 2, 1, 2  # per service
REPORT_INTERVAL = 1.0  # the client library's defaults (controlplane.client.Client)
HEARTBEAT_INTERVAL = 5.0
TICKS = 50  # the simulator writes 50 times a second, each time a fiftieth of the fleet
TRANSITIONS_PER_INSTANCE_SECOND = 0.001
CEILING_SECONDS = 5  # the preloaded stream: this many seconds of the largest fleet
VIEWERS = 100
PUSH_TRANSITIONS = 30
TRANSITION_SPACING = 0.6
PAGE_REPEATS = 15
# The pages and pushes at the largest size run with the replicas its ingest needs: one
# replica takes 90 % of a core at 10,000 instances, and falls behind as soon as Daphne
# and the viewers share its two cores.
AT_SIZE_REPLICAS = int(os.environ.get("FLEET_AT_SIZE_REPLICAS", "2"))
ROOT = Path(__file__).resolve().parent.parent

INGEST_CEILING = "fleet ingest ceiling (a preloaded stream)"
INGEST_LIVE = "fleet ingest, real time"
REDIS_MEMORY = "fleet Redis memory"
PAGES = "fleet pages, the largest fleet reporting"
PUSH = "fleet push: transition to 100 viewers"
BARE = "bare XREADGROUP + XACK, no processing (the floor)"
BASELINES = {
    INGEST_CEILING: "1 replica",
    INGEST_LIVE: "1,000 instances, 1 replica",
    PAGES + " (p50)": "home",
    PAGES + " (p95)": "home",
}


def sizes() -> list[int]:
    return [int(size) for size in os.environ.get("FLEET_SIZES", "1000,5000,10000").split(",")]


# What the fleet writes (the simulator's side: no Django here).


def service_of(slot: int) -> int:
    return slot % SERVICES


def policy_names(service: int) -> list[tuple[str, str]]:
    prefix = f"s{service:03d}"
    return (
        [("breaker", f"{prefix}-b{j}") for j in range(BREAKERS)]
        + [("rate_limit", f"{prefix}-l{j}") for j in range(LIMITERS)]
        + [("cache", f"{prefix}-c{j}") for j in range(CACHES)]
        + [("config", f"{prefix}-k{j}") for j in range(CONFIGS)]
    )


def counters_of(service: int, states: dict[str, str]) -> dict[str, dict[str, Any]]:
    """One second of an instance's counters, as the reporter writes them (zeros left out)."""
    policies: dict[str, dict[str, Any]] = {}
    for kind, name in policy_names(service):
        field = f"{kind}:{name}"
        if kind == "breaker":
            policies[field] = {
                "calls": 40,
                "successes": 39,
                "failures": 1,
                "slow": 0,
                "ignored": 0,
                "rejected": 0,
                "would_reject": 0,
                "state": states.get(name, "closed"),
            }
        elif kind == "rate_limit":
            policies[field] = {
                "allowed": 30,
                "rejected": 1,
                "would_reject": 0,
                "fallback": 0,
                "top_rejected": {"user:7": 1},
            }
        elif kind == "cache":
            policies[field] = {
                "hits": 25,
                "misses": 5,
                "stale_hits": 0,
                "local_hits": 10,
                "errors": 0,
            }
    return {
        field: {name: value for name, value in counters.items() if value}
        for field, counters in policies.items()
    }


def heartbeat_of(instance: str, service: int, revision: int, at: float) -> dict[str, Any]:
    """The heartbeat document (``Reporter.heartbeat_document``)."""
    return {
        "instance": instance,
        "service": f"svc{service:03d}",
        "host": f"host-{instance[-5:]}",
        "pid": 1000 + zlib.crc32(instance.encode()) % 30000,
        "library_version": "0.1.0",
        "implementation": {
            "name": "controlplane.client",
            "version": "0.1.0",
            "language": "python",
            "language_version": "3.11.2",
        },
        "revision": revision,
        "connected": True,
        "heartbeat_interval": HEARTBEAT_INTERVAL,
        "at": at,
    }


def transition_of(name: str, to_state: str, at: float) -> dict[str, Any]:
    opening = to_state == "open"
    return {
        "policy": f"breaker:{name}",
        "from_state": "closed" if opening else "open",
        "to_state": to_state,
        "reason": "failure_rate" if opening else "probes_succeeded",
        "failure_rate": 62.5 if opening else 0.0,
        "slow_call_rate": 0.0,
        "at": at,
    }


@dataclass
class Instance:
    slot: int
    epoch: int = 0
    states: dict[str, str] | None = None

    @property
    def id(self) -> str:
        return f"fleet-{self.slot:05d}-{self.epoch}"


class Fleet:
    """``size`` instances (those of ``shard`` out of ``shards``), written at the library's pace."""

    def __init__(
        self,
        client: redis.Redis,
        reports: str,
        instances: str,
        size: int,
        *,
        shard: int = 0,
        shards: int = 1,
        revision: int = 1,
        flip: bool = True,
        churn: float = 0.0,
    ) -> None:
        self.client = client
        self.reports = reports
        self.instances_key = instances
        self.revision = revision
        self.flip = flip
        self.churn = churn  # the share of instances replaced each minute
        self.fleet = [Instance(slot) for slot in range(shard, size, shards)]
        self.random = random.Random(shard)
        self.written = 0
        self.late = 0.0  # the most the simulator fell behind its schedule, in seconds

    def _xadd(self, pipe: Any, entry_type: str, instance: Instance, data: dict[str, Any]) -> None:
        service = f"svc{service_of(instance.slot):03d}"
        entry = encode_entry(entry_type, instance.id, service, data)
        pipe.xadd(self.reports, entry, maxlen=STREAM_MAXLEN, approximate=True)
        self.written += 1

    def _heartbeat(self, pipe: Any, instance: Instance, now: float) -> None:
        document = heartbeat_of(instance.id, service_of(instance.slot), self.revision, now)
        pipe.hset(self.instances_key, instance.id, encode_data(document))
        self._xadd(pipe, HEARTBEAT, instance, document)

    def write(self, pipe: Any, instance: Instance, second: int, now: float) -> None:
        """One second of ``instance``: its counters, maybe a heartbeat and a transition."""
        states = instance.states or {}
        if self.flip and self.random.random() < TRANSITIONS_PER_INSTANCE_SECOND:
            # The breakers b0..b3 flip; b4 is the push measurement's (never flipped here).
            name = f"s{service_of(instance.slot):03d}-b{self.random.randrange(BREAKERS - 1)}"
            to_state = "closed" if states.get(name) == "open" else "open"
            instance.states = states = {**states, name: to_state}
            self._xadd(pipe, TRANSITION, instance, transition_of(name, to_state, now))
        policies = counters_of(service_of(instance.slot), states)
        self._xadd(pipe, COUNTERS, instance, {"at": now, "policies": policies})
        if (second + instance.slot) % int(HEARTBEAT_INTERVAL) == 0:
            self._heartbeat(pipe, instance, now)

    def replace(self, pipe: Any, instance: Instance, now: float) -> None:
        """``instance`` leaves (half say goodbye, half go silent) and a new one takes its slot."""
        if instance.slot % 2 == 0:
            document = heartbeat_of(instance.id, service_of(instance.slot), self.revision, now)
            pipe.hdel(self.instances_key, instance.id)
            self._xadd(pipe, HEARTBEAT, instance, {**document, "connected": False, "closing": True})
        instance.epoch += 1
        instance.states = None

    def run(self, seconds: float) -> None:
        buckets = [self.fleet[tick::TICKS] for tick in range(TICKS)]
        started = time.monotonic()
        for tick in range(int(seconds * TICKS)):
            due = started + tick / TICKS
            self.late = max(self.late, time.monotonic() - due)
            time.sleep(max(0.0, due - time.monotonic()))
            second, slot = divmod(tick, TICKS)
            now = time.time()
            with self.client.pipeline(transaction=False) as pipe:
                for instance in buckets[slot]:
                    churning = self.churn and second and second % 60 == 0
                    if churning and self.random.random() < self.churn:
                        self.replace(pipe, instance, now)
                    self.write(pipe, instance, second, now)
                pipe.execute()


def simulate_main() -> None:
    """The simulator's process: ``url reports instances size shard shards seconds revision
    flip churn`` as arguments; prints its figures as JSON when done."""
    url, reports, instances = sys.argv[1:4]
    size, shard, shards = (int(value) for value in sys.argv[4:7])
    seconds, revision = float(sys.argv[7]), int(sys.argv[8])
    flip, churn = sys.argv[9] == "1", float(sys.argv[10])
    fleet = Fleet(
        redis.Redis.from_url(url),
        reports,
        instances,
        size,
        shard=shard,
        shards=shards,
        revision=revision,
        flip=flip,
        churn=churn,
    )
    print("ready", flush=True)
    sys.stdin.readline()  # go
    cpu = time.process_time()
    fleet.run(seconds)
    print(
        json.dumps(
            {"written": fleet.written, "late": fleet.late, "cpu": time.process_time() - cpu}
        ),
        flush=True,
    )


# The ingest's replicas (child processes with Django).


def replica_main() -> None:
    """One control-plane replica's ingest: ``ready``, then ``go``, ``stats``, ``stop`` on stdin."""
    import django

    django.setup()
    from django.conf import settings

    from controlplane.live import ingest

    if os.environ.get("FLEET_SOAK_KEEP_SECONDS"):  # the soak: history kept minutes, not days
        settings.HISTORY_KEEP_DAYS = float(os.environ["FLEET_SOAK_KEEP_SECONDS"]) / 86_400
        ingest.PRUNE_INTERVAL = 60.0
    ingestor: Any = BareConsumer() if os.environ.get("FLEET_BARE") else ingest.Ingestor(100)
    print("ready", flush=True)
    cpu = 0.0
    for line in sys.stdin:
        command = line.strip()
        if command == "go":
            cpu = time.process_time()
            ingestor.start()
        elif command in ("stats", "stop"):
            if command == "stop":
                ingestor.stop()
            usage = resource.getrusage(resource.RUSAGE_SELF)
            figures = {
                "processed": ingestor.processed,
                "cpu": time.process_time() - cpu,
                "rss_mb": _rss_mb(),
                "peak_rss_mb": usage.ru_maxrss / 1024,
            }
            print(json.dumps(figures), flush=True)
            if command == "stop":
                return


class BareConsumer(threading.Thread):
    """The floor: read each batch through the consumer group and acknowledge it, no more."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.processed = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        from controlplane.live.ingest import GROUP, read_group
        from controlplane.policies.models import Environment
        from controlplane.redis_connection import get_redis

        client = get_redis()
        streams = [environment.keys().reports for environment in Environment.objects.all()]
        while not self._stop_event.is_set():
            for stream, entries in read_group(client, "bare", streams, block_ms=100):
                if entries:
                    client.xack(stream, GROUP, *[entry_id for entry_id, _ in entries])
                    self.processed += len(entries)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Child:
    """A child process speaking lines: ``ready`` first, then JSON answers."""

    def __init__(self, code: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            env={**os.environ, **(env or {})},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        if self.readline(90) != "ready":
            self.kill()
            raise RuntimeError(f"a benchmark child did not start: {code}")

    def readline(self, timeout: float) -> str:
        assert self.process.stdout is not None
        result: list[str] = []
        reader = threading.Thread(
            target=lambda: result.append(_line(self.process.stdout)), daemon=True
        )
        reader.start()
        reader.join(timeout)
        if not result:
            self.kill()
            raise RuntimeError("a benchmark child did not answer in time")
        return result[0]

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def ask(self, command: str, timeout: float = 30) -> dict[str, Any]:
        self.send(command)
        return dict(json.loads(self.readline(timeout)))

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


def _line(stream: IO[str] | None) -> str:
    assert stream is not None
    return stream.readline().strip()


SIMULATOR = "from bench.fleet import simulate_main; simulate_main()"
REPLICA = "from bench.fleet import replica_main; replica_main()"


class Replicas:
    def __init__(self, count: int, *, bare: bool = False) -> None:
        self.children: list[Child] = []
        try:
            for _ in range(count):
                self.children.append(Child(REPLICA, env={"FLEET_BARE": "1"} if bare else {}))
        except BaseException:
            self.stop()
            raise

    def go(self) -> None:
        for child in self.children:
            child.send("go")

    def stats(self, command: str = "stats") -> list[dict[str, Any]]:
        return [child.ask(command) for child in self.children]

    def stop(self) -> list[dict[str, Any]]:
        figures = []
        for child in self.children:
            try:
                figures.append(child.ask("stop"))
            except (RuntimeError, OSError, ValueError):
                pass
            finally:
                child.kill()
        self.children = []
        return figures


# Measuring.


class Watch:
    """The stream and its consumer group, read from Redis."""

    def __init__(self, client: redis.Redis, keys: Any) -> None:
        self.client = client
        self.keys = keys

    def group(self) -> dict[str, Any]:
        for group in self.client.xinfo_groups(self.keys.reports):
            if group["name"] in (b"controlplane", "controlplane"):
                return dict(group)
        return {}

    def _undelivered_since(self) -> float | None:
        """When the last entry read was written, if any entry waits unread (else None).

        Read from the ids, not from ``lag``, which Redis before 7.0 does not give.
        """
        group = self.group()
        if not group:
            return None
        delivered = _text(group["last-delivered-id"])
        generated = _text(self.client.xinfo_stream(self.keys.reports)["last-generated-id"])
        if delivered == generated:
            return None
        return int(delivered.split("-")[0]) / 1000

    def waiting(self) -> int:
        """Entries not yet acknowledged (read and being processed), or 1 if any waits unread."""
        pending = int(self.group().get("pending") or 0)
        return pending + (self._undelivered_since() is not None)

    def lag_seconds(self) -> float:
        """How long the oldest entry not yet read has waited (0 when none waits)."""
        since = self._undelivered_since()
        return 0.0 if since is None else max(0.0, time.time() - since)

    def cpu(self) -> float:
        info = self.client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def memory(self, key: str) -> int:
        return int(self.client.memory_usage(key, samples=0) or 0)

    def matching(self, pattern: str) -> Iterator[bytes]:
        yield from self.client.scan_iter(match=pattern, count=1000)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _reset(client: redis.Redis, keys: Any) -> None:
    """The environment's live state, stream and instances gone; the group made again."""
    from controlplane.live.ingest import ensure_group

    client.delete(keys.reports, keys.instances, keys.live_breaker_states)
    tag = keys.reports.rsplit(":", 1)[0]
    for key in client.scan_iter(match=f"{_escaped(tag)}:live:*", count=1000):
        client.delete(key)
    ensure_group(client, keys.reports)


def _escaped(pattern: str) -> str:
    return "".join(f"\\{c}" if c in "[]*?{}" else c for c in pattern)


def _ensure_environment() -> Any:
    """The environment with every service's policies (created through the actions)."""
    from controlplane.accounts.actors import Actor
    from controlplane.policies.actions import do_create_environment, do_create_policy
    from controlplane.policies.models import Environment

    actor = Actor.system("bench")
    environment = Environment.objects.filter(name=ENVIRONMENT).first()
    if environment is None:
        environment = do_create_environment(ENVIRONMENT, actor)
    existing = set(environment.policies.values_list("kind", "name"))
    specs: dict[str, dict[str, Any]] = {
        "breaker": {},
        "rate_limit": {},
        "cache": {"ttl": 30},
        "config": {"value_type": "integer", "value": 1},
    }
    for service in range(SERVICES):
        for kind, name in policy_names(service):
            if (kind, name) not in existing:
                do_create_policy(environment, kind, name, specs[kind], actor)
    environment.refresh_from_db()
    return environment


def _preload(client: redis.Redis, keys: Any, revision: int, size: int, seconds: int) -> int:
    """``seconds`` of a ``size``-instance fleet written to the stream at once."""
    fleet = Fleet(client, keys.reports, keys.instances, size, revision=revision)
    now = time.time()
    for second in range(seconds):
        for start in range(0, size, 1000):
            with client.pipeline(transaction=False) as pipe:
                for instance in fleet.fleet[start : start + 1000]:
                    fleet.write(pipe, instance, second, now)
                pipe.execute()
    return fleet.written


def _ceiling_rows(client: redis.Redis, keys: Any, revision: int) -> list[Row]:
    watch = Watch(client, keys)
    size = max(sizes())
    rows = []
    for count, bare in ((1, True), (1, False), (2, False), (3, False)):
        _reset(client, keys)
        replicas = Replicas(count, bare=bare)
        try:
            entries = _preload(client, keys, revision, size, CEILING_SECONDS)
            started = time.monotonic()
            replicas.go()
            deadline = started + 300
            while watch.waiting() and time.monotonic() < deadline:
                time.sleep(0.02)
            elapsed = time.monotonic() - started
            left = watch.waiting()
        finally:
            figures = replicas.stop()
        processed = sum(f["processed"] for f in figures)
        if left or processed != entries:
            raise RuntimeError(
                f"ingest ceiling, {count} replicas: {processed} of {entries} entries processed"
                f" ({left} left): each must be processed exactly once"
            )
        cpu = sum(f["cpu"] for f in figures)
        split = " + ".join(f"{f['processed']:,}" for f in figures)
        note = (
            f"{entries:,} entries ({CEILING_SECONDS} s of {size:,} instances) in {elapsed:.1f} s;"
            f" each processed once ({split}); {cpu / entries * 1e6:.0f} µs of replica CPU"
            f" per report; peak RSS {max(f['peak_rss_mb'] for f in figures):.0f} MB"
        )
        contender = BARE if bare else f"{count} replica{'s' * (count > 1)}"
        print(f"  {contender}: {entries / elapsed:,.0f} reports/s; {note}", file=sys.stderr)
        rows.append(
            Row(
                INGEST_CEILING,
                contender,
                entries / elapsed,
                "reports/s",
                note,
                samples=[entries / elapsed],
            )
        )
    return rows


@dataclass
class LiveRun:
    size: int
    replicas: int
    rate_in: float
    lag: list[float]
    replica_cpu: list[float]  # share of a core, each
    replica_rss: list[float]
    redis_cpu: float
    simulator_late: float
    memory: dict[str, int]
    seconds: float


def _simulators(
    url: str,
    keys: Any,
    size: int,
    seconds: float,
    revision: int,
    *,
    flip: bool = True,
    churn: float = 0.0,
    count: int = 1,
) -> list[Child]:
    return [
        Child(
            SIMULATOR,
            url,
            keys.reports,
            keys.instances,
            str(size),
            str(shard),
            str(count),
            str(seconds),
            str(revision),
            "1" if flip else "0",
            str(churn),
        )
        for shard in range(count)
    ]


def _live_run(url: str, keys: Any, revision: int, size: int, count: int, seconds: float) -> LiveRun:
    client = redis.Redis.from_url(url)
    watch = Watch(client, keys)
    _reset(client, keys)
    replicas = Replicas(count)
    simulators: list[Child] = []
    try:
        replicas.go()
        simulators = _simulators(url, keys, size, seconds, revision)
        cpu_before, redis_before = replicas.stats(), watch.cpu()
        started = time.monotonic()
        for child in simulators:
            child.send("")
        lags = []
        while time.monotonic() < started + seconds:
            time.sleep(0.5)
            if time.monotonic() > started + 3:  # the first seconds fill the buffers
                lags.append(watch.lag_seconds())
        done = [json.loads(child.readline(60)) for child in simulators]
        elapsed = time.monotonic() - started
        deadline = time.monotonic() + 120
        while watch.waiting() and time.monotonic() < deadline:
            time.sleep(0.05)
        drained = time.monotonic() - started
        cpu_after, redis_after = replicas.stats(), watch.cpu()
    finally:
        for child in simulators:
            child.kill()
        replicas.stop()
    written = sum(d["written"] for d in done)
    memory = {
        "instances": watch.memory(keys.instances),
        "breaker states": watch.memory(keys.live_breaker_states),
        "stream": watch.memory(keys.reports),
        "live sums": sum(
            watch.memory(key.decode())
            for key in watch.matching(_escaped(keys.reports.rsplit(":", 1)[0]) + ":live:[sm]:*")
        ),
        "top rejected": sum(
            watch.memory(key.decode())
            for key in watch.matching(_escaped(keys.reports.rsplit(":", 1)[0]) + ":live:top:*")
        ),
        "used": int(client.info("memory")["used_memory"]),
        "instances listed": int(client.hlen(keys.instances)),
        "stream entries": int(client.xlen(keys.reports)),
    }
    return LiveRun(
        size=size,
        replicas=count,
        rate_in=written / elapsed,
        lag=lags or [0.0],
        replica_cpu=[
            (a["cpu"] - b["cpu"]) / drained for a, b in zip(cpu_after, cpu_before, strict=True)
        ],
        replica_rss=[a["rss_mb"] for a in cpu_after],
        redis_cpu=(redis_after - redis_before) / drained,
        simulator_late=max(d["late"] for d in done),
        memory=memory,
        seconds=seconds,
    )


def _live_rows(url: str, keys: Any, revision: int) -> list[Row]:
    seconds = float(os.environ.get("FLEET_SECONDS", "20"))
    runs = [(size, 1) for size in sizes()] + [(max(sizes()), 2), (max(sizes()), 3)]
    rows = []
    for size, count in runs:
        run = _live_run(url, keys, revision, size, count, seconds)
        lag50, lag_max = statistics.median(run.lag), max(run.lag)
        cpu = " + ".join(f"{share:.0%}" for share in run.replica_cpu)
        note = (
            f"{run.rate_in:,.0f} reports/s in; lag p50 {lag50:.2f} s, max {lag_max:.2f} s;"
            f" replica CPU {cpu} of a core, RSS {max(run.replica_rss):.0f} MB;"
            f" Redis CPU {run.redis_cpu:.0%}; simulator at most {run.simulator_late:.2f} s late"
        )
        print(f"  {size:,} instances, {count} replicas: {note}", file=sys.stderr, flush=True)
        contender = f"{size:,} instances, {count} replica{'s' * (count > 1)}"
        rows.append(Row(INGEST_LIVE, contender, lag_max, "s lag (max)", note, samples=run.lag))
        if count == 1:
            rows += _memory_rows(run)
    return rows


def _memory_rows(run: LiveRun) -> list[Row]:
    memory = run.memory
    listed = max(1, memory["instances listed"])
    policies = SERVICES * len(policy_names(0))
    per_instance = (memory["instances"] + memory["breaker states"]) / listed
    per_policy = (memory["live sums"] + memory["top rejected"]) / policies
    contender = f"{run.size:,} instances"
    note = (
        f"instances hash {memory['instances'] / 1e6:.1f} MB + breaker states"
        f" {memory['breaker states'] / 1e6:.1f} MB for {listed:,} instances; stream"
        f" {memory['stream'] / 1e6:.1f} MB ({memory['stream entries']:,} entries, bounded by"
        f" MAXLEN ~{STREAM_MAXLEN:,}); Redis used {memory['used'] / 1e6:.0f} MB in all"
    )
    policy_note = (
        f"{policies:,} policies: per-second and per-minute sums"
        f" {memory['live sums'] / 1e6:.1f} MB, top rejected {memory['top rejected'] / 1e3:.0f} KB,"
        f" after {run.seconds:.0f} s of reports: they grow for 16 minutes (HISTORY_SECONDS),"
        " then stay (the soak measures that)"
    )
    return [
        Row(
            REDIS_MEMORY + " per instance",
            contender,
            per_instance / 1024,
            "KiB",
            note,
            samples=[per_instance / 1024],
        ),
        Row(
            REDIS_MEMORY + " per policy",
            contender,
            per_policy / 1024,
            "KiB",
            policy_note,
            samples=[per_policy / 1024],
        ),
    ]


def _page_rows(viewer: Any) -> list[Row]:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    pages = {
        "home": "/",
        "live overview": f"/e/{ENVIRONMENT}/live/",
        "instances, first page": f"/e/{ENVIRONMENT}/instances/",
        "instances, a search": f"/e/{ENVIRONMENT}/instances/?q=svc042",
        "instances, behind only": f"/e/{ENVIRONMENT}/instances/?status=behind",
    }
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(viewer)
    rows = []
    for label, url in pages.items():
        assert client.get(url, secure=True).status_code == 200  # warm
        samples, cpu = [], []
        for _ in range(PAGE_REPEATS):
            with CaptureQueriesContext(connection) as captured:
                started, cpu_started = time.perf_counter(), time.thread_time()
                response = client.get(url, secure=True)
                samples.append((time.perf_counter() - started) * 1000)
                cpu.append((time.thread_time() - cpu_started) * 1000)
            assert response.status_code == 200, (url, response.status_code)
        note = (
            f"{len(captured.captured_queries)} DB queries, {len(response.content) // 1024} KiB,"
            f" {statistics.median(cpu):.0f} ms CPU; target p95 < 200 ms"
            f" {'met' if percentile(samples, 0.95) < 200 else 'MISSED'}"
        )
        print(f"  {label}: p50 {statistics.median(samples):.0f} ms; {note}", file=sys.stderr)
        rows.append(Row.of(PAGES + " (p50)", label, samples, "ms", note))
        p95 = percentile(samples, 0.95)
        rows.append(Row(PAGES + " (p95)", label, p95, "ms", note, samples=[p95]))
    return rows


def _push_rows(url: str, keys: Any, revision: int, viewer: Any) -> list[Row]:
    """Transitions to 100 viewers while 10,000 instances report (``bench.live``'s viewers)."""
    from bench.live import Server, Viewers, _session_cookie, arrival_latencies

    client = redis.Redis.from_url(url)
    cookies = [_session_cookie(viewer) for _ in range(VIEWERS)]
    services = random.Random(17).sample(range(SERVICES), PUSH_TRANSITIONS)
    server = Server(Path(tempfile.mkdtemp(prefix="cp-bench-fleet-")))
    viewers: Viewers | None = None
    written: dict[str, float] = {}
    try:
        viewers = Viewers(server.port, cookies, path=f"/ws/live/{ENVIRONMENT}/")
        time.sleep(5)  # the figures pushes of 10,000 instances reach their pace
        cpu_before, started = server.cpu_seconds(), time.monotonic()
        next_at = time.monotonic()
        for service in services:
            time.sleep(max(0.0, next_at - time.monotonic()))
            name = f"s{service:03d}-b{BREAKERS - 1}"
            # An instance of the service that the simulator does not write for: its next
            # counters would say "closed" before a slow push could show "open".
            instance = f"fleet-push-{service:03d}"
            document = heartbeat_of(instance, service, revision, time.time())
            document["heartbeat_interval"] = 3600  # live through the run: its state counts
            client.hset(keys.instances, instance, encode_data(document))
            at = time.time()
            entry = encode_entry(
                TRANSITION, instance, f"svc{service:03d}", transition_of(name, "open", at)
            )
            client.xadd(keys.reports, entry, maxlen=STREAM_MAXLEN, approximate=True)
            written[name] = at
            next_at += TRANSITION_SPACING
        lags = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # _await_arrivals, with the ingest's lag sampled
            viewers.drain()
            if sum(1 for _, name in viewers.arrivals if name in written) >= len(written) * VIEWERS:
                break
            lags.append(Watch(client, keys).lag_seconds())
            time.sleep(0.1)
        daphne = (server.cpu_seconds() - cpu_before) / (time.monotonic() - started)
        viewers.stop()
    finally:
        if viewers is not None:
            viewers.stop()
        server.stop()
    expected = len(written) * VIEWERS
    latencies, samples = arrival_latencies(viewers, written, expected)
    p50, p95 = percentile(samples, 0.50), percentile(samples, 0.95)
    stats = viewers.stats
    note = (
        f"{len(latencies)}/{expected} pushes; the ingest's lag meanwhile up to"
        f" {max(lags, default=0.0):.1f} s; Daphne (fan-out) {daphne:.0%} of a core; viewers"
        f" got {stats.get('messages', 0):,} messages, {stats.get('bytes', 0) / 1e6:.0f} MB;"
        f" target p95 < 250 ms {'met' if p95 < 250 else 'MISSED'}"
    )
    print(f"  push: p50 {p50:.0f} ms, p95 {p95:.0f} ms; {note}", file=sys.stderr, flush=True)
    contender = f"{max(sizes()):,} instances reporting, {AT_SIZE_REPLICAS} ingest replicas"
    return [
        Row(PUSH + " (p50)", contender, p50, "ms", note, samples=latencies),
        Row(PUSH + " (p95)", contender, p95, "ms", note, samples=[p95]),
    ]


def _fleet_at_size_rows(url: str, keys: Any, revision: int, viewer: Any) -> list[Row]:
    """Pages and pushes with the largest fleet reporting, ``AT_SIZE_REPLICAS`` ingesting."""
    client = redis.Redis.from_url(url)
    _reset(client, keys)
    size = max(sizes())
    replicas = Replicas(AT_SIZE_REPLICAS)
    simulators: list[Child] = []
    try:
        replicas.go()
        simulators = _simulators(url, keys, size, 600, revision)
        for child in simulators:
            child.send("")
        deadline = time.monotonic() + 30
        while int(client.hlen(keys.instances)) < size and time.monotonic() < deadline:
            time.sleep(0.1)  # every instance has sent a heartbeat
        return _page_rows(viewer) + _push_rows(url, keys, revision, viewer)
    finally:
        for child in simulators:
            child.kill()
        replicas.stop()


def _viewer() -> Any:
    from django.contrib.auth.models import Group, User

    from controlplane.accounts.roles import Role, group_name

    user, _ = User.objects.get_or_create(username="bench-fleet-viewer")
    user.groups.add(Group.objects.get(name=group_name(Role.VIEWER)))
    return user


def run(ctx: Any) -> list[Row]:
    from controlplane.redis_connection import get_redis

    started = time.monotonic()
    environment = _ensure_environment()
    print(
        f"  {environment.policies.count():,} policies in {time.monotonic() - started:.0f} s",
        file=sys.stderr,
    )
    keys = environment.keys()
    revision = environment.revision
    client: redis.Redis = get_redis()
    viewer = _viewer()
    try:
        return (
            _ceiling_rows(client, keys, revision)
            + _live_rows(ctx.redis_url, keys, revision)
            + _fleet_at_size_rows(ctx.redis_url, keys, revision, viewer)
        )
    finally:
        _reset(client, keys)
