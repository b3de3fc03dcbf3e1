"""Adding, removing and switching alert rules: validated, audited, each in one transaction.

The pages (and the API, when it has them) go through these.
"""

from __future__ import annotations

import math
from typing import Any

from django.db import IntegrityError, transaction

from controlplane.accounts.actors import Actor
from controlplane.alerts.evaluator import clear_states
from controlplane.alerts.models import ANY, AlertRule
from controlplane.audit.record import record
from controlplane.policies.models import Environment
from controlplane.protocol.keys import NAME_PATTERN

NAME_MAX = AlertRule._meta.get_field("name").max_length or 100
MAX_MINUTES = 7 * 24 * 60.0  # a week: longer than any incident worth a page
KINDS = AlertRule.Kind.values


class AlertRuleError(Exception):
    """What is wrong with a rule's fields: ``{field: [message, ...]}``."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        self.errors = errors
        super().__init__(
            "; ".join(f"{field}: {' '.join(messages)}" for field, messages in errors.items())
        )


def _number(value: Any) -> float | None:
    """``value`` as a finite number, or None."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def rule_errors(
    name: str, kind: str, target: str, minutes: Any, percent: Any
) -> dict[str, list[str]]:
    """Every problem of a new rule's fields, by field."""
    errors: dict[str, list[str]] = {}
    if not name.strip() or len(name) > NAME_MAX:
        errors["name"] = [f"Enter a name of 1 to {NAME_MAX} characters."]
    if kind not in KINDS:
        errors["kind"] = [f"Choose one of: {', '.join(KINDS)}."]
    target = target.strip()
    if kind == AlertRule.Kind.INSTANCES_BEHIND and target not in ("", ANY):
        errors["target"] = ["An instances rule watches every instance: leave the target blank."]
    elif target not in ("", ANY) and not NAME_PATTERN.match(target):
        errors["target"] = [
            "Enter a breaker's or a rate limiter's name (letters, digits, _ . -, up to 100), "
            "or * (or nothing) for any."
        ]
    number = _number(minutes)
    if number is None or not 0 <= number <= MAX_MINUTES:
        errors["minutes"] = [f"Enter a number of minutes from 0 to {MAX_MINUTES:g}."]
    if kind == AlertRule.Kind.LIMITER_REJECTING:
        share = _number(percent)
        if share is None or not 0 <= share < 100:
            errors["percent"] = ["Enter the share of calls rejected, from 0 to under 100 (%)."]
    elif percent not in (None, ""):
        errors["percent"] = ["Only a rate limiter rule takes a percentage: leave it blank."]
    return errors


def do_create_rule(
    environment: Environment,
    name: str,
    kind: str,
    actor: Actor,
    *,
    target: str = "",
    minutes: Any = 5,
    percent: Any = None,
) -> AlertRule:
    """Add a rule to ``environment``; raises AlertRuleError naming each bad field."""
    errors = rule_errors(name, kind, target, minutes, percent)
    if errors:
        raise AlertRuleError(errors)
    target = target.strip() or ANY
    share = float(percent) if kind == AlertRule.Kind.LIMITER_REJECTING else None
    try:
        with transaction.atomic(durable=True):
            rule = AlertRule.objects.create(
                environment=environment,
                name=name.strip(),
                kind=kind,
                target=target,
                minutes=float(minutes),
                percent=share,
                created_by_name=actor.name,
            )
            record(
                actor,
                "alert_rule.create",
                environment=environment.name,
                kind="alert_rule",
                name=rule.name,
                changes={
                    "kind": [None, kind],
                    "target": [None, target],
                    "minutes": [None, rule.minutes],
                    "percent": [None, share],
                },
            )
            return rule
    except IntegrityError:
        raise AlertRuleError(
            {"name": [f"{environment.name} already has an alert rule {name.strip()!r}."]}
        ) from None


def do_delete_rule(rule: AlertRule, actor: Actor) -> None:
    """Remove a rule and where it stood (a firing alert ends without a resolved event)."""
    with transaction.atomic(durable=True):
        record(
            actor,
            "alert_rule.delete",
            environment=rule.environment.name,
            kind="alert_rule",
            name=rule.name,
            changes={"kind": [rule.kind, None], "target": [rule.target, None]},
        )
        rule.delete()


def do_set_rule_enabled(rule: AlertRule, enabled: bool, actor: Actor) -> bool:
    """Switch a rule on or off; False (nothing written) if it already was.

    A rule switched off forgets where it stood: it no longer shows as firing, and
    waits its full minutes afresh once back on.
    """
    with transaction.atomic(durable=True):
        changed = AlertRule.objects.filter(pk=rule.pk, enabled=not enabled).update(enabled=enabled)
        if not changed:
            return False
        if not enabled:
            clear_states(rule)
        record(
            actor,
            "alert_rule.enable" if enabled else "alert_rule.disable",
            environment=rule.environment.name,
            kind="alert_rule",
            name=rule.name,
            changes={"enabled": [not enabled, enabled]},
        )
    rule.enabled = enabled
    return True
