"""Manual overrides: set, lift and expire; each one audited and published to the fleet."""

from __future__ import annotations

import logging
from datetime import datetime
from functools import partial

import redis
from django.db import transaction
from django.utils import timezone

from controlplane.accounts.actors import Actor
from controlplane.audit.record import record
from controlplane.live.models import Override
from controlplane.metrics import PUBLISHES, REDIS_ERRORS
from controlplane.policies.actions import next_revision
from controlplane.policies.models import Environment
from controlplane.policies.publish import write_document
from controlplane.protocol.documents import (
    OVERRIDE_STATES,
    SECTION_OVERRIDES,
    OverrideDocument,
)
from controlplane.protocol.keys import KeyLayout
from controlplane.protocol.schema import PolicyError, validate_name

logger = logging.getLogger(__name__)


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
    return override


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
    errors: dict[str, list[str]] = {}
    if kind not in OVERRIDE_STATES:
        errors["kind"] = [f"Overrides exist for: {', '.join(OVERRIDE_STATES)}."]
    elif state not in OVERRIDE_STATES[kind]:
        errors["state"] = [f"Choose one of: {', '.join(OVERRIDE_STATES[kind])}."]
    try:
        validate_name(name)
    except PolicyError as exc:
        errors.update(exc.errors)
    if not reason.strip():
        errors["reason"] = ["Say why: the reason is shown to everyone and kept in the audit log."]
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
    environment: Environment, kind: str, name: str, actor: Actor, reason: str = ""
) -> Override | None:
    """Lift the override of a policy; returns None if none was in force."""
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
