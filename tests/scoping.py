"""The cast of environment scoping: two environments and users whose roles differ by
environment, shared by the page, API, websocket and audit tests of roles per environment."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.models import User

from controlplane.accounts.actors import Actor
from controlplane.accounts.models import RoleGrant
from controlplane.accounts.roles import Role
from controlplane.policies.actions import do_create_environment
from controlplane.policies.models import Environment
from tests.conftest import make_user


@dataclass(frozen=True)
class ScopedCast:
    staging: Environment
    stella: User  # viewer everywhere, editor in staging
    sam: User  # viewer in staging, nothing anywhere else


# The role each of them holds per environment (None: none); "" for pages of no
# environment: their highest role anywhere.
HELD: dict[str, dict[str, Role | None]] = {
    "stella": {"production": Role.VIEWER, "staging": Role.EDITOR, "": Role.EDITOR},
    "sam": {"production": None, "staging": Role.VIEWER, "": Role.VIEWER},
}


def grant(user: User, environment: Environment, role: Role) -> RoleGrant:
    """Give ``user`` ``role`` in ``environment`` (the users pages do it through an action)."""
    return RoleGrant.objects.create(
        user=user, environment=environment, role=role.value, granted_by_name="tests"
    )


def scoped_cast(system: Actor) -> ScopedCast:
    """Staging (next to the suite's production) and the two scoped users."""
    staging = do_create_environment("staging", system)
    stella = make_user("stella", Role.VIEWER)
    grant(stella, staging, Role.EDITOR)
    sam = make_user("sam", None)
    grant(sam, staging, Role.VIEWER)
    return ScopedCast(staging, stella, sam)
