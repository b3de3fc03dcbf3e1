"""The pages where admins manage people: the list, a new user, one user's roles and state.

Thin views over ``controlplane.accounts.users``; every page needs the admin role
everywhere. The Django admin stays, for superusers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.models import User
from django.db.models import Count, Prefetch, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse_lazy
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from controlplane.accounts.actors import Actor
from controlplane.accounts.models import ApiToken, RoleGrant
from controlplane.accounts.roles import ORDER, Role, has_role, role_required
from controlplane.accounts.users import (
    EVERYWHERE,
    MAX_REASON,
    do_create_user,
    do_deactivate_user,
    do_invite_again,
    do_reactivate_user,
    do_set_roles,
    email_invite,
    environment_names,
    grant_field,
    grants_by_environment,
    role_everywhere,
)
from controlplane.audit.models import AuditEntry
from controlplane.protocol.schema import PolicyError

ROLE_CHOICES = [("", "none"), *((role.value, role.value) for role in ORDER)]
RECENT_ACTIONS = 20


class RolesForm(forms.Form):
    """A role everywhere, and one select per environment (none: only the role everywhere)."""

    role_everywhere = forms.ChoiceField(
        choices=ROLE_CHOICES,
        required=False,
        label="Role everywhere",
        help_text="What they may do in every environment.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in environment_names():
            self.fields[grant_field(name)] = forms.ChoiceField(
                choices=ROLE_CHOICES, required=False, label=f"Role in {name}"
            )
        self.environments = environment_names()

    def grants(self) -> dict[str, str]:
        return {name: self.cleaned_data[grant_field(name)] for name in self.environments}

    def add_errors(self, error: PolicyError) -> None:
        """Show each error of the action beside its field (or above the form)."""
        for field, messages_ in error.errors.items():
            self.add_error(field if field in self.fields else None, messages_)


class NewUserForm(RolesForm):
    username = forms.CharField(max_length=150)
    email = forms.EmailField(
        required=False, help_text="Where the invite goes, when email is set up."
    )
    field_order = ["username", "email", EVERYWHERE]


class ChangeRolesForm(RolesForm):
    reason = forms.CharField(max_length=MAX_REASON, required=False, label="Reason (optional)")


@dataclass(frozen=True)
class UserRow:
    """One line of the users page."""

    user: User
    everywhere: Role | None
    grants: dict[str, Role]
    tokens: int


def _roles_from_prefetch(user: User) -> tuple[Role | None, dict[str, Role]]:
    """Read from what ``users`` prefetched: one query per relation, not per user."""
    everywhere = Role.ADMIN if user.is_superuser else role_everywhere(user)
    grants = {g.environment.name: Role(g.role) for g in user.role_grants.all()}
    return everywhere, grants


@role_required(Role.ADMIN, everywhere=True)
@require_GET
def users(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    usable = Q(apitoken__revoked_at__isnull=True) & (
        Q(apitoken__expires_at__isnull=True) | Q(apitoken__expires_at__gt=now)
    )
    people = (
        User.objects.order_by("username")
        .prefetch_related(
            "groups",
            Prefetch("role_grants", queryset=RoleGrant.objects.select_related("environment")),
        )
        .annotate(token_count=Count("apitoken", filter=usable))
    )
    rows = [UserRow(user, *_roles_from_prefetch(user), user.token_count) for user in people]
    return render(request, "accounts/users.html", {"rows": rows})


@role_required(Role.ADMIN, everywhere=True)
@require_http_methods(["GET", "POST"])
def user_new(request: HttpRequest) -> HttpResponse:
    form = NewUserForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            user, path = do_create_user(
                form.cleaned_data["username"],
                form.cleaned_data["email"],
                form.cleaned_data[EVERYWHERE],
                form.grants(),
                Actor.from_request(request),
            )
        except PolicyError as exc:
            form.add_errors(exc)
        else:
            return _invite_page(request, user, path, f"{user.get_username()} was created", 201)
    status = 422 if form.errors else 200
    return render(request, "accounts/user_new.html", {"form": form}, status=status)


def _invite_page(
    request: HttpRequest, user: User, path: str, heading: str, status: int
) -> HttpResponse:
    """The invite link, shown once (and emailed where email is set up)."""
    link = request.build_absolute_uri(path)
    sent, error = email_invite(user, link)
    context = {
        "created": user,
        "heading": heading,
        "link": link,
        "email_sent": sent,
        "email_error": error,
    }
    return render(request, "accounts/user_new.html", context, status=status)


def _detail(
    request: HttpRequest,
    person: User,
    form: ChangeRolesForm | None = None,
    errors: dict[str, list[str]] | None = None,
    status: int = 200,
) -> HttpResponse:
    if form is None:
        everywhere = role_everywhere(person)
        initial = {EVERYWHERE: everywhere.value if everywhere else ""}
        for name, granted in grants_by_environment(person).items():
            initial[grant_field(name)] = granted.value
        form = ChangeRolesForm(initial=initial)
    context = {
        "person": person,
        "form": form,
        "errors": errors or {},
        "tokens": ApiToken.objects.filter(created_by=person),
        "actions": AuditEntry.objects.filter(actor_user=person)[:RECENT_ACTIONS],
        "is_self": person.pk == request.user.pk,
    }
    return render(request, "accounts/user_detail.html", context, status=status)


@role_required(Role.ADMIN, everywhere=True)
@require_http_methods(["GET", "POST"])
def user_detail(request: HttpRequest, username: str) -> HttpResponse:
    person = get_object_or_404(User, username=username)
    if request.method == "GET":
        return _detail(request, person)
    form = ChangeRolesForm(request.POST)
    if form.is_valid():
        try:
            do_set_roles(
                person,
                form.cleaned_data[EVERYWHERE],
                form.grants(),
                Actor.from_request(request),
                form.cleaned_data["reason"],
            )
        except PolicyError as exc:
            form.add_errors(exc)
        else:
            if person.pk == request.user.pk and not has_role(person, Role.ADMIN):
                # Their own page now needs a role they gave up: go where they still may.
                messages.success(request, "Saved your roles: you no longer manage users.")
                return redirect("dashboard")
            messages.success(request, f"Saved the roles of {person.get_username()}.")
            return redirect("user-detail", person.get_username())
    return _detail(request, person, form=form, status=422)


@role_required(Role.ADMIN, everywhere=True)
@require_POST
def user_deactivate(request: HttpRequest, username: str) -> HttpResponse:
    person = get_object_or_404(User, username=username)
    try:
        do_deactivate_user(person, Actor.from_request(request), request.POST.get("reason", ""))
    except PolicyError as exc:
        return _detail(request, person, errors=exc.errors, status=422)
    messages.success(
        request, f"Deactivated {person.get_username()}: their tokens and sessions have ended."
    )
    return redirect("user-detail", person.get_username())


@role_required(Role.ADMIN, everywhere=True)
@require_POST
def user_reactivate(request: HttpRequest, username: str) -> HttpResponse:
    person = get_object_or_404(User, username=username)
    try:
        do_reactivate_user(person, Actor.from_request(request), request.POST.get("reason", ""))
    except PolicyError as exc:
        return _detail(request, person, errors=exc.errors, status=422)
    messages.success(request, f"Reactivated {person.get_username()}.")
    return redirect("user-detail", person.get_username())


@role_required(Role.ADMIN, everywhere=True)
@require_POST
def user_invite_again(request: HttpRequest, username: str) -> HttpResponse:
    person = get_object_or_404(User, username=username)
    try:
        path = do_invite_again(person, Actor.from_request(request))
    except PolicyError as exc:
        return _detail(request, person, errors=exc.errors, status=422)
    return _invite_page(request, person, path, f"A new invite for {person.get_username()}", 200)


class InviteView(auth_views.PasswordResetConfirmView):
    """Where an invited user chooses their password, through the link an admin gave them."""

    template_name = "accounts/set_password.html"
    success_url = reverse_lazy("login")
    post_reset_login = False

    def form_valid(self, form: Any) -> HttpResponse:
        response = super().form_valid(form)
        messages.success(self.request, "Your password is set: log in with it.")
        return response
