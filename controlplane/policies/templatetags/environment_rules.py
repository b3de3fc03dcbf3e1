"""``{{ environment|rules_summary }}``: an environment's rules for changes in one line,
for the policy list's heading and the environment's settings page."""

from __future__ import annotations

from django import template

from controlplane.policies.models import Environment

register = template.Library()


@register.filter
def rules_summary(environment: Environment) -> str:
    """``Changes need 2 approvals (by an admin); a reason is required``; "" without rules."""
    parts = []
    count = environment.approvals_required
    if count:
        approver = "an admin" if environment.approver_role == "admin" else "an editor or admin"
        parts.append(f"changes need {count} approval{'' if count == 1 else 's'} (by {approver})")
    if environment.require_reason:
        parts.append("a reason is required")
    text = "; ".join(parts)
    return text[:1].upper() + text[1:]
