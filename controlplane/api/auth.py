"""API authentication by bearer token, and the role check every endpoint makes first.

``require`` asks for the role in at least one environment the token may act in;
the endpoint then checks the role in its environment with ``token.grants()``
(``policies.access``): a token is scoped to its environments and, in each, capped
by the role its creator holds there now.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from ninja.errors import HttpError
from ninja.security import HttpBearer

from controlplane.accounts.actions import authenticate_token
from controlplane.accounts.actors import Actor, client_address
from controlplane.accounts.models import ApiToken
from controlplane.accounts.roles import Role, includes


class TokenAuth(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> ApiToken | None:
        return authenticate_token(token)


def require(request: HttpRequest, role: Role) -> ApiToken:
    """Return the request's token if it acts with at least ``role``; else answer 403."""
    token: Any = getattr(request, "auth", None)
    if not isinstance(token, ApiToken):
        raise HttpError(401, "Authenticate with an API token: Authorization: Bearer <token>.")
    acting = token.acting_role()
    if acting is None:
        raise HttpError(401, "This token's creator is inactive or holds no role.")
    if not includes(acting, role):
        has = (
            f"the token has {token.role}"
            if acting == token.role
            else f"the token acts as {acting.value}, its creator's role now"
        )
        raise HttpError(403, f"This needs the {role.value} role; {has}.")
    return token


def actor_for(request: HttpRequest, token: ApiToken) -> Actor:
    """The token acts for its creator (none for a system token): whoever made it cannot
    approve, through it, a change request they opened themselves."""
    return Actor(
        name=f"token:{token.label}",
        user=token.created_by,
        token=token.label,
        ip=client_address(request),
    )
