"""Prometheus metrics of the client: latency histograms, one registry shared by two
``ClientMetrics``, and the multiprocess mode gunicorn deployments use."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from prometheus_client import CollectorRegistry, multiprocess

from controlplane.client import Client
from controlplane.client.metrics import LATENCY_BUCKETS, ClientMetrics, LatencyCounts
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent.parent


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_breaker_calls_are_timed_into_a_histogram_per_breaker(
    client_factory: Callable[..., Client],
) -> None:
    registry = CollectorRegistry()
    client = client_factory(metrics=ClientMetrics(registry), report_interval=0.1).start()
    breaker = client.breaker("timed")

    @breaker
    def fast() -> int:
        return 1

    @breaker
    def slow() -> int:
        time.sleep(0.003)  # a call in a higher bucket is the behaviour under test
        return 1

    @breaker
    def failing() -> int:
        raise OSError("upstream down")

    @breaker
    async def afast() -> int:
        return 1

    for _ in range(5):
        fast()
    slow()
    with pytest.raises(OSError):
        failing()
    assert breaker.call(lambda: 1) == 1
    with breaker:
        pass
    assert asyncio.run(afast()) == 1
    calls = 10  # rejected calls never ran, so they are not timed: none here

    name = "controlplane_client_breaker_call_seconds"
    wait_for(lambda: sample(registry, f"{name}_count", breaker="timed") == calls)
    assert sample(registry, f"{name}_count", breaker="timed") == calls
    assert sample(registry, f"{name}_bucket", breaker="timed", le="+Inf") == calls
    assert sample(registry, f"{name}_bucket", breaker="timed", le="0.001") == calls - 1
    assert sample(registry, f"{name}_bucket", breaker="timed", le="0.0025") == calls - 1
    assert sample(registry, f"{name}_bucket", breaker="timed", le="0.25") == calls
    total = sample(registry, f"{name}_sum", breaker="timed")
    assert total is not None and 0.003 <= total < 0.25


def test_metrics_follow_the_calls_while_redis_is_down() -> None:
    """The reporter moves the counts into Prometheus with Redis down too (and at close)."""
    registry = CollectorRegistry()
    client = Client(
        "redis://127.0.0.1:1/0",  # nothing listens there
        "production",
        "offline",
        metrics=ClientMetrics(registry),
        report_interval=0.05,
        start_timeout=0.2,
    ).start()
    try:
        breaker = client.breaker("offline")
        for _ in range(3):
            breaker.call(lambda: None)
        timed = "controlplane_client_breaker_call_seconds_count"
        wait_for(lambda: sample(registry, timed, breaker="offline") == 3)
        breaker.call(lambda: None)
    finally:
        client.close()
    assert sample(registry, timed, breaker="offline") == 4  # the last one, at close
    calls = "controlplane_client_breaker_calls_total"
    assert sample(registry, calls, breaker="offline", outcome="success") == 4


def test_limit_checks_are_timed_into_a_histogram_per_limiter(
    client_factory: Callable[..., Client],
) -> None:
    registry = CollectorRegistry()
    client = client_factory(metrics=ClientMetrics(registry)).start()
    limiter = client.limiter("timed", limit=2, period=60)

    async def checks() -> None:
        await limiter.ahit("a")
        await limiter.apeek("a")

    limiter.hit("a")
    limiter.peek("a")
    asyncio.run(checks())
    limiter.hit("a")  # rejected: a check too
    name = "controlplane_client_rate_limit_check_seconds"
    assert sample(registry, f"{name}_count", limiter="timed") == 5
    assert sample(registry, f"{name}_bucket", limiter="timed", le="+Inf") == 5
    assert sample(registry, f"{name}_count", limiter="other") is None


def test_latency_counts_move_each_call_into_the_histogram_once() -> None:
    registry = CollectorRegistry()
    histogram = ClientMetrics(registry).breaker_call_seconds.labels("counted")
    counts = LatencyCounts()
    for seconds in (0.00005, 0.0001, 0.0004, 0.02, 3.0, 60.0):
        counts.add(seconds)
    counts.flush(histogram)
    counts.flush(histogram)  # nothing new: nothing added
    counts.add(0.0004)
    counts.flush(histogram)

    def bucket(le: str) -> float | None:
        return sample(
            registry, "controlplane_client_breaker_call_seconds_bucket", breaker="counted", le=le
        )

    assert [bucket(le) for le in ("0.0001", "0.0005", "0.025", "5.0", "10.0", "+Inf")] == [
        2,  # 50 µs and exactly 100 µs (a bucket's bound is in it)
        4,
        5,
        6,
        6,
        7,
    ]
    total = sample(registry, "controlplane_client_breaker_call_seconds_sum", breaker="counted")
    assert total == pytest.approx(63.02095)
    assert len(LATENCY_BUCKETS) == len(counts.counts)


def test_two_client_metrics_on_one_registry_share_its_collectors() -> None:
    registry = CollectorRegistry()
    first, second = ClientMetrics(registry), ClientMetrics(registry)
    assert first.breaker_calls is second.breaker_calls
    assert first.breaker_call_seconds is second.breaker_call_seconds
    first.resyncs.labels("production").inc()
    second.resyncs.labels("production").inc()
    assert sample(registry, "controlplane_client_resyncs_total", environment="production") == 2
    ClientMetrics()  # the default registry, where ClientMetrics.shared() registered already
    assert ClientMetrics().reports is ClientMetrics.shared().reports
    assert ClientMetrics(CollectorRegistry()).reports is not first.reports


MULTIPROCESS_WORKER = """
import sys
from controlplane.client import Client

client = Client(sys.argv[1], "production", "mp", key_prefix=sys.argv[2], start_timeout=5).start()
breaker = client.breaker("mp")
for _ in range(int(sys.argv[3])):
    breaker.call(lambda: None)
client.close()  # the reporter's last round moves the counts into the histogram files
"""


def test_metrics_add_up_across_processes_in_prometheus_multiprocess_mode(
    tmp_path: Path,
) -> None:
    """The gunicorn recipe of docs/client.md: every worker writes to
    PROMETHEUS_MULTIPROC_DIR, the scrape aggregates, a dead worker's gauges go."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    pids = []
    for calls in (3, 4):
        worker = subprocess.Popen(
            [
                sys.executable,
                "-c",
                MULTIPROCESS_WORKER,
                settings.REDIS_URL,
                settings.REDIS_KEY_PREFIX,
                str(calls),
            ],
            env=env,
            cwd=ROOT,
        )
        assert worker.wait(timeout=60) == 0
        pids.append(worker.pid)

    def scrape() -> CollectorRegistry:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(tmp_path))
        return registry

    registry = scrape()
    timed = sample(registry, "controlplane_client_breaker_call_seconds_count", breaker="mp")
    assert timed == 7  # summed over both workers
    counted = sample(
        registry, "controlplane_client_breaker_calls_total", breaker="mp", outcome="success"
    )
    assert counted == 7
    states: dict[str, Any] = {
        str(pid): sample(
            registry,
            "controlplane_client_breaker_state",
            breaker="mp",
            state="closed",
            pid=str(pid),
        )
        for pid in pids
    }
    assert states == {str(pid): 1.0 for pid in pids}  # liveall: one series per worker

    multiprocess.mark_process_dead(pids[0], str(tmp_path))  # gunicorn's child_exit hook
    registry = scrape()
    gone = sample(
        registry,
        "controlplane_client_breaker_state",
        breaker="mp",
        state="closed",
        pid=str(pids[0]),
    )
    assert gone is None
    assert sample(registry, "controlplane_client_breaker_call_seconds_count", breaker="mp") == 7
