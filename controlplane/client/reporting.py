"""Reports to the control plane, written off the hot path by a background thread.

Transitions go out at once; counters are collected from every enforcer and
written once a second as one batch; a heartbeat says the instance is alive and
which revision it applied. Everything goes to the environment's report stream
(bounded with ``MAXLEN ~``), and the heartbeat also to the instances hash.

When a report cannot be written, the thread waits before trying again, twice
as long after each failure (with jitter, up to one heartbeat interval), and
logs each cause of failure once a minute at most. While the client's Redis
health state says Redis is down, it writes nothing and waits for Redis to be
back. On ``close()`` it says goodbye: it removes the instance from the
instances hash and writes a last heartbeat with ``closing`` (docs/protocol.md,
12.2 and 12.3).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis

from controlplane.client.error_log import ErrorLog
from controlplane.protocol.reports import (
    COUNTERS,
    DISCOVERED,
    HEARTBEAT,
    STREAM_MAXLEN,
    TRANSITION,
    encode_data,
    encode_entry,
)

if TYPE_CHECKING:
    from controlplane.client.client import Client

logger = logging.getLogger("controlplane.client")

Collector = Callable[[], dict[str, dict[str, Any]]]


class Reporter:
    def __init__(self, client: Client, heartbeat_interval: float, report_interval: float) -> None:
        self.client = client
        self.heartbeat_interval = heartbeat_interval
        self.report_interval = report_interval
        self._collectors: list[Collector] = []
        self._discovered: dict[str, dict[str, Any]] = {}
        self._events: deque[dict[str, Any]] = deque(maxlen=10_000)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.failures = 0  # consecutive failed attempts; 0 once a report went out
        self._errors = ErrorLog(logger, client.metrics.internal_errors.labels("report"))
        self._redis_errors = ErrorLog(logger)

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="controlplane-report", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Flush what is pending, once, and stop."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        self._thread = None

    def wake(self) -> None:
        """Try now (Redis is back)."""
        self._wake.set()

    def after_fork(self) -> None:
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = None
        self._events.clear()
        self.failures = 0

    def add_collector(self, collector: Collector) -> None:
        """Register ``collector``: called each interval, returns ``{kind:name: counters}``."""
        self._collectors.append(collector)

    def transition(self, kind: str, name: str, **data: Any) -> None:
        """Report a state change now (without blocking the caller)."""
        self._events.append({"type": TRANSITION, "policy": f"{kind}:{name}", **data})
        self._wake.set()

    def discovered(self, kind: str, name: str, defaults: dict[str, Any]) -> None:
        """Report a name used in code that the control plane does not manage."""
        self._discovered[f"{kind}:{name}"] = defaults
        self._wake.set()

    def _run(self) -> None:
        # The follower's first attempt tells the health state whether Redis can be used.
        self.client._first_attempt.wait(self.client.start_timeout)
        next_heartbeat = 0.0
        next_counters = time.monotonic() + self.report_interval
        retry_at = 0.0  # after a failure, nothing is sent before then (but at stop)
        while True:
            stopping = self._stop.is_set()
            now = time.monotonic()
            if self.client.health.down:
                # Nothing can be written, but the process's own metrics (calls, latency
                # histograms) follow the calls: most of all while Redis is down.
                if now >= next_counters or stopping:
                    if self._collect():
                        self.dropped += 1  # this interval's counters never reach the fleet
                    next_counters = now + self.report_interval
                if stopping:
                    return  # the control plane times the instance out
                self._wake.wait(max(0.0, next_counters - time.monotonic()))  # or Redis is back
                self._wake.clear()
                continue
            if now < retry_at and not stopping:
                self._wake.wait(retry_at - now)  # a transition wakes it: not yet
                self._wake.clear()
                continue
            try:
                self._send_events()
                if now >= next_heartbeat and not stopping:
                    self._heartbeat()
                    next_heartbeat = now + self.heartbeat_interval
                if now >= next_counters or stopping:
                    self._send_counters()
                    next_counters = now + self.report_interval
                if stopping:
                    self._goodbye()
                self.failures = 0
            except (redis.RedisError, OSError) as exc:
                self.client.metrics.redis_errors.labels("report").inc()
                self.client.health.failed(exc, "report")
                self._redis_errors.log(
                    logging.DEBUG, "Cannot report to Redis (%s); will retry", exc, exc=exc
                )
                retry_at = time.monotonic() + self._retry_delay()
            except Exception:
                self._errors.exception("Reporting failed; will retry")
                retry_at = time.monotonic() + self._retry_delay()
            if stopping:
                return
            wake_at = max(retry_at, min(next_heartbeat, next_counters))
            self._wake.wait(max(0.0, wake_at - time.monotonic()))
            self._wake.clear()

    def _retry_delay(self) -> float:
        """Seconds to wait after one more failure: doubling, jittered, at most a heartbeat.

        A refused connection fails at once, and so does a bug: without a wait the
        thread would spin. The jitter keeps a fleet from retrying in step.
        """
        self.failures += 1
        cap = max(self.heartbeat_interval, self.report_interval)
        delay = min(cap, self.report_interval * 2.0 ** min(self.failures - 1, 30))
        return random.uniform(delay / 2, delay)

    def _xadd(self, pipe: Any, entry_type: str, data: Any) -> None:
        pipe.xadd(
            self.client.keys.reports,
            encode_entry(entry_type, self.client.instance_id, self.client.service, data),
            maxlen=STREAM_MAXLEN,
            approximate=True,
        )
        self.client.metrics.reports.labels(entry_type).inc()

    def _send_events(self) -> None:
        if not self._events and not self._discovered:
            return
        events: list[dict[str, Any]] = []
        while self._events:
            events.append(self._events.popleft())
        discovered, self._discovered = self._discovered, {}
        try:
            with self.client.redis.pipeline(transaction=False) as pipe:
                for event in events:
                    self._xadd(pipe, event.pop("type"), {**event, "at": time.time()})
                for policy, defaults in discovered.items():
                    self._xadd(pipe, DISCOVERED, {"policy": policy, "defaults": defaults})
                pipe.execute()
        except (redis.RedisError, OSError):
            # Keep transitions for the next try (the deque is bounded), and discoveries.
            self._events.extendleft(reversed([{**e, "type": TRANSITION} for e in events]))
            for policy, defaults in discovered.items():
                self._discovered.setdefault(policy, defaults)
            raise

    def heartbeat_document(self) -> dict[str, Any]:
        return {
            "instance": self.client.instance_id,
            "service": self.client.service,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "library_version": _library_version(),
            "implementation": _implementation(),
            "revision": self.client.state.revision,
            "connected": self.client.connected,
            "heartbeat_interval": self.heartbeat_interval,
            "at": time.time(),
        }

    def _heartbeat(self) -> None:
        document = self.heartbeat_document()
        with self.client.redis.pipeline(transaction=False) as pipe:
            pipe.hset(self.client.keys.instances, self.client.instance_id, encode_data(document))
            self._xadd(pipe, HEARTBEAT, document)
            pipe.execute()

    def _goodbye(self) -> None:
        """The instance closes: out of the instances hash, and a last heartbeat saying so."""
        document = {**self.heartbeat_document(), "connected": False, "closing": True}
        with self.client.redis.pipeline(transaction=False) as pipe:
            pipe.hdel(self.client.keys.instances, self.client.instance_id)
            self._xadd(pipe, HEARTBEAT, document)
            pipe.execute()

    def _collect(self) -> dict[str, dict[str, Any]]:
        """Each collector's counters since the last call (they update local metrics too)."""
        batch: dict[str, dict[str, Any]] = {}
        for collector in self._collectors:
            with contextlib.suppress(Exception):
                for policy, counters in collector().items():
                    if any(counters.values()):
                        # A counter at 0 is left out (docs/protocol.md, 12.2): most
                        # are, and each costs the ingest of every replica to read.
                        batch[policy] = {name: value for name, value in counters.items() if value}
        return batch

    def _send_counters(self) -> None:
        batch = self._collect()
        if not batch:
            return
        try:
            with self.client.redis.pipeline(transaction=False) as pipe:
                self._xadd(pipe, COUNTERS, {"at": time.time(), "policies": batch})
                pipe.execute()
        except (redis.RedisError, OSError):
            self.dropped += 1  # counters of one interval are lost, never the caller's call
            raise


def _library_version() -> str:
    from controlplane.client.client import LIBRARY_VERSION

    return LIBRARY_VERSION


def _implementation() -> dict[str, str]:
    """Which library this is, in which language (docs/protocol.md, 12.2)."""
    return {
        "name": "controlplane.client",
        "version": _library_version(),
        "language": "python",
        "language_version": platform.python_version(),
    }
