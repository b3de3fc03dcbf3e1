from __future__ import annotations

from django.http import HttpRequest

from controlplane.accounts.roles import abilities, role_of


def roles(request: HttpRequest) -> dict[str, object]:
    """``role`` and ``can.<ability>`` for templates, so navigation offers only what is allowed."""
    user = getattr(request, "user", None)
    return {"role": role_of(user) if user else None, "can": abilities(user) if user else {}}
