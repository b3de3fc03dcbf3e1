"""A scrape where the database may not be read still returns the process's own metrics.

No database access in this module: its tests run as the client library's do, in a
process whose registry holds the control plane's collectors too.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest

from controlplane.live.fleet_metrics import FleetCollector
from controlplane.policies.metrics import PolicyCollector


def test_collectors_that_read_the_database_never_break_a_scrape() -> None:
    registry = CollectorRegistry()
    own = Counter("own_events", "The process's own metric.", registry=registry)
    own.inc()
    registry.register(PolicyCollector())
    registry.register(FleetCollector())

    text = generate_latest(registry).decode()  # pytest-django refuses each query here

    assert "own_events_total 1.0" in text
    assert "# TYPE controlplane_policy_version gauge" in text
    assert "controlplane_policy_version{" not in text  # no sample: nothing was read
    assert registry.get_sample_value("own_events_total") == 1.0
