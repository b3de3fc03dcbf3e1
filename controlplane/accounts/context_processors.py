from __future__ import annotations

from django.http import HttpRequest

from controlplane.accounts.roles import abilities, grants_of


def roles(request: HttpRequest) -> dict[str, object]:
    """``role`` (what the header says the user is) and ``can.<ability>`` for navigation:
    the highest role held anywhere, so it offers only what is allowed somewhere. Pages
    of one environment pass their own ``can`` (``roles.abilities_in``)."""
    user = getattr(request, "user", None)
    if user is None:
        return {"role": None, "can": {}}
    return {"role": grants_of(user).summary() or None, "can": abilities(user)}
