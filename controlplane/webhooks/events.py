"""Events: written to the outbox in the transaction of the change that causes them.

``emit`` is the one way in. Audited changes become events through the audit
log's ``recorded`` signal (``emit_for_entry``), so the apps that make the
changes need not know webhooks exist.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.db import transaction

from controlplane.audit.models import AuditEntry
from controlplane.webhooks.models import Delivery, Event, Webhook

TEST = "test"

# Audit action -> event type. Several actions are one event to a receiver: a policy
# adopted is created, a cache purge is a change of its policy, a breaker reset lifts
# its override (when it had one).
AUDITED_EVENTS = {
    "policy.create": "policy.created",
    "policy.adopt": "policy.created",
    "policy.update": "policy.changed",
    "policy.purge": "policy.changed",
    "policy.delete": "policy.deleted",
    "policy.rollback": "policy.rolled_back",
    "override.set": "override.placed",
    "override.clear": "override.lifted",
    "override.reset": "override.lifted",
    "override.expire": "override.expired",
    "change_request.open": "change_request.opened",
    "change_request.approved": "change_request.approved",
    "change_request.reject": "change_request.rejected",
    "change_request.apply": "change_request.applied",
}
# Events no person makes, found by the workers: the fleet's breaker state changing
# (controlplane.alerts), an alert rule firing or resolving (controlplane.alerts), and
# drift the reconciler repaired (controlplane.policies.reconcile). Their payloads are
# documented in docs/webhooks.md.
BREAKER_OPENED = "breaker.opened"
BREAKER_CLOSED = "breaker.closed"
ALERT_FIRING = "alert.firing"
ALERT_RESOLVED = "alert.resolved"
DRIFT_FOUND = "drift.found"
SYSTEM_EVENTS = (BREAKER_OPENED, BREAKER_CLOSED, ALERT_FIRING, ALERT_RESOLVED, DRIFT_FOUND)
EVENT_TYPES = (*dict.fromkeys(AUDITED_EVENTS.values()), *SYSTEM_EVENTS, TEST)


class OutsideTransactionError(RuntimeError):
    """``emit`` was called outside the change's transaction: the event could be lost."""


def emit(environment: str, type: str, payload: dict[str, Any]) -> Event | None:
    """Write an event and one pending delivery per enabled webhook of ``environment``
    that wants ``type``; None (and nothing written) when no webhook wants it.

    Must run inside the transaction of the change that causes the event, so the
    event exists if and only if the change does. It does no network I/O: the
    delivery worker sends it after the commit.
    """
    if not transaction.get_connection().in_atomic_block:
        raise OutsideTransactionError(
            f"emit({type!r}) must run inside the transaction of the change it reports"
        )
    wanting = webhooks_wanting(environment, type)
    return emit_to(wanting, environment, type, payload) if wanting else None


def webhooks_wanting(environment: str, type: str) -> list[Webhook]:
    """The enabled webhooks of ``environment`` that want events of ``type``."""
    webhooks = Webhook.objects.filter(environment=environment, enabled=True)
    return [webhook for webhook in webhooks if webhook.wants(type)]


def emit_to(to: list[Webhook], environment: str, type: str, payload: dict[str, Any]) -> Event:
    """Write an event and its pending delivery to each of ``to``, whatever they want."""
    event = Event.objects.create(environment=environment, type=type, payload=payload)
    Delivery.objects.bulk_create(
        Delivery(webhook=webhook, event=event, next_attempt_at=event.created_at) for webhook in to
    )
    return event


def event_type(entry: AuditEntry) -> str | None:
    """The type of event an audit entry makes, or None if it makes none."""
    type = AUDITED_EVENTS.get(entry.action)
    if type is None or not entry.environment:
        return None
    if entry.action == "override.reset" and "state" not in entry.changes:
        return None  # a reset of a breaker that had no override lifts nothing
    return type


def event_payload(
    entry: AuditEntry, type: str, facts: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The data of the event an audit entry makes (``facts``: what its caller added).

    The diff is the entry's changes, where secret values already are fingerprints.
    """
    facts = facts or {}
    payload: dict[str, Any] = {
        "kind": entry.object_kind,
        "name": entry.object_name,
        "actor": entry.actor_name,
        "reason": entry.reason,
        "diff": entry.changes,
    }
    if type.startswith("policy."):
        version = facts.get("version")
        payload["version"] = version if isinstance(version, int) else _policy_version(entry)
    elif type.startswith("override."):
        payload["state"] = _override_state(entry)
        if entry.action == "override.reset":
            payload["reset"] = True
    elif type.startswith("change_request."):
        request = entry.changes.get("request")
        payload["request"] = request[1] if isinstance(request, list) else None
    return payload


def emit_for_entry(sender: object, entry: AuditEntry, **kwargs: Any) -> Event | None:
    """The ``recorded`` signal's receiver: the audited change's event, in its transaction.

    Costs one query when no webhook of the environment wants the event. An entry
    recorded outside a transaction (autocommit) already stands alone, so its event
    is written right after it, without ``emit``'s refusal.
    """
    type = event_type(entry)
    if type is None:
        return None
    wanting = webhooks_wanting(entry.environment, type)
    if not wanting:
        return None
    payload = event_payload(entry, type, kwargs.get("facts"))
    return emit_to(wanting, entry.environment, type, payload)


def _policy_version(entry: AuditEntry) -> int | None:
    """The policy's version after the change (saved before it is audited).

    Looked up by app label, not imported: the policies app imports this one.
    """
    policies = apps.get_model("policies", "Policy")
    version: int | None = (
        policies.objects.filter(
            environment__name=entry.environment, kind=entry.object_kind, name=entry.object_name
        )
        .values_list("version", flat=True)
        .first()
    )
    return version


def _override_state(entry: AuditEntry) -> str | None:
    """The state placed (or, for a lift, the one lifted)."""
    state = entry.changes.get("state")
    if not isinstance(state, list) or len(state) != 2:
        return None
    before, after = state
    value = after if entry.action == "override.set" else before
    return str(value) if value else None
