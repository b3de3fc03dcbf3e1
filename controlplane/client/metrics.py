"""Prometheus metrics of the client library; no-ops when prometheus-client is absent.

Latency histograms of the breakers are filled without touching Prometheus on the
call's path: a call adds one to a bucket of its breaker's ``LatencyCounts`` (a
list), and the reporter moves the counts into the histogram once a second.
"""

from __future__ import annotations

import bisect
import threading
import weakref
from typing import Any, Final

# Upper bounds (seconds) of the call-latency histograms: 100 µs to 10 s.
LATENCY_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    float("inf"),
)


class _Noop:
    def labels(self, *args: Any, **kwargs: Any) -> _Noop:
        return self

    def inc(self, amount: float = 1) -> None:
        return None

    def set(self, value: float) -> None:
        return None

    def observe(self, value: float) -> None:
        return None


class LatencyCounts:
    """Call durations counted by bucket in this process, moved into a histogram later.

    The hot path writes ``counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1`` and
    ``total[0] += seconds`` itself (no call, no lock: under the GIL an increment is
    not interrupted by a thread switch in CPython 3.11-3.13, and a lost one would only
    cost a metric). ``flush`` adds what changed since its last call to ``histogram``.
    """

    __slots__ = ("counts", "total", "_flushed", "_flushed_total", "_lock")

    def __init__(self) -> None:
        self.counts = [0] * len(LATENCY_BUCKETS)
        self.total = [0.0]
        self._flushed = [0] * len(LATENCY_BUCKETS)
        self._flushed_total = 0.0
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        if seconds <= LATENCY_BUCKETS[0]:
            self.counts[0] += 1
        else:
            self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total[0] += seconds

    def flush(self, histogram: Any) -> None:
        """Add the calls counted since the last flush to ``histogram`` (a labelled child)."""
        with self._lock:
            counts = list(self.counts)
            total = self.total[0]
            deltas = [now - before for now, before in zip(counts, self._flushed, strict=True)]
            added = total - self._flushed_total
            self._flushed, self._flushed_total = counts, total
        if any(deltas):
            add_to_histogram(histogram, deltas, added)

    def after_fork(self) -> None:
        self._lock = threading.Lock()


def add_to_histogram(histogram: Any, deltas: list[int], total: float) -> None:
    """Add ``deltas[i]`` observations to bucket ``i`` of a histogram child at once.

    prometheus-client has no public call for this; its histogram child keeps one
    value per bucket (``_buckets``, not cumulative) and ``_sum``, in memory or in the
    multiprocess files alike. Without them, one ``observe`` per call at its bucket's bound.
    """
    if isinstance(histogram, _Noop):
        return
    buckets = getattr(histogram, "_buckets", None)
    value_sum = getattr(histogram, "_sum", None)
    if isinstance(buckets, list) and len(buckets) == len(deltas) and value_sum is not None:
        for bucket, delta in zip(buckets, deltas, strict=True):
            if delta:
                bucket.inc(delta)
        value_sum.inc(total)
        return
    for bound, delta in zip(LATENCY_BUCKETS, deltas, strict=True):
        for _ in range(delta):
            histogram.observe(bound if bound != float("inf") else LATENCY_BUCKETS[-2])


# Collectors already registered, by registry: a second ClientMetrics on the same
# registry shares them instead of failing with "Duplicated timeseries".
_registered: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
_registered_lock = threading.Lock()


