"""The fleet's state as clients report it, for Prometheus: read from the live state at scrape time.

Registered by ``controlplane.ops.health`` from the ``METRICS_COLLECTORS`` setting.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from controlplane.live.history import read_snapshot
from controlplane.ops.metrics import DATABASE_ERRORS, REDIS_ERRORS
from controlplane.ops.outage import DATABASE_UNAVAILABLE
from controlplane.policies.models import Environment
from controlplane.redis_connection import get_redis


class FleetCollector:
    """The fleet's state as clients report it, read from the live state at scrape time."""

    def describe(self) -> list[Metric]:
        return []  # not known before the first scrape: environments and policies vary

    def collect(self) -> Iterator[Metric]:
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
