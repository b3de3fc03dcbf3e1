from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from controlplane.audit.models import AuditEntry


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Read-only: the log is append-only."""

    list_display = ("at", "actor_name", "action", "environment", "object_kind", "object_name")
    list_filter = ("action", "environment", "object_kind")
    search_fields = ("actor_name", "object_name", "reason")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
