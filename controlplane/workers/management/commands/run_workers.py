"""``manage.py run_workers``: the background workers in a process of their own."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand

from controlplane.workers.runner import WORKERS, run_workers


class Command(BaseCommand):
    help = (
        "Run the reconciler, the ingest, the webhook sender and the alert evaluator in the "
        "foreground until SIGTERM or SIGINT (set RECONCILER_ENABLED=false, "
        "INGEST_ENABLED=false, WEBHOOKS_ENABLED=false and ALERTS_ENABLED=false in the web "
        "processes)."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--only",
            choices=list(WORKERS),
            action="append",
            help="Run only this worker (repeat for several); all of them by default.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        run_workers(options["only"] or list(WORKERS))
