"""``manage.py webhooks add|list|test|remove|prune``: webhooks from the shell, through the
same actions as the pages and the API."""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Count, Q

from controlplane.accounts.actors import Actor
from controlplane.webhooks.actions import (
    WebhookError,
    do_create_webhook,
    do_delete_webhook,
    new_secret,
    shown_url,
)
from controlplane.webhooks.delivery import send_test
from controlplane.webhooks.models import Delivery, Webhook
from controlplane.webhooks.retention import prune


class Command(BaseCommand):
    help = (
        "Add, list, test and remove the webhooks of an environment, or prune old deliveries "
        "(see docs/webhooks.md)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--actor", default="manage.py", help="Name recorded in the audit log.")
        actions = parser.add_subparsers(dest="action", required=True)
        add = actions.add_parser("add", help="Add a webhook.")
        add.add_argument("environment")
        add.add_argument("name")
        add.add_argument("url")
        add.add_argument(
            "--event",
            action="append",
            default=[],
            help="An event type or family (override.*) to send; repeat; all by default.",
        )
        add.add_argument("--format", choices=Webhook.Format.values, default=Webhook.Format.JSON)
        secret = add.add_mutually_exclusive_group()
        secret.add_argument(
            "--generate-secret", action="store_true", help="Sign deliveries; print the secret."
        )
        secret.add_argument("--secret-env", help="Sign deliveries with this variable's value.")
        listing = actions.add_parser("list", help="List webhooks and their deliveries.")
        listing.add_argument("environment", nargs="?")
        for action in ("test", "remove"):
            one = actions.add_parser(action, help=f"{action.capitalize()} a webhook.")
            one.add_argument("environment")
            one.add_argument("name")
        actions.add_parser(
            "prune", help="Delete deliveries and events older than WEBHOOKS_KEEP_DAYS now."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        actor = Actor.system(options["actor"])
        action = options["action"]
        if action == "add":
            self._add(actor, options)
        elif action == "list":
            self._list(options["environment"])
        elif action == "prune":
            counts = prune()
            self.stdout.write(
                f"Deleted {counts['deliveries']} deliveries and {counts['events']} events "
                f"older than {settings.WEBHOOKS_KEEP_DAYS:g} days; pending ones are kept."
            )
        elif action == "test":
            event = send_test(_webhook(options["environment"], options["name"]))
            self.stdout.write(f"Test event {event.id} queued; the sender delivers it.")
        else:
            do_delete_webhook(_webhook(options["environment"], options["name"]), actor)
            self.stdout.write(f"Removed webhook {options['environment']}/{options['name']}.")

    def _add(self, actor: Actor, options: dict[str, Any]) -> None:
        secret = ""
        if options["generate_secret"]:
            secret = new_secret()
        elif options["secret_env"]:
            secret = os.environ.get(options["secret_env"], "")
            if not secret:
                raise CommandError(f"secret-env: {options['secret_env']} is not set or empty.")
        try:
            webhook = do_create_webhook(
                options["environment"],
                options["name"],
                options["url"],
                actor,
                events=options["event"],
                secret=secret,
                payload_format=options["format"],
            )
        except WebhookError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Added webhook {webhook}.")
        if options["generate_secret"]:
            self.stdout.write(f"Its secret (shown once): {secret}")

    def _list(self, environment: str | None) -> None:
        webhooks = Webhook.objects.annotate(
            pending=Count("deliveries", filter=Q(deliveries__status=Delivery.Status.PENDING)),
            failed=Count("deliveries", filter=Q(deliveries__status=Delivery.Status.FAILED)),
        )
        if environment:
            webhooks = webhooks.filter(environment=environment)
        for webhook in webhooks:
            events = ", ".join(webhook.events) or "all events"
            state = "" if webhook.enabled else ", disabled"
            self.stdout.write(
                f"{webhook} {shown_url(webhook.url)} ({webhook.payload_format}, {events}"
                f"{state}): {webhook.pending} pending, {webhook.failed} failed"
            )


def _webhook(environment: str, name: str) -> Webhook:
    try:
        return Webhook.objects.get(environment=environment, name=name)
    except Webhook.DoesNotExist:
        raise CommandError(f"name: {environment} has no webhook {name!r}.") from None
