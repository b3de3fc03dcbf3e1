"""Changes to an environment itself: its description and its rules for changes.

``policies/actions.py`` creates environments and changes policies; the rules an
admin sets (a reason required, approvals, who approves) change here, audited as
``environment.update`` with each field before and after.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from controlplane.accounts.actors import Actor
from controlplane.audit.record import field_changes, record
from controlplane.policies.models import Environment, check_length, check_reason
from controlplane.protocol.schema import InvalidValue, PolicyError, check_text

# What an admin may change, and the most approvals a change may wait for.
EDITABLE = ("description", "require_reason", "approvals_required", "approver_role")
MAX_APPROVALS = 10
APPROVER_ROLES = ("editor", "admin")


def _clean(field: str, value: Any) -> Any:
    """``value`` of ``field`` as stored, or ``InvalidValue`` saying why not."""
    if field == "description":
        if not isinstance(value, str):
            raise InvalidValue("Enter text.")
        check_length(value.strip(), Environment, "description")
        return check_text(value.strip())
    if field == "require_reason":
        if not isinstance(value, bool):
            raise InvalidValue("Enter true or false.")
        return value
    if field == "approvals_required":
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidValue("Enter a whole number.")
        if not 0 <= value <= MAX_APPROVALS:
            raise InvalidValue(f"Enter 0 (no approval) to {MAX_APPROVALS}.")
        return value
    if value not in APPROVER_ROLES:  # approver_role
        raise InvalidValue(f"Choose one of: {', '.join(APPROVER_ROLES)}.")
    return value


def _cleaned(changes: dict[str, Any]) -> dict[str, Any]:
    errors: dict[str, list[str]] = {}
    cleaned: dict[str, Any] = {}
    for field, value in changes.items():
        if field not in EDITABLE:
            errors[field] = ["This cannot be changed here."]
            continue
        try:
            cleaned[field] = _clean(field, value)
        except InvalidValue as exc:
            errors[field] = [str(exc)]
        except PolicyError as exc:  # too long, from check_length
            errors.update(exc.errors)
    if errors:
        raise PolicyError(errors)
    return cleaned


def do_update_environment(
    environment: Environment, actor: Actor, reason: str = "", **changes: Any
) -> Environment:
    """Change some of ``EDITABLE`` (the others keep their value); audit what changed."""
    check_reason(reason)
    cleaned = _cleaned(changes)
    with transaction.atomic(durable=True):
        locked = Environment.objects.select_for_update().get(pk=environment.pk)
        before = {field: getattr(locked, field) for field in cleaned}
        diff = field_changes(before, cleaned)
        if diff:
            for field, value in cleaned.items():
                setattr(locked, field, value)
            locked.save(update_fields=list(cleaned))
            record(
                actor, "environment.update", environment=locked.name, reason=reason, changes=diff
            )
    for field in cleaned:
        setattr(environment, field, getattr(locked, field))
    return locked
