from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from controlplane.live.retention import prune_history


class Command(BaseCommand):
    help = (
        "Delete breaker events and discovered names older than HISTORY_KEEP_DAYS days and "
        "expired sessions (the workers also do it once an hour)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        pruned = prune_history()
        self.stdout.write(
            f"Deleted {pruned.breaker_events} breaker events and {pruned.discovered_names} "
            f"discovered names older than {settings.HISTORY_KEEP_DAYS:g} days, "
            "and the expired sessions."
        )
