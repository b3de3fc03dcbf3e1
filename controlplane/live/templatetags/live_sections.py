"""The live section of a policy's page, rendered by the live app for the policies app.

The policy page belongs to ``policies``, its live figures to ``live``, which
depends on ``policies``. A template tag lets the page show them without the
policies app importing live (the apps' order: docs/architecture.md).
"""

from __future__ import annotations

from typing import Any

from django import template

from controlplane.live.widgets import policy_live
from controlplane.policies.models import Policy

register = template.Library()

LIVE_KINDS = ("breaker", "rate_limit", "cache")


@register.inclusion_tag("live/_policy_section.html", takes_context=True)
def policy_live_section(context: template.Context, policy: Policy) -> dict[str, Any]:
    """Live figures, per-instance states, the override form and the chart of ``policy``."""
    live = policy_live(policy) if policy.kind in LIVE_KINDS else None
    values: dict[str, Any] = {str(name): value for name, value in context.flatten().items()}
    return {**values, "live": live}
