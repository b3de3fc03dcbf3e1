"""Manual overrides: set, lift and expire; each one audited and published to the fleet."""

from __future__ import annotations

import logging
from datetime import datetime
from functools import partial
from importlib.resources import files

import redis
from django.db import transaction
from django.db.models import OuterRef, QuerySet, Subquery
from django.utils import timezone

from controlplane.accounts.actors import Actor
from controlplane.audit.record import record
from controlplane.live.models import Override
from controlplane.metrics import PUBLISHES, REDIS_ERRORS
from controlplane.policies.actions import do_update_policy, next_revision
from controlplane.policies.models import Environment, Policy, check_reason
from controlplane.policies.publish import redis_answers, write_document
from controlplane.protocol.documents import (
    OVERRIDE_STATES,
    SECTION_OVERRIDES,
    OverrideDocument,
)
from controlplane.protocol.keys import KeyLayout
from controlplane.protocol.schema import PolicyError, validate_name
from controlplane.redis_connection import get_redis

logger = logging.getLogger(__name__)


class RedisUnavailableError(Exception):
    """An action that only Redis can carry out was refused: Redis does not answer."""


def override_document(override: Override) -> OverrideDocument:
    return OverrideDocument(
        kind=override.kind,
        name=override.name,
        revision=override.revision,
        state=override.state or None,
        reason=override.reason,
        actor=override.actor_name,
        created_at=override.created_at.isoformat(),
        expires_at=override.expires_at.timestamp() if override.expires_at else None,
    )


def current_override(environment: Environment, kind: str, name: str) -> Override | None:
    """The override in force for a policy, or None (lifted, expired or never set)."""
    latest = (
        Override.objects.filter(environment=environment, kind=kind, name=name)
        .order_by("-revision")
        .first()
    )
    if latest is None or not latest.state:
        return None
    if latest.expires_at is not None and latest.expires_at <= timezone.now():
        return None
    return latest


def newest_overrides(environment: Environment) -> QuerySet[Override]:
    """The newest row of every overridden policy (lifted ones included): one query."""
    newest = Override.objects.filter(
        environment=environment, kind=OuterRef("kind"), name=OuterRef("name")
    ).order_by("-revision")
    return Override.objects.filter(
        environment=environment, revision=Subquery(newest.values("revision")[:1])
    ).order_by("revision")


def active_overrides(environment: Environment) -> dict[str, Override]:
    """The overrides in force, by ``kind:name``."""
    now = timezone.now()
    return {
        o.field: o
        for o in newest_overrides(environment)
        if o.state and (o.expires_at is None or o.expires_at > now)
    }


def publish_override(keys: KeyLayout, document: OverrideDocument) -> bool:
    try:
        write_document(
            keys,
            SECTION_OVERRIDES,
            f"{document.kind}:{document.name}",
            document.encode(),
            document.revision,
        )
    except redis.RedisError as exc:
        PUBLISHES.labels(SECTION_OVERRIDES, "failed").inc()
        REDIS_ERRORS.labels("publish").inc()
        logger.warning(
            "Could not publish override %s (%s); the reconciler will retry", document, exc
        )
        return False
    return True


def _write(
    environment: Environment,
    kind: str,
    name: str,
    state: str,
    actor: Actor,
    reason: str,
    expires_at: datetime | None,
    action: str,
    before_state: str | None,
) -> Override:
    with transaction.atomic():
        override = Override.objects.create(
            environment=environment,
            kind=kind,
            name=name,
            state=state,
            reason=reason,
            actor_name=actor.name,
            actor_user=actor.user,  # type: ignore[misc]
            expires_at=expires_at,
            revision=next_revision(environment),
        )
        changes: dict[str, list[object]] = {"state": [before_state, state or None]}
        if expires_at is not None:
            changes["expires_at"] = [None, expires_at.isoformat()]
        record(
            actor,
            action,
            environment=environment.name,
            kind=kind,
            name=name,
            reason=reason,
            changes=changes,
        )
        document = override_document(override)
        transaction.on_commit(partial(publish_override, environment.keys(), document))
        transaction.on_commit(partial(_announce, environment.name, f"{kind}:{name}"))
    return override


def _target_errors(
    kind: str, kinds: tuple[str, ...], name: str, reason: str
) -> dict[str, list[str]]:
    """What is wrong with the policy and reason an operator's action names, by field.

    Every live action checks the name by the protocol's one rule before anything
    reaches Redis or the database: a name is also part of Redis keys and audit rows.
    """
    errors: dict[str, list[str]] = {}
    if kind not in kinds:
        errors["kind"] = [f"This action exists for: {', '.join(kinds)}."]
    try:
        validate_name(name)
    except PolicyError as exc:
        errors.update(exc.errors)
    try:
        check_reason(reason)
    except PolicyError as exc:
        errors.update(exc.errors)
    if not reason.strip():
        errors["reason"] = ["Say why: the reason is shown to everyone and kept in the audit log."]
    return errors


