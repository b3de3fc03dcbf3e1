"""Django's permissions, answered per environment where the product asks per environment.

The audit log asks ``user.has_perm("audit.view_auditentry", environment_name)`` for
each environment its entries belong to: it imports nothing of ``accounts`` (which
records there), so this backend gives it the roles per environment.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.backends import BaseBackend

from controlplane.accounts.roles import grants_of

AUDIT_PERMISSION = "audit.view_auditentry"


class RoleBackend(BaseBackend):
    """The audit log's permission by environment; it authenticates no one.

    Listed after ``ModelBackend``, which keeps logging people in (and their
    sessions valid) and answers every other permission from the role groups.
    Django grants a permission when any backend does, and ``ModelBackend`` grants
    none for an object, so this one decides the per-environment questions.
    """

    def has_perm(self, user_obj: Any, perm: str, obj: Any = None) -> bool:
        if perm != AUDIT_PERMISSION or not (obj is None or isinstance(obj, str)):
            return False
        if not user_obj.is_active:
            return False
        return grants_of(user_obj).reads_audit_of(obj)
