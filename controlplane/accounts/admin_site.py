"""The admin site, where users and their roles are managed: open to the admin role.

Django lets only ``is_staff`` users in; here the admin role, granted through its
group, is enough, as the README says. Others get what every page gives them:
the login page when anonymous, 403 when logged in without the role.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from django.contrib import admin
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.urls import reverse

from controlplane.accounts.roles import Role, has_role

V = TypeVar("V", bound=Callable[..., HttpResponseBase])


class RoleAdminSite(admin.AdminSite):
    def has_permission(self, request: HttpRequest) -> bool:
        user: Any = request.user
        return bool(user.is_active and (user.is_staff or has_role(user, Role.ADMIN)))

    def admin_view(self, view: V, cacheable: bool = False) -> V:
        checked = super().admin_view(view, cacheable)

        @functools.wraps(checked)
        def gate(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            logout = reverse("admin:logout", current_app=self.name)
            if self.has_permission(request) or request.path == logout:
                return checked(request, *args, **kwargs)
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            raise PermissionDenied("User management needs the admin role in every environment.")

        return gate  # type: ignore[return-value]
