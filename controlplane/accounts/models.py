from __future__ import annotations

import hashlib
import secrets
from collections.abc import Collection
from datetime import datetime

from django.apps import apps
from django.conf import settings
from django.db import models
from django.utils import timezone

from controlplane.accounts.roles import NO_GRANTS, Grants, Role, grants_of

TOKEN_PREFIX = "rcp_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def environment_ids(names: Collection[str] | None = None) -> dict[str, int]:
    """Every environment's id by its name (or only those of ``names``).

    ``policies`` imports this app, so its model is reached through the app registry.
    """
    environments = apps.get_model("policies", "Environment")._default_manager.all()
    if names is not None:
        environments = environments.filter(name__in=names)
    return {name: pk for pk, name in environments.order_by("name").values_list("pk", "name")}


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
    # The environments the token may act in; none: every environment.
    environments = models.ManyToManyField(
        "policies.Environment", blank=True, related_name="api_tokens"
    )

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

    def grants(self) -> Grants:
        """What the token holds now: its own role in its environments (none listed: all),
        capped in each by the role its creator holds there now."""
        own = Role(self.role)
        scope = frozenset(environment.name for environment in self.environments.all()) or None
        creator = self.created_by if self.created_by_id is not None else None
        if creator is None:
            return Grants(own, {}, scope)
        held = grants_of(creator)  # nothing for an inactive user
        return NO_GRANTS if held == NO_GRANTS else held.limited(own, scope)

    def acting_role(self) -> Role | None:
        """The highest role the token acts with in any environment (None: it cannot act)."""
        return self.grants().highest()

    @property
    def status(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and timezone.now() >= self.expires_at:
            return "expired"
        return "active"


class RoleGrant(models.Model):
    """A role a user holds in one environment, on top of the role they hold everywhere.

    The role everywhere comes from the user's role group (``roles.ensure_role_groups``);
    a grant raises it in one environment: a viewer everywhere may be an editor in
    staging. A user's role in an environment is the higher of the two.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="role_grants"
    )
    environment = models.ForeignKey(
        "policies.Environment", on_delete=models.CASCADE, related_name="role_grants"
    )
    role = models.CharField(max_length=20, choices=[(r.value, r.value) for r in Role])
    granted_by_name = models.CharField(max_length=150, blank=True)
    granted_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["environment__name"]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "environment"], name="role_grant_one_per_environment"
            )
        ]

    def __str__(self) -> str:
        return f"{self.user} {self.role} in {self.environment}"
