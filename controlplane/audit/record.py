"""Writing the audit log: every action function calls ``record`` inside its transaction."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any, Protocol

from django.contrib.auth.models import AbstractBaseUser
from django.dispatch import Signal
from django.utils.crypto import salted_hmac

from controlplane.audit.models import AuditEntry
from controlplane.protocol.schema import changed_fields, is_secret

FINGERPRINT_SALT = "controlplane.audit.record.fingerprint"

# Sent by ``record`` with ``entry=`` right after writing it, inside the change's
# transaction: a receiver's writes (the webhooks' outbox) commit or roll back with it.
# ``facts=`` carries what the caller knows of the object after the change and the
# entry does not say (a policy's new version), so that receivers need not query it.
recorded = Signal()


class Actor(Protocol):
    """Who made a change, as the log records it: ``controlplane.accounts.actors.Actor``.

    Written as a protocol so that the log imports nothing of ``accounts``, whose
    actions (tokens, users, the login throttle) record here.
    """

    @property
    def name(self) -> str: ...
    @property
    def user(self) -> AbstractBaseUser | None: ...
    @property
    def token(self) -> str: ...
    @property
    def ip(self) -> str | None: ...
    @property
    def correlation_id(self) -> uuid.UUID | None: ...


def fingerprint(value: Any) -> str:
    """Stand-in for a secret value: tells changes apart without revealing the value.

    A keyed HMAC (the server's ``SECRET_KEY``): an unkeyed digest of a short secret,
    a 6-digit PIN say, is reversed by trying every candidate, and viewers see these.
    """
    text = json.dumps(value, sort_keys=True)
    digest = salted_hmac(FINGERPRINT_SALT, text, algorithm="sha256").hexdigest()
    return f"secret:{digest[:16]}"


def field_changes(
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    *,
    secret_fields: tuple[str, ...] = (),
) -> dict[str, list[Any]]:
    """Return ``{field: [before, after]}`` for every field that differs."""
    before = before or {}
    after = after or {}
    changes: dict[str, list[Any]] = {}
    for name in changed_fields(before, after):
        old, new = before.get(name), after.get(name)
        if name in secret_fields:
            old = None if old is None else fingerprint(old)
            new = None if new is None else fingerprint(new)
        changes[name] = [old, new]
    return changes


def spec_changes(
    kind: str, before: Mapping[str, Any] | None, after: Mapping[str, Any] | None
) -> dict[str, list[Any]]:
    """``field_changes`` of two versions of a spec: a secret in either version hides
    the value of both behind fingerprints (a delete of a secret hides the old value)."""
    secret = is_secret(kind, before) or is_secret(kind, after)
    return field_changes(before, after, secret_fields=("value",) if secret else ())


def record(
    actor: Actor,
    action: str,
    *,
    environment: str = "",
    kind: str = "",
    name: str = "",
    reason: str = "",
    changes: Mapping[str, list[Any]] | None = None,
    correlation_id: uuid.UUID | None = None,
    facts: Mapping[str, Any] | None = None,
) -> AuditEntry:
    entry = AuditEntry.objects.create(
        actor_name=actor.name,
        actor_user=actor.user,  # type: ignore[misc]
        actor_token=actor.token,
        source_ip=actor.ip,
        action=action,
        environment=environment,
        object_kind=kind,
        object_name=name,
        reason=reason,
        changes=dict(changes or {}),
        correlation_id=correlation_id or actor.correlation_id,
    )
    recorded.send(sender=AuditEntry, entry=entry, facts=dict(facts or {}))
    return entry
