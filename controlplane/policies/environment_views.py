"""An environment's own page of settings: its description and its rules for changes."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from controlplane.accounts.actors import Actor
from controlplane.accounts.roles import Role, grants_of, role_required
from controlplane.policies.access import environment_for
from controlplane.policies.environment_actions import (
    APPROVER_ROLES,
    EDITABLE,
    MAX_APPROVALS,
    do_update_environment,
)
from controlplane.protocol.schema import PolicyError


class EnvironmentRulesForm(forms.Form):
    description = forms.CharField(max_length=300, required=False)
    require_reason = forms.BooleanField(
        required=False, label="A reason is required", help_text="Every change must say why."
    )
    approvals_required = forms.IntegerField(
        min_value=0,
        max_value=MAX_APPROVALS,
        label="Changes need approval by",
        help_text="How many other people must approve a change before it applies "
        "(0: changes apply at once).",
    )
    approver_role = forms.ChoiceField(
        choices=[(role, role) for role in APPROVER_ROLES],
        label="Who may approve",
        help_text="The least role, in this environment, of those who may approve.",
    )
    reason = forms.CharField(max_length=1000, required=False, label="Reason (optional)")


@role_required(Role.ADMIN)
@require_http_methods(["GET", "POST"])
def environment_settings(request: HttpRequest, environment: str) -> HttpResponse:
    env = environment_for(grants_of(request.user), Role.ADMIN, environment)
    initial = {field: getattr(env, field) for field in EDITABLE}
    data = request.POST if request.method == "POST" else None
    form = EnvironmentRulesForm(data, initial=initial)
    if request.method == "POST" and form.is_valid():
        changes = {field: form.cleaned_data[field] for field in EDITABLE}
        try:
            do_update_environment(
                env, Actor.from_request(request), form.cleaned_data["reason"], **changes
            )
        except PolicyError as exc:
            for field, errors in exc.errors.items():
                form.add_error(field if field in form.fields else None, errors)
        else:
            messages.success(request, f"Saved the settings of {env.name}.")
            return redirect("environment-settings", env.name)
    status = 422 if form.errors else 200
    context = {"environment": env, "form": form}
    return render(request, "policies/environment_settings.html", context, status=status)
