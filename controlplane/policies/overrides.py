"""Manual overrides: set, lift, reset, purge and expire, each audited and published to the fleet.

An override is kept apart from the policy it overrides (``Override``, one row
per set or lift). Each ``do_*`` action runs in one durable transaction: its
rows and audit entries commit together, and what leaves the database (the
Redis publish, a breaker reset, the announcement to open dashboards) leaves
only once they have committed. Open dashboards hear of a change through the
``row_changed`` signal (``policies.signals``), which the live app answers.
"""

from __future__ import annotations

import logging
from datetime import datetime
from functools import partial
from typing import NamedTuple

import redis
from django.db import transaction
from django.utils import timezone

from controlplane.accounts.actors import Actor
from controlplane.audit.record import record
from controlplane.ops.metrics import PUBLISHES, REDIS_ERRORS
from controlplane.policies.actions import next_revision, update_policy
from controlplane.policies.models import Environment, Override, Policy, check_reason
from controlplane.policies.publish import write_document
from controlplane.policies.signals import announce_row
from controlplane.protocol import scripts
from controlplane.protocol.documents import OVERRIDE_STATES, SECTION_OVERRIDES, OverrideDocument
from controlplane.protocol.keys import KeyLayout
from controlplane.protocol.schema import PolicyError, validate_name
from controlplane.redis_connection import get_redis, redis_answers

logger = logging.getLogger(__name__)


class RedisUnavailableError(Exception):
    """An action that only Redis can carry out was refused: Redis does not answer."""


class OperatorAction(NamedTuple):
    """A choice of the override panel: what it sets (an override state, or a verb) and says."""

    action: str
    does: str  # a state of OVERRIDE_STATES[kind], or "reset" / "purge"
    label: str
    explains: str  # what it does, in words, next to the label

    @property
    def once(self) -> bool:
        """Done once, now (a reset, a purge), rather than a state held until lifted."""
        return self.does in ONE_OFF


ONE_OFF = ("reset", "purge")

# Every action an operator can take on a policy, by kind, in the order the panel offers them.
OPERATOR_ACTIONS: dict[str, tuple[OperatorAction, ...]] = {
    "breaker": (
        OperatorAction("trip", "forced_open", "Force open", "rejects every call, as if tripped"),
        OperatorAction("force_closed", "forced_closed", "Force closed", "lets every call through"),
        OperatorAction("disable", "disabled", "Disable", "takes the breaker out of the call path"),
        OperatorAction(
            "reset", "reset", "Reset to closed", "clears its counters now; lifts any override"
        ),
    ),
    "rate_limit": (
        OperatorAction("block_all", "block_all", "Block all", "rejects every request"),
        OperatorAction("bypass", "bypass", "Bypass", "admits every request, no limit"),
    ),
    "cache": (
        OperatorAction("purge", "purge", "Purge", "drops every entry now (a new generation)"),
    ),
}


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
    return (
        Override.objects.filter(environment=environment, kind=kind, name=name)
        .in_force(timezone.now())
        .first()
    )


def newest_overrides(environment: Environment) -> list[Override]:
    """The newest row of every overridden policy (lifted ones included), oldest first."""
    return list(Override.objects.filter(environment=environment).newest().order_by("revision"))


def active_overrides(environment: Environment) -> dict[str, Override]:
    """The overrides in force, by ``kind:name``."""
    in_force = Override.objects.filter(environment=environment).in_force(timezone.now())
    return {o.field: o for o in in_force.order_by("revision")}


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
    """Save one set or lift and its audit entry in the caller's transaction; publish on commit.

    ``action`` names the operator's action in the audit log: a reset's lift is
    audited as the reset itself (``override.reset``), one row for one action.
    """
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
    transaction.on_commit(partial(announce_row, environment.name, f"{kind}:{name}"))
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
    with transaction.atomic(durable=True):
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
    with transaction.atomic(durable=True):
        before = current_override(environment, kind, name)
        if before is None:
            return None
        return _write(
            environment, kind, name, "", actor, reason, None, "override.clear", before.state
        )


def do_reset_breaker(
    environment: Environment, name: str, actor: Actor, reason: str
) -> Override | None:
    """Back to closed on every instance, windows emptied; lifts any override first.

    One action, one audit entry (``override.reset``, with the lifted state if
    an override was in force), in one transaction; once it commits the lift is
    published, then the breaker's shared state is reset. A reset is written to
    Redis only, never stored for the reconciler to replay, so it is refused,
    with nothing lifted or audited, while Redis does not answer. Returns the
    override it lifted, if any.
    """
    errors = _target_errors("breaker", ("breaker",), name, reason)
    if errors:
        raise PolicyError(errors)
    if not redis_answers():
        raise RedisUnavailableError(
            "Redis cannot be reached, and a reset exists only there: try again when it answers."
        )
    with transaction.atomic(durable=True):
        before = current_override(environment, "breaker", name)
        if before is not None:
            # The lift is part of the reset: its audit entry is the reset's, not a second row.
            _write(
                environment,
                "breaker",
                name,
                "",
                actor,
                reason,
                None,
                "override.reset",
                before.state,
            )
        else:
            record(
                actor,
                "override.reset",
                environment=environment.name,
                kind="breaker",
                name=name,
                reason=reason,
            )
        transaction.on_commit(partial(_write_reset, environment.keys(), name))
        transaction.on_commit(partial(announce_row, environment.name, f"breaker:{name}"))
    return before


def _write_reset(keys: KeyLayout, name: str) -> None:
    try:
        scripts.run(
            get_redis(),
            scripts.load("breaker_reset"),
            [keys.breakers, keys.breaker_probes(name)],
            [name, "controlplane", keys.breaker_events],
        )
    except redis.RedisError as exc:
        REDIS_ERRORS.labels("reset").inc()
        logger.warning("Could not reset breaker %s in Redis: %s", name, exc)


def do_purge_cache(environment: Environment, name: str, actor: Actor, reason: str) -> Policy:
    """Invalidate every entry of a cache at once by bumping its generation.

    A new version of the policy, audited as ``policy.purge`` (not a plain update).
    """
    reason = f"Purge: {reason}" if reason.strip() else ""
    errors = _target_errors("cache", ("cache",), name, reason)
    if errors:
        raise PolicyError(errors)
    with transaction.atomic(durable=True):
        policy = Policy.objects.filter(
            environment=environment, kind="cache", name=name, deleted=False
        ).first()
        if policy is None:
            raise PolicyError({"name": [f"No cache policy named {name!r} in {environment.name}."]})
        return update_policy(
            policy,
            {"generation": int(policy.spec["generation"]) + 1},
            actor,
            reason,
            audit_action="policy.purge",
        )


def expire_overrides(now: datetime | None = None) -> list[Override]:
    """Lift (and audit) every override whose expiry has passed: one transaction each."""
    now = now or timezone.now()
    lifted = []
    for due in Override.objects.expired(now).select_related("environment"):
        with transaction.atomic(durable=True):
            # Still the newest row of its policy: nobody lifted or set it since the query.
            if not Override.objects.filter(pk=due.pk).expired(now).exists():
                continue
            lifted.append(
                _write(
                    due.environment,
                    due.kind,
                    due.name,
                    "",
                    Actor.system("expiry"),
                    f"Expired (set by {due.actor_name}: {due.reason})",
                    None,
                    "override.expire",
                    due.state,
                )
            )
    return lifted
