from __future__ import annotations

from django.db import models

from controlplane.policies.models import Environment


class BreakerEvent(models.Model):
    """A breaker transition reported by a client instance, kept so history survives restarts."""

    environment = models.ForeignKey(Environment, on_delete=models.PROTECT, related_name="+")
    name = models.CharField(max_length=100)
    instance = models.CharField(max_length=200)
    service = models.CharField(max_length=200, blank=True)
    from_state = models.CharField(max_length=20)
    to_state = models.CharField(max_length=20)
    reason = models.CharField(max_length=100, blank=True)
    failure_rate = models.FloatField(null=True, blank=True)
    slow_call_rate = models.FloatField(null=True, blank=True)
    at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["environment", "name", "-at"])]

    def __str__(self) -> str:
        return f"{self.name} {self.from_state}->{self.to_state} on {self.instance}"


class DiscoveredName(models.Model):
    """A breaker, limiter, cache or config key used in code that no policy manages yet."""

    environment = models.ForeignKey(Environment, on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=20)
    name = models.CharField(max_length=100)
    defaults: models.JSONField[dict[str, object], dict[str, object]] = models.JSONField(
        default=dict
    )
    service = models.CharField(max_length=200, blank=True)
    first_seen = models.DateTimeField(auto_now_add=True)
    last_seen = models.DateTimeField()

    class Meta:
        ordering = ["kind", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["environment", "kind", "name"], name="discovered_unique_name"
            )
        ]

    def __str__(self) -> str:
        return f"{self.environment}/{self.kind}:{self.name}"
