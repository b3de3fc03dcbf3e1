"""The control plane's own Prometheus metrics."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

PUBLISHES = Counter(
    "controlplane_publishes_total",
    "Documents published to Redis, by section and result (written, stale, failed).",
    ["section", "result"],
)
PUBLISH_SECONDS = Histogram(
    "controlplane_publish_duration_seconds",
    "Time to publish one document to Redis.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
RECONCILE_RUNS = Counter(
    "controlplane_reconcile_runs_total",
    "Reconciler comparisons of Redis with the database, by depth (quick, full).",
    ["depth"],
)
DRIFT_FOUND = Counter(
    "controlplane_reconcile_drift_total",
    "Documents the reconciler found missing, stale or extra in Redis and repaired.",
    ["problem"],
)
REDIS_ERRORS = Counter(
    "controlplane_redis_errors_total",
    "Redis operations of the control plane that failed, by operation.",
    ["operation"],
)
DATABASE_ERRORS = Counter(
    "controlplane_database_errors_total",
    "Times the control plane could not reach its database, by where "
    "(request, reconcile, ingest, metrics, websocket).",
    ["operation"],
)
WEBSOCKETS = Gauge(
    "controlplane_websocket_connections",
    "Open websocket connections of live pages in this process.",
)
REPORTS_INGESTED = Counter(
    "controlplane_reports_ingested_total",
    "Client report entries processed by this process, by type.",
    ["type"],
)


class FleetCollector:
    """The fleet's state as clients report it, read from the live state at scrape time."""

    def describe(self) -> list[Metric]:
        return []  # not known before the first scrape: environments and policies vary

    def collect(self) -> Iterator[Metric]:
        from controlplane.errors import DATABASE_UNAVAILABLE  # it counts in this module
        from controlplane.live.state import read_snapshot
        from controlplane.policies.models import Environment
        from controlplane.redis_connection import get_redis

        states = GaugeMetricFamily(
            "controlplane_fleet_breaker_instances",
            "Instances reporting each breaker in each state.",
            labels=["environment", "breaker", "state"],
        )
        rates = GaugeMetricFamily(
            "controlplane_fleet_events_per_second",
            "Per-second rate over the last 5 s, summed over instances, by policy and counter "
            "(calls, failures, slow, rejected, allowed, hits, misses...).",
            labels=["environment", "policy", "counter"],
        )
        hit_ratio = GaugeMetricFamily(
            "controlplane_fleet_cache_hit_ratio",
            "Share of cache lookups served from the cache over the last 5 s (0 to 1).",
            labels=["environment", "cache"],
        )
        instances = GaugeMetricFamily(
            "controlplane_fleet_instances", "Client instances reporting.", labels=["environment"]
        )
        try:
            for environment in Environment.objects.all():
                snapshot = read_snapshot(get_redis(), environment.keys())
                instances.add_metric([environment.name], len(snapshot.instances))
                for breaker, counts in snapshot.breaker_states.items():
                    for state, count in counts.items():
                        states.add_metric([environment.name, breaker, state], count)
                for policy, policy_rates in snapshot.rates.items():
                    for counter in policy_rates.counters:
                        rates.add_metric(
                            [environment.name, policy, counter], policy_rates.per_second(counter)
                        )
                    ratio = policy_rates.hit_ratio
                    if policy.startswith("cache:") and ratio is not None:
                        hit_ratio.add_metric([environment.name, policy[6:]], ratio / 100)
        except DATABASE_UNAVAILABLE:  # the environments come from the database
            DATABASE_ERRORS.labels("metrics").inc()
        except Exception:  # a scrape must still return the process's own metrics
            REDIS_ERRORS.labels("metrics").inc()
        yield from (states, rates, hit_ratio, instances)
