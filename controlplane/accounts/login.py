from __future__ import annotations

import math
from typing import Any

from django.contrib.auth import views as auth_views
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from controlplane.accounts.actors import client_address
from controlplane.accounts.throttle import check_login_attempt


class LoginView(auth_views.LoginView):
    """Django's login, with attempts per IP limited by the product's own rate limiter."""

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        decision = check_login_attempt(client_address(request), request.POST.get("username", ""))
        if not decision.allowed:
            retry_after = max(1, math.ceil(decision.retry_after))
            response = render(
                request,
                "registration/login.html",
                {"form": self.get_form(), "throttled": retry_after},
                status=429,
            )
            response["Retry-After"] = str(retry_after)
            return response
        return super().post(request, *args, **kwargs)
