"""Creating, switching and removing webhooks, and redelivering: validated, audited, each in
one durable transaction.

The management command, the pages and the API all go through these.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from urllib.parse import urlsplit

from django.apps import apps
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import IntegrityError, transaction
from django.utils import timezone

from controlplane.accounts.actors import Actor
from controlplane.audit.record import fingerprint, record
from controlplane.webhooks.events import EVENT_TYPES
from controlplane.webhooks.http import TargetRefused, check_target
from controlplane.webhooks.models import Delivery, Webhook

NAME_MAX = Webhook._meta.get_field("name").max_length or 100


class WebhookError(Exception):
    """What is wrong with a webhook's fields: ``{field: [message, ...]}``."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        self.errors = errors
        super().__init__(
            "; ".join(f"{field}: {' '.join(messages)}" for field, messages in errors.items())
        )


def shown_url(url: str) -> str:
    """A URL as the audit log and listings show it: scheme and host only.

    The path of an incoming-webhook URL (Slack's, Teams') is its password.
    """
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/…"


# Families of event types a webhook may ask for as a whole: "policy.*", "override.*".
EVENT_FAMILIES = tuple(
    dict.fromkeys(type.partition(".")[0] + ".*" for type in EVENT_TYPES if "." in type)
)


def new_secret() -> str:
    """A random secret to sign deliveries with, shown once to whoever asked for it."""
    return secrets.token_urlsafe(32)


def event_errors(events: Sequence[str]) -> list[str]:
    """Why ``events`` are not event types or families (``override.*``) we send."""
    return [
        f"{event!r} is not an event type; choose from {', '.join(EVENT_TYPES)}, "
        f"or a family such as override.*."
        for event in events
        if event not in EVENT_TYPES and event not in EVENT_FAMILIES
    ]


def webhook_errors(
    environment: str, name: str, url: str, events: Sequence[str], payload_format: str
) -> dict[str, list[str]]:
    """Every problem of a new webhook's fields, by field (the URL's host is resolved)."""
    errors: dict[str, list[str]] = {}
    environments = apps.get_model("policies", "Environment")  # it imports this app
    if not environments.objects.filter(name=environment).exists():
        errors["environment"] = [f"There is no environment named {environment!r}."]
    if not name.strip() or len(name) > NAME_MAX:
        errors["name"] = [f"Enter a name of 1 to {NAME_MAX} characters."]
    elif "/" in name:  # it is a segment of the pages' and the API's URLs
        errors["name"] = ["A name cannot contain /."]
    try:
        URLValidator(schemes=["http", "https"])(url)
        check_target(url)
    except ValidationError:
        errors["url"] = ["Enter an http:// or https:// URL."]
    except TargetRefused as exc:
        errors["url"] = [str(exc).removeprefix("url: ")]
    if bad := event_errors(events):
        errors["events"] = bad
    if payload_format not in Webhook.Format.values:
        errors["payload_format"] = [f"Choose one of: {', '.join(Webhook.Format.values)}."]
    return errors


def do_create_webhook(
    environment: str,
    name: str,
    url: str,
    actor: Actor,
    *,
    events: Sequence[str] = (),
    secret: str = "",
    payload_format: str = Webhook.Format.JSON,
) -> Webhook:
    """Add a webhook to ``environment``; raises WebhookError naming each bad field."""
    errors = webhook_errors(environment, name, url, events, payload_format)
    if errors:
        raise WebhookError(errors)
    changes: dict[str, list[object]] = {
        "url": [None, shown_url(url)],
        "events": [None, list(events)],
        "payload_format": [None, payload_format],
    }
    if secret:
        changes["secret"] = [None, fingerprint(secret)]
    try:
        with transaction.atomic(durable=True):
            webhook = Webhook.objects.create(
                environment=environment,
                name=name,
                url=url,
                events=list(events),
                secret=secret,
                payload_format=payload_format,
                created_by_name=actor.name,
            )
            record(
                actor,
                "webhook.create",
                environment=environment,
                kind="webhook",
                name=name,
                changes=changes,
            )
            return webhook
    except IntegrityError:
        raise WebhookError({"name": [f"{environment} already has a webhook {name!r}."]}) from None


def do_delete_webhook(webhook: Webhook, actor: Actor) -> None:
    """Remove a webhook and its deliveries (events stay for the other webhooks)."""
    with transaction.atomic(durable=True):
        record(
            actor,
            "webhook.delete",
            environment=webhook.environment,
            kind="webhook",
            name=webhook.name,
            changes={"url": [shown_url(webhook.url), None]},
        )
        webhook.delete()


def do_set_webhook_enabled(webhook: Webhook, enabled: bool, actor: Actor) -> bool:
    """Switch a webhook on or off; False (nothing written) if it already was.

    A disabled webhook gets no new deliveries and its pending ones wait: switching it
    back on sends them, in order.
    """
    with transaction.atomic(durable=True):
        changed = Webhook.objects.filter(pk=webhook.pk, enabled=not enabled).update(enabled=enabled)
        if not changed:
            return False
        record(
            actor,
            "webhook.enable" if enabled else "webhook.disable",
            environment=webhook.environment,
            kind="webhook",
            name=webhook.name,
            changes={"enabled": [not enabled, enabled]},
        )
    webhook.enabled = enabled
    return True


def do_redeliver(delivery: Delivery, actor: Actor) -> None:
    """Send a delivery again, now, with the same event id (its attempts are kept, to show
    how it went). Audited: a redelivery repeats a message to a third party."""
    webhook, event = delivery.webhook, delivery.event
    with transaction.atomic(durable=True):
        before = Delivery.objects.filter(pk=delivery.pk).values_list("status", flat=True).first()
        Delivery.objects.filter(pk=delivery.pk).update(
            status=Delivery.Status.PENDING, next_attempt_at=timezone.now(), delivered_at=None
        )
        record(
            actor,
            "webhook.redeliver",
            environment=webhook.environment,
            kind="webhook",
            name=webhook.name,
            changes={
                "event": [None, f"{event.type} {event.id}"],
                "status": [before, Delivery.Status.PENDING.value],
            },
        )
