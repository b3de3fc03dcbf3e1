from __future__ import annotations

from typing import Any

import redis
from django.core.management.base import BaseCommand, CommandError, CommandParser

from controlplane.policies.models import Environment
from controlplane.policies.reconcile import reconcile_environment


class Command(BaseCommand):
    help = "Re-publish policies to Redis wherever Redis differs from the database."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("environments", nargs="*", help="Environment names (default: all).")

    def handle(self, *args: Any, **options: Any) -> None:
        environments = Environment.objects.all()
        if options["environments"]:
            environments = environments.filter(name__in=options["environments"])
            unknown = set(options["environments"]) - {e.name for e in environments}
            if unknown:
                raise CommandError(f"No such environment: {', '.join(sorted(unknown))}")
        for environment in environments:
            try:
                drift = reconcile_environment(environment, repair=True)
            except redis.RedisError as exc:
                raise CommandError(f"Redis cannot be reached: {exc}") from exc
            if drift.clean:
                self.stdout.write(drift.describe())
            else:
                self.stdout.write(f"Repaired. {drift.describe()}")
