"""Webhooks, the outbox of events, and each event's delivery to each webhook.

Environments are named, not referred to: the policies app imports this one to
emit events, so this one imports nothing of it.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.db import models
from django.utils import timezone


class Webhook(models.Model):
    """A URL that receives the events of one environment that it wants."""

    class Format(models.TextChoices):
        JSON = "json", "JSON"
        SLACK = "slack", "Slack-compatible (Slack, Mattermost, Microsoft Teams)"

    environment = models.CharField(max_length=100, db_index=True)
    name = models.CharField(max_length=100)
    url = models.URLField(max_length=2000)
    # Event types ("policy.changed") or families ("override.*"); empty: every event.
    events: models.JSONField[list[str], list[str]] = models.JSONField(default=list, blank=True)
    # Signs each delivery (X-Signature); blank: deliveries are not signed.
    secret = models.CharField(max_length=200, blank=True)
    payload_format = models.CharField(max_length=10, choices=Format.choices, default=Format.JSON)
    enabled = models.BooleanField(default=True)
    created_by_name = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["environment", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["environment", "name"], name="webhook_unique_name_per_environment"
            )
        ]

    def __str__(self) -> str:
        return f"{self.environment}/{self.name}"

    def wants(self, event_type: str) -> bool:
        """Whether this webhook asked for events of ``event_type`` (no list: all of them)."""
        if not self.events:
            return True
        return any(
            wanted == event_type or (wanted.endswith(".*") and event_type.startswith(wanted[:-1]))
            for wanted in self.events
        )


class Event(models.Model):
    """Something that happened in an environment, written in the transaction that made it
    happen: the outbox. Its id is the receivers' key to tell a redelivery from news."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    environment = models.CharField(max_length=100, db_index=True)
    type = models.CharField(max_length=50)
    payload: models.JSONField[dict[str, Any], dict[str, Any]] = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"{self.environment} {self.type} {self.id}"


class DeliveryQuerySet(models.QuerySet["Delivery"]):
    def pending(self) -> DeliveryQuerySet:
        return self.filter(status=Delivery.Status.PENDING)


class Delivery(models.Model):
    """One event on its way to one webhook: tried until delivered, or failed for good."""

    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"

    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="deliveries")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # When a pending delivery may next be sent; also a sender's claim while it sends.
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_latency_ms = models.FloatField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = DeliveryQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "deliveries"
        constraints = [
            models.UniqueConstraint(fields=["webhook", "event"], name="delivery_unique_per_event")
        ]
        indexes = [models.Index(fields=["webhook", "status", "id"], name="delivery_queue")]

    def __str__(self) -> str:
        return f"{self.event} to {self.webhook}: {self.status}"
