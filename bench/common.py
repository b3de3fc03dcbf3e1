"""Shared pieces of the benchmarks: a Redis server for the run, timing and the table."""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from controlplane.embedded_redis import RedisServer


def start_redis() -> RedisServer:
    """One Redis server per run, on loopback, shared by us and every peer."""
    server = RedisServer(Path(tempfile.mkdtemp(prefix="cp-bench-")) / "redis")
    server.start()
    return server


def per_call_us(fn: Callable[[], object], calls: int, repeats: int = 7) -> list[float]:
    """Microseconds per call of ``fn``, one sample per repeat of ``calls`` calls."""
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - started) / calls * 1e6)
    return samples


def interleaved(
    contenders: Mapping[str, tuple[Callable[[], object], int]], repeats: int = 7, warmup: int = 20
) -> dict[str, list[float]]:
    """``per_call_us`` of several contenders, ``{name: (fn, calls)}``, taking turns.

    Each repeat runs every contender once, so a burst of load from the shared
    machine falls on all of them rather than on whichever ran at that moment.
    """
    for fn, _ in contenders.values():
        for _ in range(warmup):  # scripts loaded, connections open
            fn()
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, (fn, calls) in contenders.items():
            samples[name] += per_call_us(fn, calls, repeats=1)
    return samples


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class Row:
    bench: str
    contender: str
    value: float  # the median
    unit: str
    note: str = ""
    samples: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, bench: str, contender: str, samples: list[float], unit: str, note: str = "") -> Row:
        return cls(bench, contender, statistics.median(samples), unit, note, samples)


def machine() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in cpuinfo
                    if line.startswith("model name")
                ),
                platform.processor(),
            )
    except OSError:
        model = platform.processor()
    cpus = os.cpu_count() or 0
    return f"{model}, {cpus} cores, Python {platform.python_version()}, {platform.system()}"


def render(rows: list[Row], baselines: dict[str, str]) -> str:
    """A markdown table; ``baselines`` names, per bench, the contender ratios are relative to."""
    lines = [
        "| Benchmark | Contender | Median | Ratio | Note |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for row in rows:
        base = next(
            (r for r in rows if r.bench == row.bench and r.contender == baselines.get(row.bench)),
            None,
        )
        ratio = f"{row.value / base.value:.2f}x" if base and base.value else ""
        median = f"{row.value:,.2f} {row.unit}"
        lines.append(f"| {row.bench} | {row.contender} | {median} | {ratio} | {row.note} |")
    return "\n".join(lines)


def save(rows: list[Row], path: Path) -> None:
    path.write_text(
        json.dumps(
            {
                "machine": machine(),
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "rows": [row.__dict__ for row in rows],
            },
            indent=2,
        )
    )


def wait_until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("benchmark set-up: condition not met in time")
        time.sleep(0.005)
