from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

from controlplane.protocol.keys import NAME_PATTERN, KeyLayout, policy_field
from controlplane.protocol.schema import KIND_LABELS, PolicyError

name_validator = RegexValidator(
    NAME_PATTERN, "Use letters, digits, dots, dashes and underscores, starting with a letter."
)


class Environment(models.Model):
    """A set of policies published together (``production``, ``staging``...)."""

    name = models.CharField(max_length=100, unique=True, validators=[name_validator])
    description = models.CharField(max_length=300, blank=True)
    # Raised by one for every change in the environment; the revision of a
    # published document orders it against every other one.
    revision = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def keys(self) -> KeyLayout:
        return KeyLayout(self.name, settings.REDIS_KEY_PREFIX)


class Kind(models.TextChoices):
    BREAKER = "breaker", KIND_LABELS["breaker"]
    RATE_LIMIT = "rate_limit", KIND_LABELS["rate_limit"]
    CACHE = "cache", KIND_LABELS["cache"]
    CONFIG = "config", KIND_LABELS["config"]


class Policy(models.Model):
    """The current state of one policy; its history is in ``PolicyVersion``.

    A deleted policy keeps its row (``deleted``), so its history stays whole,
    it is published as a tombstone, and creating it again continues the
    version numbers.
    """

    environment = models.ForeignKey(Environment, on_delete=models.PROTECT, related_name="policies")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    name = models.CharField(max_length=100, validators=[name_validator])
    spec: models.JSONField[dict[str, Any], dict[str, Any]] = models.JSONField(default=dict)
    version = models.PositiveIntegerField(default=0)
    revision = models.BigIntegerField(default=0)
    deleted = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["environment__name", "kind", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["environment", "kind", "name"], name="policy_unique_name_per_kind"
            )
        ]
        verbose_name_plural = "policies"
        permissions = [("override_policy", "Can trip, reset and override policies")]

    def __str__(self) -> str:
        return f"{self.environment.name}/{self.field}"

    @property
    def field(self) -> str:
        """The policy's field in the environment's Redis hash."""
        return policy_field(self.kind, self.name)


class PolicyVersion(models.Model):
    """One immutable version of a policy: who changed it, when, why, and its full content."""

    class Action(models.TextChoices):
        CREATE = "create"
        UPDATE = "update"
        DELETE = "delete"
        ROLLBACK = "rollback"

    policy = models.ForeignKey(Policy, on_delete=models.PROTECT, related_name="versions")
    version = models.PositiveIntegerField()
    revision = models.BigIntegerField()
    action = models.CharField(max_length=20, choices=Action.choices)
    spec: models.JSONField[dict[str, Any], dict[str, Any]] = models.JSONField(default=dict)
    deleted = models.BooleanField(default=False)
    # The author's name is kept as text too, so deleting a user keeps the record.
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    author_name = models.CharField(max_length=150)
    # The bound of every reason (a change's, an override's, a reset's): see check_reason.
    reason = models.TextField(blank=True, max_length=1000)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["policy", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["policy", "version"], name="policy_version_unique")
        ]

    def __str__(self) -> str:
        return f"{self.policy} v{self.version}"


def max_length(model: type[models.Model], field: str) -> int:
    """The most characters ``model.field`` may hold, as the model declares it."""
    length = getattr(model._meta.get_field(field), "max_length", None)
    if not isinstance(length, int):
        raise TypeError(f"{model.__name__}.{field} declares no max_length")
    return length


def check_length(value: str, model: type[models.Model], field: str, *, name: str = "") -> str:
    """Return ``value`` if it fits ``model.field``, else raise ``PolicyError`` naming
    ``name`` (default: the field), so the database never has to refuse it."""
    limit = max_length(model, field)
    if len(value) > limit:
        raise PolicyError(
            {name or field: [f"Use at most {limit} characters (this has {len(value)})."]}
        )
    return value


def check_reason(reason: str, *, name: str = "reason") -> str:
    """Every reason (of a change, an override, a reset, an import) has one bound."""
    return check_length(reason, PolicyVersion, "reason", name=name)
