"""User administration, with every user and role change written to the audit log.

Admins reach it through their role (``admin_site.py``); unless they are
superusers, they grant roles but cannot make anyone a superuser, hand out
single permissions, or change a superuser's account.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.models import User
from django.http import HttpRequest

from controlplane.accounts.actors import Actor
from controlplane.audit.record import record

AUDITED_FIELDS = ("username", "email", "is_active", "is_staff", "is_superuser")

admin.site.unregister(User)


@admin.register(User)
class AuditedUserAdmin(UserAdmin):  # type: ignore[type-arg]
    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        fields = tuple(super().get_readonly_fields(request, obj))
        if request.user.is_superuser:
            return fields
        return (*fields, "is_superuser", "user_permissions")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_change_permission(request, obj) and self._may_touch(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_delete_permission(request, obj) and self._may_touch(request, obj)

    @staticmethod
    def _may_touch(request: HttpRequest, obj: Any) -> bool:
        return obj is None or not obj.is_superuser or request.user.is_superuser

    def save_model(self, request: HttpRequest, obj: User, form: Any, change: bool) -> None:
        before = User.objects.filter(pk=obj.pk).values(*AUDITED_FIELDS).first() if change else None
        super().save_model(request, obj, form, change)
        after = {name: getattr(obj, name) for name in AUDITED_FIELDS}
        changes = {
            name: [None if before is None else before[name], after[name]]
            for name in AUDITED_FIELDS
            if before is None or before[name] != after[name]
        }
        if "password" in form.changed_data or "password1" in form.changed_data:
            changes["password"] = ["(hidden)", "(changed)"]
        if changes or not change:
            record(
                Actor.from_request(request),
                "user.update" if change else "user.create",
                kind="user",
                name=obj.get_username(),
                changes=changes,
            )

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        user: User = form.instance
        before = sorted(user.groups.values_list("name", flat=True))
        super().save_related(request, form, formsets, change)
        after = sorted(user.groups.values_list("name", flat=True))
        if before != after:
            record(
                Actor.from_request(request),
                "user.roles",
                kind="user",
                name=user.get_username(),
                changes={"groups": [before, after]},
            )

    def delete_model(self, request: HttpRequest, obj: User) -> None:
        name = obj.get_username()
        super().delete_model(request, obj)
        record(Actor.from_request(request), "user.delete", kind="user", name=name)
