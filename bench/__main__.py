"""Run every benchmark against one Redis server and print the table.

    make bench                      # or: python -m bench [--only NAME ...] [--write FILE]

Each benchmark measures us and the peer libraries in the same run, against
the same Redis. Figures on a shared machine are noisy: read medians and ratios.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
from pathlib import Path

from bench.common import Row, machine, render, save, start_redis

BENCHES = {
    "config": ("bench.config_read", "controlplane client"),
    "propagation": ("bench.propagation", "bare Redis PUBLISH"),
    "breaker": ("bench.breaker", "bare call"),
    "rate_limit": ("bench.rate_limit", "bare Redis PING"),  # async: see its BASELINES
    "live": ("bench.live", "10 policies"),  # dashboard: see its BASELINES
    "cluster": ("bench.cluster_load", "one server"),  # see its BASELINES
    "hostile": ("bench.hostile", "RE2 (ours)"),  # see its BASELINES
    "stall": ("bench.stall", "limits FixedWindow: 3 limiters"),  # a 2 s Redis pause
    "http": ("bench.http_load", "no pool"),  # wrk on loopback; see its BASELINES
    "profile": ("bench.profile_requests", "Django alone (test Client)"),  # request CPU
    "webhooks": ("bench.webhooks", "0 webhooks"),  # policy saves, receivers that hang
    "fleet": ("bench.fleet", "1 replica"),  # 1,000-10,000 instances; see its BASELINES
    "soak": ("bench.soak", ""),  # 30 minutes of a fleet coming and going (not in `make bench`)
}

ON_DEMAND = {"soak"}  # run only when named: it takes half an hour


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHES), help="benchmarks to run")
    parser.add_argument("--json", type=Path, help="also write every sample to this file")
    args = parser.parse_args()

    server = start_redis()
    var_dir = tempfile.mkdtemp(prefix="cp-bench-var-")
    os.environ.update(
        REDIS_URL=server.url,
        CONTROLPLANE_VAR_DIR=var_dir,
        DJANGO_SETTINGS_MODULE="bench.settings",
        LOG_LEVEL="WARNING",
    )
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    from bench.context import BenchContext

    ctx = BenchContext(server.url)
    rows: list[Row] = []
    baselines: dict[str, str] = {}
    try:
        for name in args.only or [name for name in BENCHES if name not in ON_DEMAND]:
            module_name, baseline = BENCHES[name]
            print(f"running {name}...", file=sys.stderr, flush=True)
            module = importlib.import_module(module_name)
            # A module yielding several benches may name each one's baseline.
            own: dict[str, str] = getattr(module, "BASELINES", {})
            for row in module.run(ctx):
                rows.append(row)
                baselines[row.bench] = own.get(row.bench, baseline)
    finally:
        server.stop()
    print(f"\nMachine: {machine()}\n")
    print(render(rows, baselines))
    if args.json:
        save(rows, args.json)


if __name__ == "__main__":
    main()