def _announce(environment: str, field: str) -> None:
    from controlplane.live.push import notify

    try:
        notify(environment, {field}, urgent=True)
    except Exception:  # the dashboards also refresh on their own; never fail the action
        logger.warning("Could not announce the override of %s to open dashboards", field)


_RESET_LUA = (
    files("controlplane.protocol").joinpath("lua/breaker_common.lua").read_text()
    + files("controlplane.protocol").joinpath("lua/breaker_reset.lua").read_text()
)


def do_reset_breaker(environment: Environment, name: str, actor: Actor, reason: str) -> None:
    """Back to closed on every instance, windows emptied; lifts any override first.

    A reset is written to Redis only, never stored for the reconciler to replay,
    so it is refused, with nothing lifted or audited, while Redis does not answer.
    """
    errors = _target_errors("breaker", ("breaker",), name, reason)
    if errors:
        raise PolicyError(errors)
    if not redis_answers():
        raise RedisUnavailableError(
            "Redis cannot be reached, and a reset exists only there: try again when it answers."
        )
    do_clear_override(environment, "breaker", name, actor, reason)
    with transaction.atomic():
        record(
            actor,
            "override.reset",
            environment=environment.name,
            kind="breaker",
            name=name,
            reason=reason,
        )
        transaction.on_commit(partial(_write_reset, environment.keys(), name))
        transaction.on_commit(partial(_announce, environment.name, f"breaker:{name}"))


def _write_reset(keys: KeyLayout, name: str) -> None:
    try:
        get_redis().eval(
            _RESET_LUA,
            2,
            keys.breakers,
            keys.breaker_probes(name),
            name,
            "controlplane",
            keys.breaker_events,
        )
    except redis.RedisError as exc:
        REDIS_ERRORS.labels("reset").inc()
        logger.warning("Could not reset breaker %s in Redis: %s", name, exc)


def do_purge_cache(environment: Environment, name: str, actor: Actor, reason: str) -> Policy:
    """Invalidate every entry of a cache at once by bumping its generation."""
    reason = f"Purge: {reason}" if reason.strip() else ""
    errors = _target_errors("cache", ("cache",), name, reason)
    if errors:
        raise PolicyError(errors)
    policy = Policy.objects.filter(
        environment=environment, kind="cache", name=name, deleted=False
    ).first()
    if policy is None:
        raise PolicyError({"name": [f"No cache policy named {name!r} in {environment.name}."]})
    return do_update_policy(
        policy, {"generation": int(policy.spec["generation"]) + 1}, actor, reason
    )


def do_set_override(
    environment: Environment,
    kind: str,
    name: str,
    state: str,
    actor: Actor,
    reason: str,
    expires_at: datetime | None = None,
) -> Override:
    """Force a breaker or limiter into ``state`` on every instance, until lifted or expired."""
    errors = _target_errors(kind, tuple(OVERRIDE_STATES), name, reason)
    if kind in OVERRIDE_STATES and state not in OVERRIDE_STATES[kind]:
        errors["state"] = [f"Choose one of: {', '.join(OVERRIDE_STATES[kind])}."]
    if expires_at is not None and expires_at <= timezone.now():
        errors["expires_at"] = ["Must be in the future."]
    if errors:
        raise PolicyError(errors)
    before = current_override(environment, kind, name)
    return _write(
        environment,
        kind,
        name,
        state,
        actor,
        reason,
        expires_at,
        "override.set",
        before.state if before else None,
    )


def do_clear_override(
    environment: Environment, kind: str, name: str, actor: Actor, reason: str
) -> Override | None:
    """Lift the override of a policy, saying why; returns None if none was in force."""
    errors = _target_errors(kind, tuple(OVERRIDE_STATES), name, reason)
    if errors:
        raise PolicyError(errors)
    before = current_override(environment, kind, name)
    if before is None:
        return None
    return _write(environment, kind, name, "", actor, reason, None, "override.clear", before.state)


def expire_overrides(now: datetime | None = None) -> list[Override]:
    """Lift (and audit) every override whose expiry has passed."""
    now = now or timezone.now()
    lifted = []
    expired = Override.objects.filter(expires_at__lte=now).exclude(state="")
    for override in expired.select_related("environment"):
        environment = override.environment
        latest = (
            Override.objects.filter(environment=environment, kind=override.kind, name=override.name)
            .order_by("-revision")
            .first()
        )
        if latest is not None and latest.pk == override.pk:
            lifted.append(
                _write(
                    environment,
                    override.kind,
                    override.name,
                    "",
                    Actor.system("expiry"),
                    f"Expired (set by {override.actor_name}: {override.reason})",
                    None,
                    "override.expire",
                    override.state,
                )
            )
    return lifted
