"""Server hooks for gunicorn: one started client per worker, none in the master.

In ``gunicorn.conf.py``::

    from controlplane.client.gunicorn import post_fork, post_worker_init, worker_exit

The application (with ``--preload``, in the master) creates the client and calls
``configure(client)`` without starting it: a started client runs threads, and
the master would keep them across the fork and report as one more instance.
Each worker starts the default client after the fork (``post_fork`` with
``--preload``; ``post_worker_init`` once a worker has loaded the application
without it) and closes it when it exits, flushing its last reports.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from controlplane.client.decorators import default_client
from controlplane.client.errors import ControlPlaneError

logger = logging.getLogger("controlplane.client")


def _start() -> bool:
    try:
        default_client().start()
    except ControlPlaneError:
        return False
    return True


def post_fork(server: Any, worker: Any) -> None:
    """Start the default client in the new worker, when the master loaded the app."""
    _start()  # without --preload the app is not loaded yet: post_worker_init starts it


def post_worker_init(worker: Any) -> None:
    """Start the default client once the worker has loaded the application."""
    if not _start():
        logger.error(
            "No control-plane client in gunicorn worker %s: call "
            "controlplane.client.configure(Client(...)) where the application is loaded",
            worker.pid,
        )


def worker_exit(server: Any, worker: Any) -> None:
    """Close the worker's client: flush its last reports and stop its threads."""
    with contextlib.suppress(ControlPlaneError):
        default_client().close()


__all__ = ["post_fork", "post_worker_init", "worker_exit"]
