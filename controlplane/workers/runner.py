"""Start the background workers, in the web processes or in one of their own (``run_workers``)."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Protocol

from django.conf import settings

from controlplane.alerts.evaluator import start_alert_evaluator
from controlplane.live.ingest import start_ingestor
from controlplane.policies.reconcile import start_reconciler
from controlplane.webhooks.delivery import start_webhook_sender

logger = logging.getLogger(__name__)

CHECK_INTERVAL = 1.0  # how often run_workers looks whether a worker died


class Worker(Protocol):
    name: str

    def is_alive(self) -> bool: ...
    def stop(self) -> None: ...


# Each start function starts this process's worker once and returns it (again if alive).
WORKERS: dict[str, Callable[[], Worker]] = {
    "reconciler": start_reconciler,
    "ingest": start_ingestor,
    "webhooks": start_webhook_sender,
    "alerts": start_alert_evaluator,
}


def start_workers(names: list[str]) -> dict[str, Worker]:
    """Start the named workers of this process (those running already are kept)."""
    return {name: WORKERS[name]() for name in names}


def start_enabled_workers() -> dict[str, Worker]:
    """The web processes' start: the workers the settings enable in them."""
    enabled = {
        "reconciler": settings.RECONCILER_ENABLED,
        "ingest": settings.INGEST_ENABLED,
        "webhooks": settings.WEBHOOKS_ENABLED,
        "alerts": settings.ALERTS_ENABLED,
    }
    return start_workers([name for name, on in enabled.items() if on])


def run_workers(names: list[str], stop: threading.Event | None = None) -> None:
    """Run the named workers until SIGTERM or SIGINT (or ``stop``), then stop them.

    A worker whose thread ended is started again, with an error logged.
    """
    stop = stop or threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("Got %s: stopping the workers", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    workers = start_workers(names)
    logger.info("Workers started: %s", ", ".join(workers))
    try:
        while not stop.wait(CHECK_INTERVAL):
            for name, worker in workers.items():
                if not worker.is_alive():
                    logger.error("The %s worker ended; starting it again", name)
                    workers[name] = WORKERS[name]()
    finally:
        for worker in workers.values():
            worker.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        logger.info("Workers stopped: %s", ", ".join(workers))
