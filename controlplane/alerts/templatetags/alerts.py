"""``{% load alerts %}``: the firing alerts, for the home page (which belongs to ``live``).

The live app may not import this one (alerts reads live state), so the home
page's template asks for the section through this tag.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from django import template

from controlplane.accounts.roles import grants_of
from controlplane.alerts.models import AlertRule, AlertState
from controlplane.live.home import live_row_url
from controlplane.policies.access import environments_for

register = template.Library()

MAX_SHOWN = 50


@dataclass(frozen=True)
class FiringAlert:
    environment: str
    rule: str
    summary: str
    since: datetime
    url: str  # the breaker's or limiter's row on the live overview, or the instances


def alert_url(environment: str, kind: str, target: str) -> str:
    if kind == AlertRule.Kind.BREAKER_OPEN:
        return live_row_url(environment, "breaker", target)
    if kind == AlertRule.Kind.LIMITER_REJECTING:
        return live_row_url(environment, "rate_limit", target)
    return f"/e/{quote(environment)}/instances/"


def firing_alerts(user: Any) -> list[FiringAlert]:
    """The alerts firing now in the environments ``user`` may view, the oldest first."""
    names = [environment.name for environment in environments_for(grants_of(user))]
    if not names:
        return []
    states = (
        AlertState.objects.filter(
            firing_since__isnull=False,
            rule__enabled=True,
            rule__environment__name__in=names,
        )
        .select_related("rule__environment")
        .order_by("firing_since")[:MAX_SHOWN]
    )
    return [
        FiringAlert(
            state.rule.environment.name,
            state.rule.name,
            state.summary or f"{state.rule.describe()} ({state.target})",
            state.firing_since,
            alert_url(state.rule.environment.name, state.rule.kind, state.target),
        )
        for state in states
        if state.firing_since is not None
    ]


@register.inclusion_tag("alerts/_firing.html", takes_context=True)
def firing_alerts_section(context: template.Context) -> dict[str, Any]:
    """The home page's top section: every alert firing that the user may see."""
    request = context.get("request")
    user = getattr(request, "user", None)
    return {"alerts": firing_alerts(user) if user is not None else []}
