from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from controlplane import demo
from controlplane.protocol.keys import KeyLayout
from controlplane.redis_connection import get_redis


class Command(BaseCommand):
    help = (
        "Simulate a service (demo-shop) that uses the client library against a flaky "
        "payments provider, so the live page shows breakers and limiters at work."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--environment", default="production", help="Default: production.")
        parser.add_argument(
            "--duration",
            type=float,
            default=None,
            help="Stop after this many seconds (default: run until Ctrl-C or SIGTERM).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        duration: float | None = options["duration"]
        if duration is not None and duration <= 0:
            raise CommandError("--duration must be a positive number of seconds.")
        try:
            KeyLayout(options["environment"], settings.REDIS_KEY_PREFIX)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        get_redis()  # starts the embedded Redis server when that is the configured one
        stop = threading.Event()

        def request_stop(signum: int, frame: FrameType | None) -> None:
            stop.set()

        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, request_stop)
        try:
            stats = demo.run(
                settings.REDIS_URL,
                options["environment"],
                key_prefix=settings.REDIS_KEY_PREFIX,
                duration=duration,
                stop_event=stop,
            )
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        self.stdout.write(f"Demo traffic stopped after {stats.describe()}.")
