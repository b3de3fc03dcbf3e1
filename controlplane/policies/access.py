"""Look-up and permission in one call, for pages, the API and live pushes.

Each helper takes the role its caller holds (``role_of(request.user)`` on a page,
``token.acting_role()`` in the API) and the role the action needs, and raises
``PermissionDenied`` when it falls short, before anything is read, then ``Http404``
when there is no such object. A caller cannot look an object up and forget the
check. Pages still turn anonymous visitors away first (``role_required``).
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import Http404

from controlplane.accounts.roles import Role, includes
from controlplane.policies.models import Environment, Policy
from controlplane.protocol.schema import KINDS


def check_role(held: Role | None, needed: Role) -> None:
    if not includes(held, needed):
        raise PermissionDenied(f"This needs the {needed.value} role.")


def environment_for(held: Role | None, needed: Role, name: str) -> Environment:
    """The environment called ``name``, for someone holding ``held``."""
    check_role(held, needed)
    environment = Environment.objects.filter(name=name).first()
    if environment is None:
        raise Http404(f"No environment named {name!r}.")
    return environment


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


def policy_for(held: Role | None, needed: Role, environment: str, kind: str, name: str) -> Policy:
    """The live policy ``kind``/``name`` of ``environment``, for someone holding ``held``."""
    check_role(held, needed)
    policy = find_policy(environment, kind, name)
    if policy is None:
        raise Http404(f"No {kind} policy named {name!r} in {environment}.")
    return policy
