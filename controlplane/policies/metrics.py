"""Policies and overrides for Prometheus, read from the database at scrape time.

Grafana marks them on the shipped dashboard from these series alone (no plugin):
a policy's version changing is a change, an override's series is the time it held.
Registered by ``controlplane.ops.health`` from the ``METRICS_COLLECTORS`` setting.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily, Metric

from controlplane.ops.metrics import DATABASE_ERRORS
from controlplane.ops.outage import DATABASE_UNAVAILABLE
from controlplane.policies.models import Override, Policy

logger = logging.getLogger(__name__)


class PolicyCollector:
    """``controlplane_policy_version`` and ``controlplane_override_active``: one query each."""

    def describe(self) -> list[Metric]:
        return []  # not known before the first scrape: environments and policies vary

    def collect(self) -> Iterator[Metric]:
        versions = GaugeMetricFamily(
            "controlplane_policy_version",
            "Version of each policy (it rises by one at each change; deleted policies have none).",
            labels=["environment", "kind", "name"],
        )
        overrides = GaugeMetricFamily(
            "controlplane_override_active",
            "1 while an override forces a policy into a state (no series otherwise).",
            labels=["environment", "kind", "name", "state"],
        )
        try:
            for environment, kind, name, version in Policy.objects.filter(
                deleted=False
            ).values_list("environment__name", "kind", "name", "version"):
                versions.add_metric([environment, kind, name], version)
            for environment, kind, name, state in (
                Override.objects.in_force(timezone.now())
                .order_by()
                .values_list("environment__name", "kind", "name", "state")
            ):
                overrides.add_metric([environment, kind, name, state], 1)
        except DATABASE_UNAVAILABLE:  # a scrape must still return the process's own metrics
            DATABASE_ERRORS.labels("metrics").inc()
        except Exception as exc:  # so must a scrape where the database may not be read
            DATABASE_ERRORS.labels("metrics").inc()
            logger.debug("Policy metrics skipped: %s: %s", type(exc).__name__, exc)
        yield from (versions, overrides)
