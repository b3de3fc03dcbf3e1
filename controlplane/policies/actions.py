"""Every change to environments and policies goes through a function here.

Each ``do_*`` action runs in one durable transaction (never inside another
one), records an immutable version, and publishes to Redis only once the
transaction has committed. ``create_policy``, ``update_policy`` and
``delete_policy`` are the same changes as steps of a larger action (an
import, a cache purge): they run in their caller's transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from django.db import IntegrityError, transaction

from controlplane.accounts.actors import Actor
from controlplane.audit.record import record, spec_changes
from controlplane.policies.models import (
    Environment,
    Policy,
    PolicyVersion,
    check_length,
    check_reason,
    check_tags,
    check_team,
)
from controlplane.policies.publish import policy_document, publish_policy
from controlplane.policies.signals import announce_row
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
    check_length(description, Environment, "description")
    try:
        with transaction.atomic(durable=True):
            environment = Environment.objects.create(name=name, description=description)
            record(
                actor,
                "environment.create",
                environment=name,
                changes={"description": [None, description]} if description else None,
            )
            return environment
    except IntegrityError:
        raise PolicyError({"name": [f"An environment named {name!r} already exists."]}) from None


def check_reason_rule(environment: Environment, reason: str) -> None:
    """Refuse a change without a reason where the environment's rules require one."""
    if environment.require_reason and not reason.strip():
        raise PolicyError({"reason": [f"Changes in {environment.name} need a reason: say why."]})


def next_revision(environment: Environment) -> int:
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
    before: Policy | None,
    audit_action: str = "",
) -> PolicyVersion:
    """Save ``policy`` as a new version, audit it, and publish it once the transaction commits."""
    policy.revision = next_revision(policy.environment)
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
    record(
        actor,
        audit_action or f"policy.{action}",
        environment=policy.environment.name,
        kind=policy.kind,
        name=policy.name,
        reason=reason,
        changes={**_policy_changes(before, policy), **_metadata_changes(before, policy)},
        facts={"version": policy.version},
    )
    document = policy_document(policy)
    # Its rows follow with the fleet's next report, as the live pages read the policy.
    transaction.on_commit(partial(publish_policy, policy.environment.keys(), document))
    return version


def _policy_changes(before: Policy | None, after: Policy) -> dict[str, list[Any]]:
    old = None if before is None or before.deleted else before.spec
    new = None if after.deleted else after.spec
    changes = spec_changes(after.kind, old, new)
    if (before is not None and before.deleted) != after.deleted:
        changes["deleted"] = [before is not None and before.deleted, after.deleted]
    return changes


def _snapshot(policy: Policy) -> Policy:
    """A detached copy of ``policy`` as it is now, for the audit's before values."""
    return Policy(
        spec=dict(policy.spec),
        deleted=policy.deleted,
        version=policy.version,
        tags=list(policy.tags),
        team=policy.team,
    )


def _metadata_changes(before: Policy | None, after: Policy) -> dict[str, list[Any]]:
    """The tags and team that differ, as the audit records them."""
    changes: dict[str, list[Any]] = {}
    old_tags, old_team = ([], "") if before is None else (before.tags, before.team)
    if old_tags != after.tags:
        changes["tags"] = [old_tags, list(after.tags)]
    if old_team != after.team:
        changes["team"] = [old_team, after.team]
    return changes


def _set_metadata(policy: Policy, tags: Sequence[str] | None, team: str | None) -> None:
    """Validate and set the tags and team given (None keeps the policy's)."""
    errors: dict[str, list[str]] = {}
    for check, value, field in ((check_tags, tags, "tags"), (check_team, team, "team")):
        if value is None:
            continue
        try:
            setattr(policy, field, check(value))
        except PolicyError as exc:
            errors.update(exc.errors)
    if errors:
        raise PolicyError(errors)


def do_create_policy(
    environment: Environment,
    kind: str,
    name: str,
    spec: Mapping[str, Any],
    actor: Actor,
    reason: str = "",
    *,
    audit_action: str = "",
    tags: Sequence[str] | None = None,
    team: str | None = None,
) -> Policy:
    """Create a policy (or bring back a deleted one of the same name).

    ``audit_action`` names the action in the audit log when it is more than a
    create (``policy.adopt``). ``tags`` and ``team`` default to none.
    """
    with transaction.atomic(durable=True):
        return create_policy(
            environment,
            kind,
            name,
            spec,
            actor,
            reason,
            audit_action=audit_action,
            tags=tags,
            team=team,
        )


