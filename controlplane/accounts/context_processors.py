from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from controlplane.accounts.roles import ORDER, Role, role_of


def abilities(user: Any) -> dict[str, bool]:
    """``view``, ``operate``, ``edit``, ``administer``: what ``user``'s role allows."""
    held = role_of(user)
    level = -1 if held is None else ORDER.index(held)
    return {
        "view": level >= ORDER.index(Role.VIEWER),
        "operate": level >= ORDER.index(Role.OPERATOR),
        "edit": level >= ORDER.index(Role.EDITOR),
        "administer": level >= ORDER.index(Role.ADMIN),
    }


def roles(request: HttpRequest) -> dict[str, object]:
    """``role`` and ``can.<ability>`` for templates, so navigation offers only what is allowed."""
    user = getattr(request, "user", None)
    return {"role": role_of(user) if user else None, "can": abilities(user) if user else {}}
