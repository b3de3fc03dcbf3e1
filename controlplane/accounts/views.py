from __future__ import annotations

from datetime import timedelta

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from controlplane.accounts.actions import do_create_token, do_revoke_token
from controlplane.accounts.actors import Actor
from controlplane.accounts.models import ApiToken, environment_ids
from controlplane.accounts.roles import ORDER, Role, role_required
from controlplane.protocol.schema import PolicyError


class TokenForm(forms.Form):
    label = forms.CharField(max_length=100, help_text="What uses the token, e.g. deploy-bot.")
    role = forms.ChoiceField(choices=[(r.value, r.value) for r in ORDER], initial=Role.VIEWER.value)
    expires_in_days = forms.IntegerField(
        min_value=1,
        max_value=366,
        initial=90,
        required=False,
        help_text="Leave empty for a token that never expires.",
    )
    environments = forms.MultipleChoiceField(
        choices=lambda: [(name, name) for name in environment_ids()],
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="Where the token may act. None ticked: every environment.",
    )


@role_required(Role.ADMIN, everywhere=True)
@require_http_methods(["GET", "POST"])
def tokens(request: HttpRequest) -> HttpResponse:
    form = TokenForm(request.POST or None)
    created_secret = None
    if request.method == "POST" and form.is_valid():
        days = form.cleaned_data["expires_in_days"]
        try:
            _, created_secret = do_create_token(
                form.cleaned_data["label"],
                form.cleaned_data["role"],
                Actor.from_request(request),
                timezone.now() + timedelta(days=days) if days else None,
                form.cleaned_data["environments"],
            )
        except PolicyError as exc:
            for field, errors in exc.errors.items():
                form.add_error(field if field in form.fields else None, errors)
        else:
            form = TokenForm()
    status = 422 if request.method == "POST" and form.errors else 200
    return render(
        request,
        "accounts/tokens.html",
        {
            "form": form,
            "tokens": ApiToken.objects.prefetch_related("environments"),
            "created_secret": created_secret,
        },
        status=status,
    )


@role_required(Role.ADMIN, everywhere=True)
@require_POST
def revoke_token(request: HttpRequest, token_id: int) -> HttpResponse:
    token = get_object_or_404(ApiToken, pk=token_id)
    do_revoke_token(token, Actor.from_request(request), request.POST.get("reason", ""))
    messages.success(request, f"Revoked {token.label}.")
    return redirect("tokens")
