from __future__ import annotations

from django.http import HttpRequest

from controlplane.accounts.roles import ORDER, Role, role_of


def roles(request: HttpRequest) -> dict[str, object]:
    """``can.operate``, ``can.edit``, ``can.administer``: what the navigation may offer."""
    held = role_of(request.user) if hasattr(request, "user") else None
    level = -1 if held is None else ORDER.index(held)
    return {
        "role": held,
        "can": {
            "view": level >= ORDER.index(Role.VIEWER),
            "operate": level >= ORDER.index(Role.OPERATOR),
            "edit": level >= ORDER.index(Role.EDITOR),
            "administer": level >= ORDER.index(Role.ADMIN),
        },
    }
