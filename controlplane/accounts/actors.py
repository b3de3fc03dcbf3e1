from __future__ import annotations

import ipaddress
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
        actor = cls.of(request.user, ip=client_address(request))
        token = getattr(request, "api_token", None)
        return replace(actor, token=token.label) if token is not None else actor

    @classmethod
    def system(cls, name: str) -> Actor:
        return cls(name=name)

    def correlated(self, correlation_id: uuid.UUID) -> Actor:
        """The same actor, with every entry it records tied to ``correlation_id``."""
        return replace(self, correlation_id=correlation_id)


def client_address(request: HttpRequest) -> str | None:
    """The request's client address, or None when it is not an IP address.

    ``REMOTE_ADDR`` comes from the trusted proxies' ``X-Forwarded-For`` when
    there are any (``controlplane/proxy.py``), which does not check its form;
    the audit log stores it in an address column.
    """
    raw = str(request.META.get("REMOTE_ADDR") or "")
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        return None
