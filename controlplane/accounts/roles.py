"""The four roles, built on Django's groups and permissions.

Each role includes the ones below it: a viewer reads everything but secret
values, an operator also sets overrides, an editor also edits policies, an
admin also manages users, roles, environments and API tokens.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, Group, Permission
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.http.response import HttpResponseBase

V = TypeVar("V", bound=Callable[..., HttpResponseBase])


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    EDITOR = "editor"
    ADMIN = "admin"


ORDER = (Role.VIEWER, Role.OPERATOR, Role.EDITOR, Role.ADMIN)

# What each role adds to the one below it.
_ADDED: dict[Role, tuple[str, ...]] = {
    Role.VIEWER: (
        "policies.view_environment",
        "policies.view_policy",
        "policies.view_policyversion",
        "audit.view_auditentry",
    ),
    Role.OPERATOR: ("policies.override_policy",),
    Role.EDITOR: ("policies.add_policy", "policies.change_policy", "policies.delete_policy"),
    Role.ADMIN: (
        "policies.add_environment",
        "policies.change_environment",
        "auth.view_user",
        "auth.add_user",
        "auth.change_user",
        "auth.delete_user",
        "auth.view_group",
        "auth.change_group",
        "accounts.manage_tokens",
        "accounts.view_apitoken",
    ),
}
# The permission that shows a user holds at least the role.
_KEY_PERMISSION: dict[Role, str] = {
    Role.VIEWER: "policies.view_policy",
    Role.OPERATOR: "policies.override_policy",
    Role.EDITOR: "policies.change_policy",
    Role.ADMIN: "policies.change_environment",
}


def role_permissions(role: Role) -> list[str]:
    """Every permission of ``role``, including those of the roles below it."""
    return [p for r in ORDER[: ORDER.index(role) + 1] for p in _ADDED[r]]


def group_name(role: Role) -> str:
    return role.value.capitalize()


def ensure_role_groups(app_config: Any = None, **kwargs: Any) -> None:
    """Create or repair one group per role with exactly its permissions (after migrate).

    ``post_migrate`` is sent once per application, and each sending creates that
    application's permissions: the groups are set on the last one, when every
    permission exists, in a few queries (``migrate`` and every test database flush
    send it).
    """
    from django.apps import apps

    if app_config is not None:
        with_models = [config for config in apps.get_app_configs() if config.models_module]
        if with_models and app_config is not with_models[-1]:
            return
    dotted = {p for role in ORDER for p in role_permissions(role)}
    found = {
        f"{permission.content_type.app_label}.{permission.codename}": permission
        for permission in Permission.objects.select_related("content_type").filter(
            content_type__app_label__in={d.split(".")[0] for d in dotted},
            codename__in={d.split(".")[1] for d in dotted},
        )
    }
    for role in ORDER:
        group, _ = Group.objects.get_or_create(name=group_name(role))
        group.permissions.set([found[p] for p in role_permissions(role) if p in found])


def role_of(user: AbstractBaseUser | AnonymousUser) -> Role | None:
    """The role ``user`` holds everywhere (their role group), or None; grants in single
    environments come on top of it (``grants_of``)."""
    if not user.is_authenticated or not user.is_active:
        return None
    for role in reversed(ORDER):
        if user.has_perm(_KEY_PERMISSION[role]):  # type: ignore[attr-defined]
            return role
    return None


@dataclass(frozen=True)
class Grants:
    """What a user or a token holds: a role everywhere, and roles in some environments.

    A user's role in an environment is the higher of their role everywhere and
    their grant there. A token is also limited to its environments (``scope``,
    None: all) and capped by its own role (``cap``).
    """

    everywhere: Role | None = None
    environments: Mapping[str, Role] = field(default_factory=dict)
    scope: frozenset[str] | None = None
    cap: Role | None = None

    def role_in(self, environment: str) -> Role | None:
        """The role held in ``environment`` (None: none)."""
        if self.scope is not None and environment not in self.scope:
            return None
        granted = self.environments.get(environment)
        held = max(self.everywhere, granted, key=rank) if granted else self.everywhere
        return held if held is None or self.cap is None else lower(held, self.cap)

    def highest(self) -> Role | None:
        """The highest role held in any environment: what a page open to several asks."""
        held = self.everywhere
        for environment, granted in self.environments.items():
            if self.scope is None or environment in self.scope:
                held = max(held, granted, key=rank)
        return held if held is None or self.cap is None else lower(held, self.cap)

    def held_everywhere(self) -> Role | None:
        """The role held in every environment, present and future: what pages that are
        not about one environment need (tokens, users, creating environments)."""
        if self.scope is not None or self.everywhere is None:
            return None
        return self.everywhere if self.cap is None else lower(self.everywhere, self.cap)

    def reads_audit_of(self, environment: str | None) -> bool:
        """Whether the holder reads the audit entries of ``environment`` (None: opens the
        log at all). Entries of no environment (``""``: tokens, users, log-ins) are
        about everyone's access: only admins of every environment read them."""
        if environment is None:
            return self.highest() is not None
        if not environment:
            return includes(self.held_everywhere(), Role.ADMIN)
        return self.role_in(environment) is not None

    def summary(self) -> str:
        """What the header and the 403 page say the holder is: "viewer, editor in staging"."""
        parts = [self.everywhere.value] if self.everywhere else []
        parts += [
            f"{granted.value} in {environment}"
            for environment, granted in sorted(self.environments.items())
            if rank(granted) > rank(self.everywhere)
        ]
        return ", ".join(parts)

    def environments_with(self, role: Role, names: list[str]) -> list[str]:
        """Those of ``names`` in which the holder has at least ``role``."""
        return [name for name in names if includes(self.role_in(name), role)]

    def limited(self, cap: Role, scope: frozenset[str] | None) -> Grants:
        """These grants as a token acting for their holder sees them: capped, scoped."""
        if self.scope is not None:
            scope = self.scope if scope is None else scope & self.scope
        capped = cap if self.cap is None else lower(cap, self.cap)
        return Grants(self.everywhere, self.environments, scope, capped)


