"""Where a request's CPU goes: the three endpoints of the HTTP benchmark, timed and profiled.

    python -m bench --only profile

Each endpoint of ``bench.http_load`` (a viewer's home page, the API's policy list
with a token, ``/metrics``) is timed at three depths, in CPU milliseconds per request:

* Django alone: the test ``Client`` (Django's handler, every middleware, the view,
  the template), in this process, on this thread;
* the ASGI handler: ``AsyncClient``, the way Daphne enters Django (the view runs in
  asgiref's thread), in this process;
* Daphne: one server process loaded by wrk as in the HTTP benchmark (16
  connections), and by one connection at a time; its CPU time (``/proc``) over the
  requests wrk completed (skipped without ``wrk``).

Then ``PROFILED`` requests of each endpoint through the test Client run under
cProfile; the functions with the most cumulative time, and the SQL of one request,
are written to ``<directory>/<endpoint>.txt`` (the directory is printed).
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import Row

REQUESTS = 30  # per sample
SAMPLES = 7
WARM_UP = 20
PROFILED = 100
TOP = 40  # functions listed per endpoint, by cumulative time
WRK_SECONDS = 5

DJANGO = "Django alone (test Client)"
ASGI = "ASGI handler (AsyncClient)"
DAPHNE = "Daphne under wrk, {} connection{}"
CONNECTIONS = (1, 16)
BASELINES = {
    f"request CPU: {name}": DJANGO
    for name in ("home page (viewer)", "API policy list (token)", "/metrics")
}


def _headers(header: str) -> tuple[dict[str, str], str]:
    """The endpoint's header as request headers, or as a session cookie to set."""
    if not header:
        return {}, ""
    name, value = header.split(": ", 1)
    if name == "Cookie":
        return {}, value.split("=", 1)[1]
    return {name: value}, ""


def _cpu_ms(request: Callable[[], object], clock: Callable[[], float]) -> float:
    started = clock()
    for _ in range(REQUESTS):
        request()
    return (clock() - started) / REQUESTS * 1000


def _in_process(path: str, header: str) -> tuple[list[float], list[float], str]:
    """CPU ms per request through the test Client and through the ASGI handler, and
    the profile of the test Client's requests."""
    from django.db import connection
    from django.test import AsyncClient, Client
    from django.test.utils import CaptureQueriesContext

    headers, session = _headers(header)
    client, async_client = Client(), AsyncClient()
    if session:
        client.cookies["sessionid"] = async_client.cookies["sessionid"] = session
    loop = asyncio.new_event_loop()

    def get() -> None:
        response = client.get(path, secure=True, headers=headers)
        if response.status_code != 200:
            raise RuntimeError(f"{path} answered {response.status_code}, not 200")

    def async_get() -> None:
        response = loop.run_until_complete(async_client.get(path, secure=True, headers=headers))
        if response.status_code != 200:
            raise RuntimeError(f"{path} answered {response.status_code} through ASGI, not 200")

    for _ in range(WARM_UP):
        get()
    with CaptureQueriesContext(connection) as queries:
        get()
    sql = [query["sql"] for query in queries.captured_queries]  # the next request clears them
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(PROFILED):
        get()
    profile.disable()
    try:
        for _ in range(WARM_UP):
            async_get()
        django: list[float] = []
        asgi: list[float] = []
        for _ in range(SAMPLES):  # taking turns: a burst of load falls on both
            django.append(_cpu_ms(get, time.thread_time))
            asgi.append(_cpu_ms(async_get, time.process_time))  # the view runs in a thread
    finally:
        loop.close()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(TOP)
    listed = "\n".join(f"  {query}" for query in sql)
    report = (
        f"GET {path}: {len(sql)} queries in one request\n{listed}\n\n"
        f"cProfile of {PROFILED} requests through the test Client "
        f"(cumulative seconds are for all {PROFILED}):\n{text.getvalue()}"
    )
    return django, asgi, report


def _daphne(
    endpoints: list[tuple[str, str, str]], directory: Path
) -> dict[tuple[str, int], list[tuple[float, float, float]]]:
    """By endpoint and connections, 3 samples of: CPU ms per request of one Daphne
    process, requests per second, and the share of one core the process used."""
    from bench.http_load import _check, _wrk
    from bench.live import HOST, Server

    os.environ["TRUST_X_FORWARDED_PROTO"] = "true"
    server = Server(directory)
    try:
        base = f"http://{HOST}:{server.port}"
        found: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
        for bench, path, header in endpoints:
            _check(base + path, header)
            _wrk(base + path, header, 2)  # warm-up: imports, templates, connections
            for _ in range(3):
                for connections in CONNECTIONS:  # taking turns, as above
                    before = server.cpu_seconds()
                    rate = _wrk(base + path, header, WRK_SECONDS, connections)["rate"]
                    cpu = server.cpu_seconds() - before
                    samples = found.setdefault((bench, connections), [])
                    per_request = cpu / max(rate * WRK_SECONDS, 1) * 1000
                    samples.append((per_request, rate, cpu / WRK_SECONDS))
        return found
    finally:
        server.stop()
        os.environ.pop("TRUST_X_FORWARDED_PROTO", None)


def run(ctx: Any) -> list[Row]:
    from django.db import connection
    from django.test.utils import override_settings

    from bench.http_load import _endpoints

    endpoints = _endpoints()
    directory = Path(tempfile.mkdtemp(prefix="cp-bench-profile-"))
    rows: list[Row] = []
    with override_settings(ALLOWED_HOSTS=["testserver"]):
        for bench, path, header in endpoints:
            django, asgi, report = _in_process(path, header)
            name = bench.replace("HTTP: ", "request CPU: ")
            note = f"{SAMPLES} x {REQUESTS} requests in process, {connection.vendor}"
            rows.append(Row.of(name, DJANGO, django, "ms", note))
            rows.append(Row.of(name, ASGI, asgi, "ms", note))
            slug = "".join(c if c.isalnum() else "-" for c in bench.split(": ", 1)[1]).strip("-")
            (directory / f"{slug}.txt").write_text(report)
    if shutil.which("wrk") is None:
        print("  no Daphne rows: they need wrk (apt-get install -y wrk)", file=sys.stderr)
    else:
        for (bench, connections), samples in _daphne(endpoints, directory).items():
            name = bench.replace("HTTP: ", "request CPU: ")
            contender = DAPHNE.format(connections, "" if connections == 1 else "s")
            rate = statistics.median(rate for _, rate, _ in samples)
            busy = statistics.median(busy for _, _, busy in samples)
            note = (
                f"3 x {WRK_SECONDS} s of wrk, {rate:.0f} req/s, the process busy "
                f"{busy:.0%} of a core (medians); {connection.vendor}"
            )
            rows.append(Row.of(name, contender, [ms for ms, _, _ in samples], "ms", note))
    print(f"  profiles: {directory}", file=sys.stderr)
    for row in rows:
        print(
            f"  {row.bench} [{row.contender}]: {statistics.median(row.samples):.2f} ms",
            file=sys.stderr,
        )
    return rows
