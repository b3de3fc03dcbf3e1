"""The four roles, built on Django's groups and permissions.

Each role includes the ones below it: a viewer reads everything but secret
values, an operator also sets overrides, an editor also edits policies, an
admin also manages users, roles, environments and API tokens.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
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


def ensure_role_groups(**kwargs: Any) -> None:
    """Create or repair one group per role with exactly its permissions (after migrate)."""
    for role in ORDER:
        group, _ = Group.objects.get_or_create(name=group_name(role))
        wanted = []
        for dotted in role_permissions(role):
            app_label, codename = dotted.split(".")
            permission = Permission.objects.filter(
                content_type__app_label=app_label, codename=codename
            ).first()
            if permission is not None:
                wanted.append(permission)
        group.permissions.set(wanted)


def role_of(user: AbstractBaseUser | AnonymousUser) -> Role | None:
    """The highest role ``user`` holds, or None."""
    if not user.is_authenticated or not user.is_active:
        return None
    for role in reversed(ORDER):
        if user.has_perm(_KEY_PERMISSION[role]):  # type: ignore[attr-defined]
            return role
    return None


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


def abilities(user: AbstractBaseUser | AnonymousUser) -> dict[str, bool]:
    """What ``user``'s role allows (all False for an anonymous or inactive user)."""
    return abilities_of(role_of(user))


def has_role(user: AbstractBaseUser | AnonymousUser, role: Role) -> bool:
    return includes(role_of(user), role)


def role_required(role: Role) -> Callable[[V], V]:
    """View decorator: anonymous users go to the login page, others without ``role`` get 403."""

    def decorator(view: V) -> V:
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not has_role(request.user, role):
                raise PermissionDenied(f"This needs the {role.value} role.")
            return view(request, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator
