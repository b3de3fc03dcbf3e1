from __future__ import annotations

from django.conf import settings
from django.db import models

from controlplane.policies.models import Environment, name_validator
from controlplane.protocol.documents import OVERRIDE_STATES


class Override(models.Model):
    """A manual override set by an operator, kept apart from the policy it overrides.

    Each set or clear is a row; the newest row of a policy says what holds now.
    Tripping a breaker never rewrites the stored policy.
    """

    STATES = [
        (state, state.replace("_", " ")) for states in OVERRIDE_STATES.values() for state in states
    ]

    environment = models.ForeignKey(Environment, on_delete=models.PROTECT, related_name="overrides")
    kind = models.CharField(max_length=20)
    name = models.CharField(max_length=100, validators=[name_validator])
    # Empty: the override was lifted (by hand or because it expired).
    state = models.CharField(max_length=20, choices=STATES, blank=True)
    reason = models.TextField(blank=True)
    actor_name = models.CharField(max_length=150)
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revision = models.BigIntegerField()

    class Meta:
        ordering = ["-revision"]
        indexes = [models.Index(fields=["environment", "kind", "name", "-revision"])]

    def __str__(self) -> str:
        return f"{self.environment}/{self.kind}:{self.name} {self.state or 'lifted'}"

    @property
    def field(self) -> str:
        return f"{self.kind}:{self.name}"
