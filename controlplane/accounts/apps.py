from __future__ import annotations

from django.apps import AppConfig
from django.conf import settings
from django.contrib.admin import apps as admin_apps
from django.core import checks
from django.db.models.signals import post_migrate, pre_delete


class AccountsConfig(AppConfig):
    name = "controlplane.accounts"
    label = "accounts"
    verbose_name = "Accounts"

    def ready(self) -> None:
        from controlplane.accounts.actions import revoke_tokens_of_deleted_user
        from controlplane.accounts.checks import check_secret_key
        from controlplane.accounts.roles import ensure_role_groups

        checks.register(check_secret_key, checks.Tags.security)

        post_migrate.connect(ensure_role_groups, dispatch_uid="controlplane-role-groups")
        pre_delete.connect(
            revoke_tokens_of_deleted_user,
            sender=settings.AUTH_USER_MODEL,
            dispatch_uid="controlplane-revoke-tokens-of-deleted-user",
        )


class AdminConfig(admin_apps.AdminConfig):
    """Django's admin, on a site open to the admin role (``controlplane.accounts.admin_site``)."""

    default = False  # not this module's app: ``controlplane.accounts`` is AccountsConfig
    default_site = "controlplane.accounts.admin_site.RoleAdminSite"
