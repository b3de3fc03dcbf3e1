from __future__ import annotations

import sys
from typing import Any

import redis
from django.core.management.base import BaseCommand, CommandError

from controlplane.policies.reconcile import reconcile_all


class Command(BaseCommand):
    help = (
        "Report where Redis differs from the database, changing nothing. "
        "Exits with status 1 when there is drift."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            drifts = reconcile_all(repair=False)
        except redis.RedisError as exc:
            raise CommandError(f"Redis cannot be reached: {exc}") from exc
        for drift in drifts:
            self.stdout.write(drift.describe())
        if any(not drift.clean for drift in drifts):
            sys.exit(1)
