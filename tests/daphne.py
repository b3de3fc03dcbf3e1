"""Serve the app with Daphne from forked child processes, for browser and scale-out tests.

The child is forked after the test database exists, so it inherits the test's
settings (database name, Redis URL and key prefix, channel layer): nothing to
re-derive. No open database connection or pool may cross the fork, and asgiref's
executors are inherited without their threads, so the child gets fresh ones.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from typing import Any

from asgiref.sync import AsyncToSync, SyncToAsync
from channels.layers import channel_layers
from channels.testing.live import make_application
from daphne.testing import DaphneProcess
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.db import connections

HOST = "127.0.0.1"


def close_connections_and_pools() -> None:
    """Close every database connection and connection pool of this process.

    A pool (PostgreSQL's ``pool`` option) is made once per process from the
    settings it first sees, and its connections are opened by its own threads:
    after a change of the settings, or before a fork, it must go too.
    """
    connections.close_all()
    for connection in connections.all(initialized_only=True):
        close_pool = getattr(connection, "close_pool", None)
        if close_pool is not None:
            close_pool()


def _child_setup(overrides: dict[str, Any]) -> None:
    from django.conf import settings

    SyncToAsync.single_thread_executor = ThreadPoolExecutor(max_workers=1)
    SyncToAsync.context_to_thread_executor.clear()
    AsyncToSync.loop_thread_executors.clear()
    for name, value in overrides.items():
        setattr(settings, name, value)
    channel_layers.backends.clear()


@contextmanager
def daphne_servers(count: int = 1, **overrides: Any) -> Iterator[list[int]]:
    """Start ``count`` Daphne processes on loopback; yield their ports; always stop them."""
    close_connections_and_pools()  # a pool's threads would not cross the fork
    processes = [
        DaphneProcess(
            HOST,
            partial(make_application, static_wrapper=ASGIStaticFilesHandler),
            setup=partial(_child_setup, overrides),
        )
        for _ in range(count)
    ]
    try:
        for process in processes:
            process.start()
        for process in processes:
            deadline = time.monotonic() + 30
            while not process.ready.wait(timeout=0.1):
                if not process.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError("Daphne did not start")
        yield [process.port.value for process in processes]
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
