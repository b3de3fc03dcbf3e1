from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from controlplane.policies.config_as_code import FORMATS, dump, export_environment
from controlplane.policies.models import Environment


class Command(BaseCommand):
    help = "Write every policy of an environment as YAML or JSON (secret values as null)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("environment")
        parser.add_argument("--format", choices=FORMATS, default="yaml")
        parser.add_argument("--output", "-o", help="File to write (default: standard output).")

    def handle(self, *args: Any, **options: Any) -> None:
        environment = Environment.objects.filter(name=options["environment"]).first()
        if environment is None:
            raise CommandError(f"No such environment: {options['environment']}")
        text = dump(export_environment(environment), options["format"])
        if options["output"]:
            Path(options["output"]).write_text(text)
        else:
            self.stdout.write(text, ending="")
