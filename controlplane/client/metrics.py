"""Prometheus metrics of the client library; no-ops when prometheus-client is absent."""

from __future__ import annotations

import threading
from typing import Any


class _Noop:
    def labels(self, *args: Any, **kwargs: Any) -> _Noop:
        return self

    def inc(self, amount: float = 1) -> None:
        return None

    def set(self, value: float) -> None:
        return None

    def observe(self, value: float) -> None:
        return None


class ClientMetrics:
    """Counters and gauges of one registry; ``ClientMetrics.shared()`` uses the default one."""

    _shared: ClientMetrics | None = None
    _lock = threading.Lock()

    def __init__(self, registry: Any = None) -> None:
        try:
            from prometheus_client import REGISTRY, Counter, Gauge
        except ImportError:
            noop = _Noop()
            for name in self._names():
                setattr(self, name, noop)
            return
        registry = REGISTRY if registry is None else registry
        prefix = "controlplane_client_"

        def counter(name: str, doc: str, labels: list[str]) -> Any:
            return Counter(prefix + name, doc, labels, registry=registry)

        def gauge(name: str, doc: str, labels: list[str]) -> Any:
            return Gauge(prefix + name, doc, labels, registry=registry)

        self.resyncs = counter("resyncs_total", "Snapshots re-read from Redis.", ["environment"])
        self.applied_revision = gauge(
            "applied_revision", "Policy revision this process has applied.", ["environment"]
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
        self.breaker_state = gauge(
            "breaker_state",
            "1 for the breaker's current state, 0 for the others.",
            ["breaker", "state"],
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
            "redis_up", "1 while the client's Redis answers, 0 during an outage.", ["environment"]
        )
        self.redis_outages = counter(
            "redis_outages_total",
            "Times the client's Redis stopped answering (each outage once).",
            ["environment"],
        )
        self.problems = counter(
            "problems_total",
            "Problems the client diagnosed, by cause: unreachable, timeout, tls, auth, url "
            "(Redis), unpublished_environment, unmanaged_policy; each logged once a minute at "
            "most.",
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
            "breaker_slow_calls",
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
