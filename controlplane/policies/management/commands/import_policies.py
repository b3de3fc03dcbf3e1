from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.urls import reverse

from controlplane.accounts.actors import Actor
from controlplane.policies.config_as_code import apply_import, parse, plan_import
from controlplane.policies.models import Environment
from controlplane.policies.requests import import_proposals, open_request
from controlplane.protocol.schema import PolicyError


class Command(BaseCommand):
    help = (
        "Make an environment match a YAML or JSON file: all changes in one transaction, "
        "or none. --dry-run prints the changes without applying them."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file")
        parser.add_argument("--environment", help="Default: the file's environment.")
        parser.add_argument("--dry-run", action="store_true")
        parser.add_argument("--prune", action="store_true", help="Delete policies not in the file.")
        parser.add_argument("--reason", default="")
        parser.add_argument("--actor", default="import", help="Name recorded in the audit log.")

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(options["file"])
        try:
            document = parse(path.read_text(), "json" if path.suffix == ".json" else None)
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"Cannot read {path}: {exc}") from exc
        except PolicyError as exc:
            raise CommandError(str(exc)) from exc
        name = options["environment"] or document.get("environment")
        if not isinstance(name, str):
            raise CommandError("Name the environment: --environment, or in the file.")
        environment = Environment.objects.filter(name=name).first()
        if environment is None:
            raise CommandError(f"No such environment: {name}")
        if environment.guarded and not options["dry_run"]:
            self._propose(environment, document, options)
            return
        try:
            if options["dry_run"]:
                changes = plan_import(environment, document, prune=options["prune"])
            else:
                changes, correlation_id = apply_import(
                    environment,
                    document,
                    Actor.system(options["actor"]),
                    prune=options["prune"],
                    reason=options["reason"],
                )
        except PolicyError as exc:
            raise CommandError(f"Nothing was changed. {exc}") from exc
        for change in changes:
            self.stdout.write(change.describe())
        verb = "Would apply" if options["dry_run"] else "Applied"
        self.stdout.write(f"{verb} {len(changes)} change(s) to {environment.name}.")
        if changes and not options["dry_run"]:
            self.stdout.write(f"Audit correlation id: {correlation_id}")

    def _propose(self, environment: Environment, document: Any, options: dict[str, Any]) -> None:
        """A guarded environment: the whole file becomes one change request."""
        actor = Actor.system(options["actor"])
        try:
            changes = plan_import(environment, document, prune=options["prune"])
            proposals = import_proposals(environment, changes)
            opened = open_request(environment, proposals, actor, options["reason"])
        except PolicyError as exc:
            raise CommandError(f"Nothing was proposed. {exc}") from exc
        for change in changes:
            self.stdout.write(change.describe())
        count = environment.approvals_required
        self.stdout.write(
            f"Opened change request #{opened.pk} ({reverse('request-detail', args=[opened.pk])}): "
            f"{len(changes)} change(s) to {environment.name} wait for {count} "
            f"approval{'s' if count != 1 else ''}."
        )
