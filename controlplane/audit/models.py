from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone


class AppendOnlyError(Exception):
    """Audit entries are never edited or deleted through the product."""


class AuditEntryQuerySet(models.QuerySet["AuditEntry"]):
    def update(self, **kwargs: Any) -> int:
        raise AppendOnlyError("audit entries cannot be edited")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise AppendOnlyError("audit entries cannot be deleted")

    def matching(
        self,
        *,
        actor: str | None = None,
        environment: str | None = None,
        kind: str | None = None,
        object: str | None = None,
        action: str | None = None,
    ) -> AuditEntryQuerySet:
        """Entries of exactly this actor, environment, kind and object, and actions by prefix;
        empty criteria match everything (the log page and the API filter alike)."""
        entries = self
        for column, value in (
            ("actor_name", actor),
            ("environment", environment),
            ("object_kind", kind),
            ("object_name", object),
        ):
            if value:
                entries = entries.filter(**{column: value})
        if action:
            entries = entries.filter(action__startswith=action)
        return entries


class AuditEntry(models.Model):
    """One change made by anyone or anything: who, when, from where, what, why, field by field.

    Names are stored as text, so deleting a user, a token or a policy keeps
    every entry that names them.
    """

    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor_name = models.CharField(max_length=150, db_index=True)
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    actor_token = models.CharField(max_length=100, blank=True)
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    action = models.CharField(max_length=50, db_index=True)
    environment = models.CharField(max_length=100, blank=True, db_index=True)
    object_kind = models.CharField(max_length=30, blank=True, db_index=True)
    object_name = models.CharField(max_length=200, blank=True, db_index=True)
    reason = models.TextField(blank=True)
    # {field: [before, after]}; secret values appear only as fingerprints.
    changes: models.JSONField[dict[str, Any], dict[str, Any]] = models.JSONField(default=dict)
    correlation_id = models.UUIDField(null=True, blank=True, db_index=True)

    objects = AuditEntryQuerySet.as_manager()

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor_name} {self.action} {self.object_label}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise AppendOnlyError("audit entries cannot be edited")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise AppendOnlyError("audit entries cannot be deleted")

    @property
    def object_label(self) -> str:
        parts = [p for p in (self.environment, self.object_kind, self.object_name) if p]
        return "/".join(parts)


def new_correlation_id() -> uuid.UUID:
    return uuid.uuid4()
