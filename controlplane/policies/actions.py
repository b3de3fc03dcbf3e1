"""Every change to environments and policies goes through a function here.

Each runs in one transaction, records an immutable version, and publishes to
Redis only once the transaction has committed.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from django.db import IntegrityError, transaction

from controlplane.accounts.actors import Actor
from controlplane.policies.models import Environment, Policy, PolicyVersion
from controlplane.policies.publish import policy_document, publish_policy
from controlplane.protocol.schema import (
    KIND_LABELS,
    PolicyError,
    kind_spec,
    validate_name,
    validate_spec,
)


class StaleVersionError(Exception):
    """The policy changed since the editor loaded it; ``current`` is what it is now."""

    def __init__(self, current: PolicyVersion) -> None:
        self.current = current
        super().__init__(
            f"{current.policy} was changed by {current.author_name} "
            f"(version {current.version}) since you loaded it"
        )


def do_create_environment(name: str, actor: Actor, description: str = "") -> Environment:
    validate_name(name)
    try:
        with transaction.atomic():
            return Environment.objects.create(name=name, description=description)
    except IntegrityError:
        raise PolicyError({"name": [f"An environment named {name!r} already exists."]}) from None


def _next_revision(environment: Environment) -> int:
    locked = Environment.objects.select_for_update().get(pk=environment.pk)
    locked.revision += 1
    locked.save(update_fields=["revision"])
    environment.revision = locked.revision
    return locked.revision


def _record(
    policy: Policy,
    action: PolicyVersion.Action,
    actor: Actor,
    reason: str,
) -> PolicyVersion:
    """Save ``policy`` as a new version and publish it once the transaction commits."""
    policy.revision = _next_revision(policy.environment)
    policy.version += 1
    policy.updated_by = actor.name
    policy.save()
    version = PolicyVersion.objects.create(
        policy=policy,
        version=policy.version,
        revision=policy.revision,
        action=action,
        spec=policy.spec,
        deleted=policy.deleted,
        author=actor.user,  # type: ignore[misc]
        author_name=actor.name,
        reason=reason,
    )
    document = policy_document(policy)
    transaction.on_commit(partial(publish_policy, policy.environment.keys(), document))
    return version


def do_create_policy(
    environment: Environment,
    kind: str,
    name: str,
    spec: Mapping[str, Any],
    actor: Actor,
    reason: str = "",
) -> Policy:
    """Create a policy (or bring back a deleted one of the same name)."""
    kind_spec(kind)
    validate_name(name)
    clean = validate_spec(kind, spec)
    with transaction.atomic():
        policy, created = Policy.objects.select_for_update().get_or_create(
            environment=environment, kind=kind, name=name, defaults={"spec": clean}
        )
        if not created and not policy.deleted:
            raise PolicyError(
                {
                    "name": [
                        f"A {KIND_LABELS[kind].lower()} named {name!r} already exists "
                        f"in {environment.name}."
                    ]
                }
            )
        policy.spec = clean
        policy.deleted = False
        _record(policy, PolicyVersion.Action.CREATE, actor, reason)
    return policy


def _lock_current(policy: Policy, expected_version: int | None) -> Policy:
    locked = Policy.objects.select_for_update().select_related("environment").get(pk=policy.pk)
    if expected_version is not None and locked.version != expected_version:
        raise StaleVersionError(locked.versions.get(version=locked.version))
    if locked.deleted:
        raise PolicyError({"name": [f"{locked} was deleted."]})
    return locked


def do_update_policy(
    policy: Policy,
    changes: Mapping[str, Any],
    actor: Actor,
    reason: str = "",
    *,
    expected_version: int | None = None,
) -> Policy:
    """Change some fields of a policy; fields not in ``changes`` keep their value.

    With ``expected_version``, the update is refused with ``StaleVersionError``
    if someone else saved the policy in the meantime.
    """
    with transaction.atomic():
        locked = _lock_current(policy, expected_version)
        clean = validate_spec(locked.kind, changes, base=locked.spec)
        if clean == locked.spec:
            return locked
        locked.spec = clean
        _record(locked, PolicyVersion.Action.UPDATE, actor, reason)
    return locked


def do_delete_policy(
    policy: Policy, actor: Actor, reason: str = "", *, expected_version: int | None = None
) -> Policy:
    with transaction.atomic():
        locked = _lock_current(policy, expected_version)
        locked.deleted = True
        _record(locked, PolicyVersion.Action.DELETE, actor, reason)
    return locked


def do_rollback_policy(
    policy: Policy,
    to_version: int,
    actor: Actor,
    reason: str = "",
    *,
    expected_version: int | None = None,
) -> Policy:
    """Restore the content of an earlier version as a new version (history is kept)."""
    with transaction.atomic():
        locked = Policy.objects.select_for_update().select_related("environment").get(pk=policy.pk)
        if expected_version is not None and locked.version != expected_version:
            raise StaleVersionError(locked.versions.get(version=locked.version))
        try:
            target = locked.versions.get(version=to_version)
        except PolicyVersion.DoesNotExist:
            raise PolicyError({"version": [f"{locked} has no version {to_version}."]}) from None
        locked.spec = validate_spec(locked.kind, target.spec)
        locked.deleted = target.deleted
        _record(
            locked, PolicyVersion.Action.ROLLBACK, actor, reason or f"Rolled back to v{to_version}"
        )
    return locked
