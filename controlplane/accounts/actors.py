from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser


@dataclass(frozen=True)
class Actor:
    """Who made a change: a user, or a named part of the system (``reconciler``, ``demo``)."""

    name: str
    user: AbstractBaseUser | None = None

    @classmethod
    def of(cls, user: AbstractBaseUser | AnonymousUser) -> Actor:
        if not user.is_authenticated:
            raise ValueError("anonymous users cannot change anything")
        return cls(name=user.get_username(), user=user)

    @classmethod
    def system(cls, name: str) -> Actor:
        return cls(name=name)
