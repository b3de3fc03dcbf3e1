from __future__ import annotations

import hashlib
import secrets
from datetime import datetime

from django.conf import settings
from django.db import models
from django.utils import timezone

from controlplane.accounts.roles import Role, lower, role_of

TOKEN_PREFIX = "rcp_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ApiToken(models.Model):
    """A credential for automation: shown once, stored hashed, with a role and an expiry.

    A token made by a user acts for that user: never above the role they hold
    now, and not at all once they are deactivated or hold no role. Deleting the
    user revokes it. A token made by the system (no user) has its own role.
    """

    label = models.CharField(max_length=100)
    role = models.CharField(max_length=20, choices=[(r.value, r.value) for r in Role])
    # The first characters, kept in clear so people can tell tokens apart.
    prefix = models.CharField(max_length=12, db_index=True)
    token_hash = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_by_name = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        permissions = [("manage_tokens", "Can create and revoke API tokens")]

    def __str__(self) -> str:
        return f"{self.label} ({self.prefix}…)"

    @staticmethod
    def generate() -> str:
        return TOKEN_PREFIX + secrets.token_urlsafe(32)

    def is_usable(self, now: datetime | None = None) -> bool:
        now = now or timezone.now()
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def acting_role(self) -> Role | None:
        """The role the token acts with now: its own, capped by its creator's current role."""
        own = Role(self.role)
        creator = self.created_by if self.created_by_id is not None else None
        if creator is None:
            return own
        held = role_of(creator)  # None for an inactive user
        if held is None:
            return None
        return lower(own, held)

    @property
    def status(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and timezone.now() >= self.expires_at:
            return "expired"
        return "active"
