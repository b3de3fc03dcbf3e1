"""The alert rules API: an environment's admins list, add, switch and remove its rules,
and read the fleet's breaker states (docs/alerts.md).

A router of its own, added to the API in ``views``: the rules go through the same
actions as the pages (validated, audited).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from django.http import Http404, HttpRequest
from ninja import Router, Schema, Status
from pydantic import Field

from controlplane.accounts.roles import Role
from controlplane.alerts.actions import (
    MAX_MINUTES,
    AlertRuleError,
    do_create_rule,
    do_delete_rule,
    do_set_rule_enabled,
)
from controlplane.alerts.models import AlertRule, AlertState, FleetBreaker
from controlplane.api.auth import actor_for, require
from controlplane.api.schemas import MAX_ID, DetailOut, ErrorOut, Name, Text
from controlplane.policies.access import environment_for

router = Router(tags=["alerts"])

RuleId = Annotated[int, Field(ge=1, le=MAX_ID)]
ERRORS: dict[int, Any] = {401: DetailOut, 403: DetailOut, 404: DetailOut, 422: ErrorOut}
Kind = Literal["breaker_open", "limiter_rejecting", "instances_behind"]


class AlertRuleIn(Schema):
    name: Annotated[Text, Field(min_length=1, max_length=100)]
    kind: Kind
    target: Annotated[Text, Field(max_length=200)] = Field(
        default="",
        description="A breaker's or a rate limiter's name; empty or `*`: any. "
        "Empty for instances_behind.",
    )
    minutes: float = Field(
        default=5.0,
        ge=0,
        le=MAX_MINUTES,
        description="How long the condition must hold before the alert fires; 0: at once.",
    )
    percent: float | None = Field(
        default=None,
        ge=0,
        lt=100,
        description="limiter_rejecting only: the share of decisions rejected, in %.",
    )


class AlertRuleEnabledIn(Schema):
    enabled: bool


class AlertStateOut(Schema):
    target: str
    pending_since: datetime | None
    firing_since: datetime | None
    resolved_at: datetime | None
    value: float | None
    summary: str


class AlertRuleOut(Schema):
    id: int
    environment: str
    name: str
    kind: Kind
    target: str
    minutes: float
    percent: float | None
    enabled: bool
    description: str = Field(description="The rule in a sentence, as its page shows it.")
    created_at: datetime
    created_by: str
    states: list[AlertStateOut] = Field(description="Where the rule stands, per target.")


class FleetBreakerOut(Schema):
    name: str
    state: Literal["open", "closed"]
    since: datetime
    instances_open: int
    instances_reporting: int


def _rule_out(rule: AlertRule, states: list[AlertState]) -> dict[str, Any]:
    return {
        "id": rule.pk,
        "environment": rule.environment.name,
        "name": rule.name,
        "kind": rule.kind,
        "target": rule.target,
        "minutes": rule.minutes,
        "percent": rule.percent,
        "enabled": rule.enabled,
        "description": rule.describe(),
        "created_at": rule.created_at,
        "created_by": rule.created_by_name,
        "states": [
            {
                "target": state.target,
                "pending_since": state.pending_since,
                "firing_since": state.firing_since,
                "resolved_at": state.resolved_at,
                "value": state.value,
                "summary": state.summary,
            }
            for state in states
        ],
    }


def _rule_for(request: HttpRequest, environment: str, rule_id: int) -> tuple[Any, AlertRule]:
    """The token (an admin in ``environment``) and its rule ``rule_id``, or 403/404."""
    token = require(request, Role.VIEWER)
    env = environment_for(token.grants(), Role.ADMIN, environment)
    rule = AlertRule.objects.select_related("environment").filter(pk=rule_id, environment=env)
    found = rule.first()
    if found is None:
        raise Http404(f"{env.name} has no alert rule {rule_id}.")
    return token, found


@router.get("/environments/{environment}/alert-rules", response={200: list[AlertRuleOut], **ERRORS})
def list_alert_rules(request: HttpRequest, environment: Name) -> Any:
    """The environment's alert rules, each with where it stands per target."""
    env = environment_for(require(request, Role.VIEWER).grants(), Role.ADMIN, environment)
    rules = list(AlertRule.objects.filter(environment=env).select_related("environment"))
    states: dict[int, list[AlertState]] = {rule.pk: [] for rule in rules}
    for state in AlertState.objects.filter(rule__in=rules).order_by("target"):
        states[state.rule_id].append(state)
    return [_rule_out(rule, states[rule.pk]) for rule in rules]


@router.post("/environments/{environment}/alert-rules", response={201: AlertRuleOut, **ERRORS})
def create_alert_rule(request: HttpRequest, environment: Name, payload: AlertRuleIn) -> Any:
    """Add an alert rule. Audited as `alert_rule.create`; a bad field is a 422 naming it."""
    token = require(request, Role.VIEWER)
    env = environment_for(token.grants(), Role.ADMIN, environment)
    try:
        rule = do_create_rule(
            env,
            payload.name,
            payload.kind,
            actor_for(request, token),
            target=payload.target,
            minutes=payload.minutes,
            percent=payload.percent,
        )
    except AlertRuleError as exc:
        return Status(422, {"errors": exc.errors})
    return Status(201, _rule_out(rule, []))


@router.delete("/environments/{environment}/alert-rules/{rule_id}", response={204: None, **ERRORS})
def delete_alert_rule(request: HttpRequest, environment: Name, rule_id: RuleId) -> Any:
    """Remove a rule (a firing alert ends without `alert.resolved`). Audited."""
    token, rule = _rule_for(request, environment, rule_id)
    do_delete_rule(rule, actor_for(request, token))
    return Status(204, None)


@router.put(
    "/environments/{environment}/alert-rules/{rule_id}/enabled",
    response={200: AlertRuleOut, **ERRORS},
)
def set_alert_rule_enabled(
    request: HttpRequest, environment: Name, rule_id: RuleId, payload: AlertRuleEnabledIn
) -> Any:
    """Switch a rule on or off; off forgets where it stood. Audited when it changes."""
    token, rule = _rule_for(request, environment, rule_id)
    do_set_rule_enabled(rule, payload.enabled, actor_for(request, token))
    return _rule_out(rule, list(rule.states.order_by("target")))


@router.get(
    "/environments/{environment}/fleet-breakers", response={200: list[FleetBreakerOut], **ERRORS}
)
def list_fleet_breakers(request: HttpRequest, environment: Name) -> Any:
    """Each breaker's state across the fleet, as the alert evaluator last stored it."""
    env = environment_for(require(request, Role.VIEWER).grants(), Role.VIEWER, environment)
    return list(FleetBreaker.objects.filter(environment=env).order_by("name"))