class ClientMetrics:
    """Counters, gauges and histograms of one registry (the default one if not given).

    Safe to create twice: a second ``ClientMetrics`` of a registry shares the first
    one's collectors. ``ClientMetrics.shared()`` is the default registry's.
    """

    _shared: ClientMetrics | None = None
    _lock = threading.Lock()

    def __init__(self, registry: Any = None) -> None:
        try:
            from prometheus_client import REGISTRY, Counter, Gauge, Histogram
        except ImportError:
            noop = _Noop()
            for name in self._names():
                setattr(self, name, noop)
            return
        registry = REGISTRY if registry is None else registry
        prefix = "controlplane_client_"
        with _registered_lock:
            known = _registered.setdefault(registry, {})

        def registered(name: str, make: Any) -> Any:
            with _registered_lock:
                if name not in known:
                    known[name] = make()
                return known[name]

        def counter(name: str, doc: str, labels: list[str]) -> Any:
            return registered(name, lambda: Counter(prefix + name, doc, labels, registry=registry))

        def gauge(name: str, doc: str, labels: list[str], multiprocess_mode: str) -> Any:
            return registered(
                name,
                lambda: Gauge(
                    prefix + name,
                    doc,
                    labels,
                    registry=registry,
                    multiprocess_mode=multiprocess_mode,  # type: ignore[arg-type]
                ),
            )

        def histogram(name: str, doc: str, labels: list[str]) -> Any:
            return registered(
                name,
                lambda: Histogram(
                    prefix + name, doc, labels, registry=registry, buckets=LATENCY_BUCKETS
                ),
            )

        self.resyncs = counter("resyncs_total", "Snapshots re-read from Redis.", ["environment"])
        # Under gunicorn's multiprocess mode: the lowest revision a live worker has applied.
        self.applied_revision = gauge(
            "applied_revision",
            "Policy revision this process has applied.",
            ["environment"],
            multiprocess_mode="livemin",
        )
        self.malformed = counter(
            "malformed_documents_total",
            "Documents found in Redis that broke the protocol and were ignored.",
            ["environment"],
        )
        self.redis_errors = counter(
            "redis_errors_total", "Redis operations that failed, by operation.", ["operation"]
        )
        self.internal_errors = counter(
            "internal_errors_total",
            "Errors inside the client library, by component; each cause is logged once a "
            "minute at most.",
            ["component"],
        )
        self.breaker_calls = counter(
            "breaker_calls_total",
            "Calls through a breaker by outcome (success, failure, ignored, rejected, "
            "would_reject).",
            ["breaker", "outcome"],
        )
        # Per process (a "pid" label in multiprocess mode): each worker has its own window.
        self.breaker_state = gauge(
            "breaker_state",
            "1 for the breaker's current state, 0 for the others.",
            ["breaker", "state"],
            multiprocess_mode="liveall",
        )
        self.breaker_call_seconds = histogram(
            "breaker_call_seconds",
            "Duration of the calls a breaker let through (rejected calls are not timed).",
            ["breaker"],
        )
        self.rate_limit_check_seconds = histogram(
            "rate_limit_check_seconds",
            "Duration of rate-limit checks (hit, peek and their async forms), Redis included.",
            ["limiter"],
        )
        # -- breaker block (controlplane/client/breaker.py) --
        self.breaker_slow_calls = counter(
            "breaker_slow_calls_total",
            "Calls through a breaker that took at least its slow_call_duration.",
            ["breaker"],
        )
        # -- end of breaker block --
        self.rate_limit_decisions = counter(
            "rate_limit_decisions_total",
            "Rate-limit checks by result (allowed, rejected, would_reject, fallback).",
            ["limiter", "result"],
        )
        self.cache_requests = counter(
            "cache_requests_total",
            "Cache lookups by result (hit, local_hit, stale_hit, miss, bypass).",
            ["cache", "result"],
        )
        self.reports = counter(
            "reports_total", "Report entries written to the Redis stream, by type.", ["type"]
        )
        # -- Redis health block (controlplane/client/health.py) --
        self.redis_up = gauge(
            "redis_up",
            "1 while the client's Redis answers, 0 during an outage.",
            ["environment"],
            multiprocess_mode="livemin",  # under gunicorn: 0 if any live worker has lost Redis
        )
        self.redis_outages = counter(
            "redis_outages_total",
            "Times the client's Redis stopped answering (each outage once).",
            ["environment"],
        )
        self.problems = counter(
            "problems_total",
            "Problems the client diagnosed, by cause: unreachable, timeout, tls, auth, url "
            "(Redis), unpublished_environment, unmanaged_policy; no_client, custom_key, "
            "async_key (the middlewares); each logged once a minute at most.",
            ["cause"],
        )
        # -- end of Redis health block --

    @staticmethod
    def _names() -> list[str]:
        return [
            "resyncs",
            "applied_revision",
            "malformed",
            "redis_errors",
            "internal_errors",
            "breaker_calls",
            "breaker_state",
            "breaker_call_seconds",
            "breaker_slow_calls",
            "rate_limit_check_seconds",
            "rate_limit_decisions",
            "cache_requests",
            "reports",
            "redis_up",
            "redis_outages",
            "problems",
        ]

    @classmethod
    def shared(cls) -> ClientMetrics:
        with cls._lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared
