"""Look-up and permission in one call, for pages, the API and live pushes.

Each helper takes what its caller holds (``grants_of(request.user)`` on a page,
``token.grants()`` in the API: a role per environment) and the role the action
needs, and raises ``PermissionDenied`` when the role held in the object's
environment falls short, before anything is read, then ``Http404`` when there is
no such object. A caller cannot look an object up and forget the check. Pages
still turn anonymous visitors away first (``role_required``).
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import Http404

from controlplane.accounts.roles import Grants, Role, includes
from controlplane.policies.models import Environment, Policy
from controlplane.protocol.schema import KINDS

# What a caller holds: grants (a role per environment), or one role for callers
# that have no environment to ask about.
Held = Grants | Role | None


def _role_in(held: Held, environment: str | None) -> Role | None:
    """The role ``held`` gives in ``environment`` (None: in every environment)."""
    if not isinstance(held, Grants):
        return held
    return held.held_everywhere() if environment is None else held.role_in(environment)


def check_role(held: Held, needed: Role, environment: str | None = None) -> None:
    """Refuse (403) unless ``held`` gives ``needed`` in ``environment``.

    Grants without an environment must give it everywhere: a page of no one
    environment is not opened by a role held in one.
    """
    if not includes(_role_in(held, environment), needed):
        where = f" in {environment}" if environment is not None else ""
        raise PermissionDenied(f"This needs the {needed.value} role{where}.")


def environment_for(held: Held, needed: Role, name: str) -> Environment:
    """The environment called ``name``, for someone holding ``held``."""
    check_role(held, needed, name)
    environment = Environment.objects.filter(name=name).first()
    if environment is None:
        raise Http404(f"No environment named {name!r}.")
    return environment


def environments_for(held: Held, needed: Role = Role.VIEWER) -> list[Environment]:
    """The environments in which ``held`` gives ``needed``, by name: what lists show."""
    return [
        environment
        for environment in Environment.objects.all()
        if includes(_role_in(held, environment.name), needed)
    ]


def find_policy(environment: Environment | str, kind: str, name: str) -> Policy | None:
    """The live (not deleted) policy, or None: the one look-up every caller shares.

    Pushes use it directly: their consumer checks the viewer's role on connect
    and again before pushing.
    """
    if kind not in KINDS:
        return None
    policies = Policy.objects.select_related("environment").filter(
        kind=kind, name=name, deleted=False
    )
    if isinstance(environment, Environment):
        return policies.filter(environment=environment).first()
    return policies.filter(environment__name=environment).first()


def policy_for(held: Held, needed: Role, environment: str, kind: str, name: str) -> Policy:
    """The live policy ``kind``/``name`` of ``environment``, for someone holding ``held``."""
    check_role(held, needed, environment)
    policy = find_policy(environment, kind, name)
    if policy is None:
        raise Http404(f"No {kind} policy named {name!r} in {environment}.")
    return policy