def create_policy(
    environment: Environment,
    kind: str,
    name: str,
    spec: Mapping[str, Any],
    actor: Actor,
    reason: str = "",
    *,
    audit_action: str = "",
    tags: Sequence[str] | None = None,
    team: str | None = None,
) -> Policy:
    """``do_create_policy`` as a step of the caller's transaction (it must be in one)."""
    kind_spec(kind)
    validate_name(name)
    check_reason(reason)
    check_reason_rule(environment, reason)
    metadata = Policy()
    _set_metadata(metadata, tags, team)
    clean = validate_spec(kind, spec)
    policy, created = Policy.objects.select_for_update().get_or_create(
        environment=environment, kind=kind, name=name, defaults={"spec": clean}
    )
    before = None if created else _snapshot(policy)
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
    policy.tags, policy.team = metadata.tags, metadata.team
    _record(policy, PolicyVersion.Action.CREATE, actor, reason, before, audit_action)
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
    tags: Sequence[str] | None = None,
    team: str | None = None,
) -> Policy:
    """Change some fields of a policy; fields not in ``changes`` keep their value.

    With ``expected_version``, the update is refused with ``StaleVersionError``
    if someone else saved the policy in the meantime. ``tags`` and ``team``
    replace the policy's when given; a change of them alone is audited as an
    update but is no new version and is not published.
    """
    with transaction.atomic(durable=True):
        return update_policy(
            policy,
            changes,
            actor,
            reason,
            expected_version=expected_version,
            tags=tags,
            team=team,
        )


def update_policy(
    policy: Policy,
    changes: Mapping[str, Any],
    actor: Actor,
    reason: str = "",
    *,
    expected_version: int | None = None,
    audit_action: str = "",
    tags: Sequence[str] | None = None,
    team: str | None = None,
) -> Policy:
    """``do_update_policy`` as a step of the caller's transaction (it must be in one).

    ``audit_action`` names the action in the audit log when it is more than an
    update (``policy.purge``).
    """
    check_reason(reason)
    locked = _lock_current(policy, expected_version)
    check_reason_rule(locked.environment, reason)
    before = _snapshot(locked)
    errors: dict[str, list[str]] = {}
    try:
        _set_metadata(locked, tags, team)
    except PolicyError as exc:
        errors.update(exc.errors)
    try:
        clean = validate_spec(locked.kind, changes, base=locked.spec)
    except PolicyError as exc:
        errors.update(exc.errors)
    if errors:
        raise PolicyError(errors)
    if clean != locked.spec:
        locked.spec = clean
        _record(locked, PolicyVersion.Action.UPDATE, actor, reason, before, audit_action)
    elif metadata := _metadata_changes(before, locked):
        locked.updated_by = actor.name
        locked.save(update_fields=["tags", "team", "updated_by", "updated_at"])
        record(
            actor,
            audit_action or "policy.update",
            environment=locked.environment.name,
            kind=locked.kind,
            name=locked.name,
            reason=reason,
            changes=metadata,
        )
        # Not published (clients never read tags), but the live row shows them.
        transaction.on_commit(partial(announce_row, locked.environment.name, locked.field))
    return locked


def do_delete_policy(
    policy: Policy, actor: Actor, reason: str = "", *, expected_version: int | None = None
) -> Policy:
    with transaction.atomic(durable=True):
        return delete_policy(policy, actor, reason, expected_version=expected_version)


def delete_policy(
    policy: Policy, actor: Actor, reason: str = "", *, expected_version: int | None = None
) -> Policy:
    """``do_delete_policy`` as a step of the caller's transaction (it must be in one)."""
    check_reason(reason)
    locked = _lock_current(policy, expected_version)
    check_reason_rule(locked.environment, reason)
    before = _snapshot(locked)
    locked.deleted = True
    _record(locked, PolicyVersion.Action.DELETE, actor, reason, before)
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
    with transaction.atomic(durable=True):
        return rollback_policy(policy, to_version, actor, reason, expected_version=expected_version)


def rollback_policy(
    policy: Policy,
    to_version: int,
    actor: Actor,
    reason: str = "",
    *,
    expected_version: int | None = None,
) -> Policy:
    """``do_rollback_policy`` as a step of the caller's transaction (it must be in one)."""
    check_reason(reason)
    locked = Policy.objects.select_for_update().select_related("environment").get(pk=policy.pk)
    if expected_version is not None and locked.version != expected_version:
        raise StaleVersionError(locked.versions.get(version=locked.version))
    try:
        target = locked.versions.get(version=to_version)
    except PolicyVersion.DoesNotExist:
        raise PolicyError({"version": [f"{locked} has no version {to_version}."]}) from None
    check_reason_rule(locked.environment, reason)
    before = _snapshot(locked)
    locked.spec = validate_spec(locked.kind, target.spec)
    locked.deleted = target.deleted
    _record(
        locked,
        PolicyVersion.Action.ROLLBACK,
        actor,
        reason or f"Rolled back to v{to_version}",
        before,
    )
    return locked
