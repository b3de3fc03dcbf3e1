"""The webhook pages of an environment, for its admins: list, add, switch, test, remove,
and each webhook's recent deliveries with a "Redeliver" button.

Every write goes through ``webhooks.actions`` (validated, audited) or ``delivery``;
the environment is looked up by app label, as this app may not import policies.
"""

from __future__ import annotations

from django import forms
from django.apps import apps
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from controlplane.accounts.actors import Actor
from controlplane.accounts.roles import Role, grants_of, includes, role_required
from controlplane.webhooks.actions import (
    EVENT_FAMILIES,
    WebhookError,
    do_create_webhook,
    do_delete_webhook,
    do_redeliver,
    do_set_webhook_enabled,
    new_secret,
    shown_url,
)
from controlplane.webhooks.delivery import send_test
from controlplane.webhooks.events import EVENT_TYPES
from controlplane.webhooks.models import Delivery, Webhook

RECENT = 50  # deliveries a webhook's page shows


class WebhookForm(forms.Form):
    name = forms.CharField(max_length=Webhook._meta.get_field("name").max_length)
    url = forms.CharField(
        label="URL",
        max_length=Webhook._meta.get_field("url").max_length,
        help_text="Where each event is POSTed. Only public http(s) addresses are allowed.",
    )
    events = forms.MultipleChoiceField(
        choices=[(family, f"every {family}") for family in EVENT_FAMILIES]
        + [(type, type) for type in EVENT_TYPES],
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="None ticked: every event of this environment.",
    )
    payload_format = forms.ChoiceField(
        label="Format", choices=Webhook.Format.choices, initial=Webhook.Format.JSON
    )
    generate_secret = forms.BooleanField(
        required=False,
        label="Generate a secret",
        help_text="Sign every delivery (X-Signature); the secret is shown once, after saving.",
    )


def _environment(request: HttpRequest, environment: str) -> str:
    """The name of ``environment`` if the user administers it: 403 before 404."""
    if not includes(grants_of(request.user).role_in(environment), Role.ADMIN):
        raise PermissionDenied(f"This needs the {Role.ADMIN.value} role in {environment}.")
    environments = apps.get_model("policies", "Environment")  # it imports this app
    if not environments.objects.filter(name=environment).exists():
        raise Http404(f"No environment named {environment!r}.")
    return environment


def _webhook(request: HttpRequest, environment: str, name: str) -> Webhook:
    """The webhook ``name`` of ``environment``, for an admin of it."""
    return get_object_or_404(Webhook, environment=_environment(request, environment), name=name)


def webhooks_with_last_status(environment: str) -> QuerySet[Webhook]:
    """The environment's webhooks, each with the status of its newest delivery (one query)."""
    newest = Delivery.objects.filter(webhook=OuterRef("pk")).order_by("-id")
    return Webhook.objects.filter(environment=environment).annotate(
        last_status=Subquery(newest.values("status")[:1]),
        last_delivery_at=Subquery(newest.values("created_at")[:1]),
    )


@role_required(Role.ADMIN)
@require_http_methods(["GET", "POST"])
def webhook_list(request: HttpRequest, environment: str) -> HttpResponse:
    env = _environment(request, environment)
    form = WebhookForm(request.POST if request.method == "POST" else None)
    created: Webhook | None = None
    created_secret = ""
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        secret = new_secret() if data["generate_secret"] else ""
        try:
            created = do_create_webhook(
                env,
                data["name"],
                data["url"],
                Actor.from_request(request),
                events=data["events"],
                secret=secret,
                payload_format=data["payload_format"],
            )
        except WebhookError as exc:
            for field, errors in exc.errors.items():
                form.add_error(field if field in form.fields else None, errors)
        else:
            created_secret = secret
            form = WebhookForm()
    context = {
        "environment": env,
        "form": form,
        "webhooks": [
            (webhook, shown_url(webhook.url)) for webhook in webhooks_with_last_status(env)
        ],
        "created": created,
        "created_secret": created_secret,
    }
    status = 422 if form.errors else 200
    return render(request, "webhooks/list.html", context, status=status)


@role_required(Role.ADMIN)
@require_GET
def webhook_deliveries(request: HttpRequest, environment: str, webhook: str) -> HttpResponse:
    hook = _webhook(request, environment, webhook)
    deliveries = hook.deliveries.select_related("event").order_by("-id")[:RECENT]
    context = {"webhook": hook, "target": shown_url(hook.url), "deliveries": deliveries}
    return render(request, "webhooks/deliveries.html", context)


@role_required(Role.ADMIN)
@require_http_methods(["GET", "POST"])
def webhook_remove(request: HttpRequest, environment: str, webhook: str) -> HttpResponse:
    """GET asks to confirm; POST removes the webhook and its deliveries."""
    hook = _webhook(request, environment, webhook)
    if request.method == "GET":
        context = {"webhook": hook, "target": shown_url(hook.url)}
        return render(request, "webhooks/remove.html", context)
    do_delete_webhook(hook, Actor.from_request(request))
    messages.success(request, f"Removed the webhook {hook.name}.")
    return redirect("webhook-list", hook.environment)


@role_required(Role.ADMIN)
@require_POST
def webhook_enabled(request: HttpRequest, environment: str, webhook: str) -> HttpResponse:
    """Switch a webhook on (``enabled=on``) or off (``enabled=off``)."""
    hook = _webhook(request, environment, webhook)
    wanted = request.POST.get("enabled")
    if wanted not in ("on", "off"):
        messages.error(request, "enabled: choose on or off.")
    elif do_set_webhook_enabled(hook, wanted == "on", Actor.from_request(request)):
        messages.success(request, f"Switched the webhook {hook.name} {wanted}.")
    return redirect("webhook-list", hook.environment)


@role_required(Role.ADMIN)
@require_POST
def webhook_test(request: HttpRequest, environment: str, webhook: str) -> HttpResponse:
    hook = _webhook(request, environment, webhook)
    send_test(hook)
    note = "" if hook.enabled else " It waits until the webhook is switched on."
    messages.success(request, f"Queued a test event for {hook.name}.{note}")
    return redirect("webhook-deliveries", hook.environment, hook.name)


@role_required(Role.ADMIN)
@require_POST
def webhook_redeliver(
    request: HttpRequest, environment: str, webhook: str, delivery_id: int
) -> HttpResponse:
    hook = _webhook(request, environment, webhook)
    delivery = get_object_or_404(Delivery, pk=delivery_id, webhook=hook)
    do_redeliver(delivery, Actor.from_request(request))
    messages.success(request, f"Event {delivery.event_id} will be sent again.")
    return redirect("webhook-deliveries", hook.environment, hook.name)
