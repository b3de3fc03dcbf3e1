from __future__ import annotations

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class AccountsConfig(AppConfig):
    name = "controlplane.accounts"
    label = "accounts"
    verbose_name = "Accounts"

    def ready(self) -> None:
        from controlplane.accounts.roles import ensure_role_groups

        post_migrate.connect(ensure_role_groups, dispatch_uid="controlplane-role-groups")
