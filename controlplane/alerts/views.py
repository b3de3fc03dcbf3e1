"""The alert rules of an environment, for its admins: list with their state, add, switch,
remove. The firing alerts themselves show on the home page (``templatetags/alerts.py``)."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from controlplane.accounts.actors import Actor
from controlplane.accounts.roles import Role, grants_of, role_required
from controlplane.alerts.actions import (
    AlertRuleError,
    do_create_rule,
    do_delete_rule,
    do_set_rule_enabled,
)
from controlplane.alerts.models import AlertRule, AlertState
from controlplane.policies.access import environment_for
from controlplane.policies.models import Environment


class AlertRuleForm(forms.Form):
    name = forms.CharField(max_length=AlertRule._meta.get_field("name").max_length)
    kind = forms.ChoiceField(label="When", choices=AlertRule.Kind.choices)
    target = forms.CharField(
        required=False,
        max_length=200,
        help_text="The breaker's or rate limiter's name; blank or * for any. "
        "Leave blank for instances.",
    )
    minutes = forms.FloatField(
        label="For more than (minutes)",
        initial=5,
        help_text="How long the condition must hold before the alert fires; 0: at once.",
    )
    percent = forms.FloatField(
        label="Rejecting more than (%)",
        required=False,
        help_text="Rate limiter rules only: the share of calls rejected over the live window.",
    )


def _environment(request: HttpRequest, environment: str) -> Environment:
    """``environment``, if the user administers it: 403 before 404."""
    return environment_for(grants_of(request.user), Role.ADMIN, environment)


def _rule(request: HttpRequest, environment: str, rule_id: int) -> AlertRule:
    env = _environment(request, environment)
    return get_object_or_404(
        AlertRule.objects.select_related("environment"), pk=rule_id, environment=env
    )


@role_required(Role.ADMIN)
@require_http_methods(["GET", "POST"])
def rule_list(request: HttpRequest, environment: str) -> HttpResponse:
    env = _environment(request, environment)
    form = AlertRuleForm(request.POST if request.method == "POST" else None)
    created: AlertRule | None = None
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            created = do_create_rule(
                env,
                data["name"],
                data["kind"],
                Actor.from_request(request),
                target=data["target"],
                minutes=data["minutes"],
                percent=data["percent"],
            )
        except AlertRuleError as exc:
            for field, errors in exc.errors.items():
                form.add_error(field if field in form.fields else None, errors)
        else:
            form = AlertRuleForm()
    rules = list(AlertRule.objects.filter(environment=env))
    states: dict[int, list[AlertState]] = {rule.pk: [] for rule in rules}
    for state in AlertState.objects.filter(rule__in=rules).order_by("target"):
        states[state.rule_id].append(state)
    context = {
        "environment": env.name,
        "form": form,
        "rules": [(rule, states[rule.pk]) for rule in rules],
        "created": created,
    }
    return render(request, "alerts/list.html", context, status=422 if form.errors else 200)


@role_required(Role.ADMIN)
@require_http_methods(["GET", "POST"])
def rule_remove(request: HttpRequest, environment: str, rule_id: int) -> HttpResponse:
    """GET asks to confirm; POST removes the rule."""
    rule = _rule(request, environment, rule_id)
    if request.method == "GET":
        return render(request, "alerts/remove.html", {"rule": rule})
    do_delete_rule(rule, Actor.from_request(request))
    messages.success(request, f"Removed the alert rule {rule.name}.")
    return redirect("alert-list", rule.environment.name)


@role_required(Role.ADMIN)
@require_POST
def rule_enabled(request: HttpRequest, environment: str, rule_id: int) -> HttpResponse:
    """Switch a rule on (``enabled=on``) or off (``enabled=off``)."""
    rule = _rule(request, environment, rule_id)
    wanted = request.POST.get("enabled")
    if wanted not in ("on", "off"):
        messages.error(request, "enabled: choose on or off.")
    elif do_set_rule_enabled(rule, wanted == "on", Actor.from_request(request)):
        messages.success(request, f"Switched the alert rule {rule.name} {wanted}.")
    return redirect("alert-list", rule.environment.name)
