"""HTTP throughput of one replica, measured with wrk on loopback, with and without the pool.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench python -m bench --only http

One Daphne process (the production server, ``python -m daphne``; workers off:
the requests are what is measured) serves three endpoints, each loaded by
Debian's ``wrk`` with ``CONNECTIONS`` connections, ``SAMPLES`` times ``DURATION``
seconds after a warm-up (the median of the samples is reported):

* the home page of a viewer (session cookie): middleware, session, grants,
  one query and one Redis round trip per environment, the template;
* the API's policy list with a bearer token (``GET /api/v1/environments/<env>/policies``,
  ``POLICIES`` policies): token check, queries, JSON;
* ``/metrics`` (Prometheus): the process's metrics plus the fleet collector,
  which reads the live state of each environment.

On PostgreSQL each endpoint is measured twice in the same run, on two fresh
servers: with the connection pool (``DATABASE_POOL``, the default) and without
(a connection opened and closed per request, what the product did before); on
SQLite once. wrk's requests per second and its latency percentiles are
reported; non-2xx answers or socket errors make the row say so.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import Row
from bench.live import HOST, Server, _ensure_policies, _session_cookie, _user

DURATION = 5  # seconds of each of SAMPLES loads per endpoint and server
SAMPLES = 3
WARM_UP = 2  # seconds of load before the samples: imports, templates, the pool
CONNECTIONS = 16
THREADS = 2
POLICIES = 50
ENVIRONMENT = "production"

BASELINES = {
    "HTTP: home page (viewer)": "no pool",
    "HTTP: API policy list (token)": "no pool",
    "HTTP: /metrics": "no pool",
}


# As behind the TLS-terminating proxy of a production set-up (TRUST_X_FORWARDED_PROTO):
# without it, every request would be answered with a redirect to https.
PROXY_HEADER = "X-Forwarded-Proto: https"


def _wrk(
    url: str, header: str, duration: int = DURATION, connections: int = CONNECTIONS
) -> dict[str, Any]:
    """wrk's figures for ``duration`` seconds of load on ``url``."""
    threads = min(THREADS, connections)
    command = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s"]
    command += ["--latency", "--timeout", "10s", "-H", PROXY_HEADER]
    if header:
        command += ["-H", header]
    output = subprocess.run(
        [*command, url], capture_output=True, text=True, timeout=DURATION + 60, check=True
    ).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    percentiles = dict(re.findall(r"^\s+(50|90|99)%\s+([\d.]+\w+)", output, re.MULTILINE))
    problems = re.findall(r"(Non-2xx or 3xx responses: \d+|Socket errors: .*)", output)
    return {
        "rate": float(rate.group(1)) if rate else 0.0,
        "latency": {p: _ms(text) for p, text in percentiles.items()},
        "problems": problems,
    }


def _check(url: str, header: str) -> None:
    """Raise unless ``url`` answers 200: a redirect or a 401 would be measured instead."""
    headers = dict(h.split(": ", 1) for h in (PROXY_HEADER, header) if h)
    request = urllib.request.Request(url, headers=headers)
    opener = urllib.request.build_opener(_NoRedirect)
    with opener.open(request, timeout=30) as response:
        if response.status != 200:
            raise RuntimeError(f"{url} answered {response.status}, not 200")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect is an answer of its own here, not to be followed


def _ms(text: str) -> float:
    found = re.match(r"([\d.]+)(\w+)", text)
    if found is None:
        return 0.0
    number, unit = found.groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def _endpoints() -> list[tuple[str, str, str]]:
    """(bench, path, header) of each endpoint, with a viewer's session and a token."""
    from controlplane.accounts.actions import do_create_token
    from controlplane.accounts.actors import Actor
    from controlplane.accounts.roles import Role

    _ensure_policies(ENVIRONMENT, [("breaker", f"b{n}") for n in range(POLICIES)])
    cookie = _session_cookie(_user("http-viewer", Role.VIEWER))
    _, secret = do_create_token("http bench", Role.VIEWER, Actor.system("bench"))
    return [
        ("HTTP: home page (viewer)", "/", f"Cookie: {cookie}"),
        (
            "HTTP: API policy list (token)",
            f"/api/v1/environments/{ENVIRONMENT}/policies",
            f"Authorization: Bearer {secret}",
        ),
        ("HTTP: /metrics", "/metrics", ""),
    ]


def run(ctx: Any) -> list[Row]:
    if shutil.which("wrk") is None:
        print("  skipped: the HTTP benchmark needs wrk (apt-get install -y wrk)", file=sys.stderr)
        return []
    from django.db import connection

    postgres = connection.vendor == "postgresql"
    endpoints = _endpoints()
    contenders = [("pool", "true"), ("no pool", "false")] if postgres else [("SQLite", "false")]
    directory = Path(tempfile.mkdtemp(prefix="cp-bench-http-"))
    rows: list[Row] = []
    for contender, pool in contenders:
        os.environ.update(DATABASE_POOL=pool, TRUST_X_FORWARDED_PROTO="true")
        server = Server(directory)
        try:
            base = f"http://{HOST}:{server.port}"
            for bench, path, header in endpoints:
                _check(base + path, header)
                _wrk(base + path, header, WARM_UP)
                samples = [_wrk(base + path, header) for _ in range(SAMPLES)]
                p50 = statistics.median(s["latency"].get("50", 0.0) for s in samples)
                p99 = statistics.median(s["latency"].get("99", 0.0) for s in samples)
                note = (
                    f"{CONNECTIONS} connections, {SAMPLES} x {DURATION} s; latency p50 "
                    f"{p50:.1f} ms, p99 {p99:.1f} ms (medians)"
                )
                problems = [p for s in samples for p in s["problems"]]
                if problems:
                    note += "; " + "; ".join(problems)
                rates = [s["rate"] for s in samples]
                rows.append(Row.of(bench, contender, rates, "req/s", note))
                print(f"  {bench} [{contender}]: {rates} req/s", file=sys.stderr)
        finally:
            server.stop()
            for name in ("DATABASE_POOL", "TRUST_X_FORWARDED_PROTO"):
                os.environ.pop(name, None)
    return rows


if __name__ == "__main__":  # pragma: no cover - run through python -m bench
    print("Run it as: python -m bench --only http", file=sys.stderr)
    sys.exit(2)
