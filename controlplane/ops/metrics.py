"""The control plane's own Prometheus metrics.

The fleet's metrics, read from the live state at scrape time, are collected by
``controlplane.live.fleet_metrics`` (``METRICS_COLLECTORS`` in the settings).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
