"""The soak: a fleet coming and going for ``SOAK_MINUTES`` (30), Redis and the database sampled.

    python -m bench --only soak             # SOAK_MINUTES=30 SOAK_INSTANCES=2000

``SOAK_INSTANCES`` instances (``bench.fleet``'s simulator) report at the client
library's pace; every minute a tenth of them leave (half say goodbye, half go
silent) and new ones take their place, and 1 in 1,000 a second flips a breaker
(a breaker event row each). One ingest replica runs with
``INSTANCES_FORGET_AFTER`` at its minimum (60 s) and the history kept
``SOAK_KEEP_SECONDS`` (300 s) instead of days, pruned every minute, so that the
run reaches in minutes the steady state that the defaults (15 minutes, 30 days)
reach in a month. Every minute it samples Redis's memory and keys and the
database's rows; memory and rows must be flat after the warm-up (18 minutes:
the per-second sums kept for the charts fill Redis for 16): the last sample
within 15 % of the warm-up's, else the row says GROWS.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import redis

from bench.common import Row
from bench.fleet import Child, Replicas, Watch, _ensure_environment, _reset, _simulators

SOAK = "soak: a fleet coming and going"
KEEP_SECONDS = 300.0
CHURN = 0.1  # of the instances replaced each minute
FLAT = 0.15  # the most the last sample may exceed the warm-up's
# The per-second sums live HISTORY_SECONDS (16 min): Redis fills until then.
WARM_UP_MINUTES = 18.0


def _sample(client: redis.Redis, keys: Any, replicas: Replicas) -> dict[str, float]:
    from django.contrib.sessions.models import Session

    from controlplane.live.models import BreakerEvent, DiscoveredName

    watch = Watch(client, keys)
    return {
        "redis used MB": int(client.info("memory")["used_memory"]) / 1e6,
        "redis keys": float(client.dbsize()),
        "instances listed": float(client.hlen(keys.instances)),
        "breaker states": float(client.hlen(keys.live_breaker_states)),
        "stream entries": float(client.xlen(keys.reports)),
        "breaker event rows": float(BreakerEvent.objects.count()),
        "discovered rows": float(DiscoveredName.objects.count()),
        "session rows": float(Session.objects.count()),
        "replica RSS MB": replicas.stats()[0]["rss_mb"],
        "lag s": watch.lag_seconds(),
    }


def run(ctx: Any) -> list[Row]:
    from controlplane.redis_connection import get_redis

    minutes = float(os.environ.get("SOAK_MINUTES", "30"))
    size = int(os.environ.get("SOAK_INSTANCES", "2000"))
    keep = float(os.environ.get("SOAK_KEEP_SECONDS", str(KEEP_SECONDS)))
    environment = _ensure_environment()
    keys = environment.keys()
    client: redis.Redis = get_redis()
    _reset(client, keys)
    os.environ.update(INSTANCES_FORGET_AFTER="60", FLEET_SOAK_KEEP_SECONDS=str(keep))
    replicas = Replicas(1)
    simulators: list[Child] = []
    samples: list[tuple[float, dict[str, float]]] = []
    try:
        replicas.go()
        seconds = minutes * 60
        simulators = _simulators(
            ctx.redis_url, keys, size, seconds, environment.revision, churn=CHURN
        )
        for child in simulators:
            child.send("")
        started = time.monotonic()
        while time.monotonic() < started + seconds:
            time.sleep(min(60.0, max(0.0, started + seconds - time.monotonic())))
            elapsed = (time.monotonic() - started) / 60
            sample = _sample(client, keys, replicas)
            samples.append((elapsed, sample))
            print(f"  {elapsed:4.1f} min: {json.dumps(sample)}", file=sys.stderr, flush=True)
    finally:
        for child in simulators:
            child.kill()
        replicas.stop()
        os.environ.pop("FLEET_SOAK_KEEP_SECONDS", None)
        os.environ.pop("INSTANCES_FORGET_AFTER", None)
    out = Path(os.environ.get("SOAK_SAMPLES", "soak-samples.json"))
    out.write_text(json.dumps([{"minute": m, **s} for m, s in samples], indent=1))
    warm_up = max(minutes / 3, WARM_UP_MINUTES)
    warm = next((s for m, s in samples if m >= warm_up), samples[-1][1])
    last = samples[-1][1]
    rows = []
    for name in (
        "redis used MB",
        "redis keys",
        "instances listed",
        "breaker states",
        "breaker event rows",
        "replica RSS MB",
    ):
        grows = last[name] > warm[name] * (1 + FLAT) + 1
        note = (
            f"after warm-up {warm[name]:,.1f}, at the end {last[name]:,.1f}:"
            f" {'GROWS' if grows else 'flat'}; {size:,} instances, {CHURN:.0%} replaced a minute,"
            f" {minutes:.0f} min; every sample in {out}"
        )
        rows.append(Row(SOAK, name, last[name], "", note, samples=[s[name] for _, s in samples]))
    return rows
