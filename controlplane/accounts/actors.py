from __future__ import annotations

import uuid
from dataclasses import dataclass, replace

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.http import HttpRequest


@dataclass(frozen=True)
class Actor:
    """Who made a change: a user (maybe through an API token), or a named part of the system."""

    name: str
    user: AbstractBaseUser | None = None
    token: str = ""
    ip: str | None = None
    correlation_id: uuid.UUID | None = None

    @classmethod
    def of(cls, user: AbstractBaseUser | AnonymousUser, ip: str | None = None) -> Actor:
        if not user.is_authenticated:
            raise ValueError("anonymous users cannot change anything")
        return cls(name=user.get_username(), user=user, ip=ip)

    @classmethod
    def from_request(cls, request: HttpRequest) -> Actor:
        actor = cls.of(request.user, ip=request.META.get("REMOTE_ADDR") or None)
        token = getattr(request, "api_token", None)
        return replace(actor, token=token.label) if token is not None else actor

    @classmethod
    def system(cls, name: str) -> Actor:
        return cls(name=name)

    def correlated(self, correlation_id: uuid.UUID) -> Actor:
        """The same actor, with every entry it records tied to ``correlation_id``."""
        return replace(self, correlation_id=correlation_id)
