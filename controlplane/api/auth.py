"""API authentication by bearer token, and the role check every endpoint makes."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from ninja.errors import HttpError
from ninja.security import HttpBearer

from controlplane.accounts.actions import authenticate_token
from controlplane.accounts.actors import Actor
from controlplane.accounts.models import ApiToken
from controlplane.accounts.roles import ORDER, Role


class TokenAuth(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> ApiToken | None:
        return authenticate_token(token)


def require(request: HttpRequest, role: Role) -> ApiToken:
    """Return the request's token if it carries at least ``role``; else answer 403."""
    token: Any = getattr(request, "auth", None)
    if not isinstance(token, ApiToken):
        raise HttpError(401, "Authenticate with an API token: Authorization: Bearer <token>.")
    if ORDER.index(Role(token.role)) < ORDER.index(role):
        raise HttpError(403, f"This needs the {role.value} role; the token has {token.role}.")
    return token


def actor_for(request: HttpRequest, token: ApiToken) -> Actor:
    return Actor(
        name=f"token:{token.label}",
        user=None,
        token=token.label,
        ip=request.META.get("REMOTE_ADDR") or None,
    )