NO_GRANTS = Grants()


def grants_of(user: AbstractBaseUser | AnonymousUser) -> Grants:
    """What ``user`` holds now (nothing for an anonymous or inactive user), read once
    per user object: a request asks it many times."""
    if not user.is_authenticated or not user.is_active:
        return NO_GRANTS
    cached: Grants | None = getattr(user, "_controlplane_grants", None)
    if cached is not None:
        return cached
    from controlplane.accounts.models import RoleGrant

    environments = {
        grant.environment.name: Role(grant.role)
        for grant in RoleGrant.objects.filter(user_id=user.pk).select_related("environment")
    }
    grants = Grants(role_of(user), environments)
    user._controlplane_grants = grants  # type: ignore[attr-defined]
    return grants


def rank(role: Role | None) -> int:
    """A role's place in ``ORDER``, -1 for none: a role includes every lower one."""
    return -1 if role is None else ORDER.index(role)


def includes(held: Role | None, role: Role) -> bool:
    """Whether holding ``held`` (None: no role) gives what ``role`` gives."""
    return rank(held) >= rank(role)


def lower(first: Role, second: Role) -> Role:
    """The lesser of two roles (a token acts with its own role, capped by its creator's)."""
    return min(first, second, key=rank)


# What templates and live pages ask a viewer's role for, and the role each needs.
ABILITIES: dict[str, Role] = {
    "view": Role.VIEWER,
    "operate": Role.OPERATOR,
    "edit": Role.EDITOR,
    "administer": Role.ADMIN,
}


def abilities_of(role: Role | None) -> dict[str, bool]:
    """``view``, ``operate``, ``edit``, ``administer``: what ``role`` allows."""
    return {ability: includes(role, needed) for ability, needed in ABILITIES.items()}


def _grants(holder: AbstractBaseUser | AnonymousUser | Grants) -> Grants:
    return holder if isinstance(holder, Grants) else grants_of(holder)


def abilities(holder: AbstractBaseUser | AnonymousUser | Grants) -> dict[str, bool]:
    """What the holder may do somewhere, for navigation: the highest role in any
    environment, but ``administer`` only with the admin role everywhere (what admins
    manage - tokens, users, environments - belongs to no one environment)."""
    grants = _grants(holder)
    can = abilities_of(grants.highest())
    can["administer"] = includes(grants.held_everywhere(), Role.ADMIN)
    return can


def abilities_in(
    holder: AbstractBaseUser | AnonymousUser | Grants, environment: str
) -> dict[str, bool]:
    """What the holder may do in ``environment``: the buttons a page of it offers."""
    return abilities_of(_grants(holder).role_in(environment))


def has_role(user: AbstractBaseUser | AnonymousUser, role: Role) -> bool:
    """Whether ``user`` holds ``role`` in every environment (the admin site's gate)."""
    return includes(grants_of(user).held_everywhere(), role)


def role_required(role: Role, *, everywhere: bool = False) -> Callable[[V], V]:
    """View decorator: anonymous users go to the login page, others without ``role`` get 403.

    ``role`` in at least one environment lets the view run: it checks the environment
    it is about itself (``policies.access``). With ``everywhere``, the role must be
    held in every environment: pages that belong to none (tokens, users).
    """

    def decorator(view: V) -> V:
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            grants = grants_of(request.user)
            held = grants.held_everywhere() if everywhere else grants.highest()
            if not includes(held, role):
                where = " in every environment" if everywhere else ""
                raise PermissionDenied(f"This needs the {role.value} role{where}.")
            return view(request, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator
