from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from controlplane.accounts.actions import do_create_token, do_revoke_token
from controlplane.accounts.actors import Actor
from controlplane.accounts.roles import Role


@pytest.fixture
def token_for(db: None) -> Callable[..., str]:
    """Create a token with ``role``; ``state`` may be "expired" or "revoked"."""

    def make(role: Role, state: str = "active") -> str:
        expires = timezone.now() + timedelta(hours=1)
        token, secret = do_create_token(f"{role}-{state}", role, Actor.system("tests"), expires)
        if state == "expired":
            type(token).objects.filter(pk=token.pk).update(
                expires_at=timezone.now() - timedelta(seconds=1)
            )
        elif state == "revoked":
            do_revoke_token(token, Actor.system("tests"))
        return secret

    return make


class ApiClient:
    def __init__(self, client: Client, secret: str | None) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {secret}"} if secret else {}

    def call(self, method: str, path: str, body: Any = None) -> Any:
        kwargs: dict[str, Any] = {"headers": self.headers}
        if body is not None:
            kwargs.update(data=body, content_type="application/json")
        return getattr(self.client, method)("/api/v1" + path, **kwargs)


@pytest.fixture
def api_as(client: Client, token_for: Callable[..., str]) -> Callable[..., ApiClient]:
    def make(role: Role | None, state: str = "active") -> ApiClient:
        return ApiClient(client, None if role is None else token_for(role, state))

    return make
