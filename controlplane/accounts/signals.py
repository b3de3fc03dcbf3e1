"""What the accounts app tells the rest of the house once a change has committed.

``user_deactivated`` is sent with ``user_id`` after a deactivation has committed.
The live app answers it by closing that user's open websockets (connected in
``LiveConfig.ready``): accounts never import live, which imports accounts.
"""

from __future__ import annotations

import logging

from django.dispatch import Signal

logger = logging.getLogger(__name__)

user_deactivated = Signal()


def announce_deactivation(user_id: int) -> None:
    """Send ``user_deactivated``; a receiver that fails is logged, and never undoes the
    deactivation that has committed (the user's next request is refused anyway)."""
    for receiver, result in user_deactivated.send_robust(None, user_id=user_id):
        if isinstance(result, Exception):
            logger.warning(
                "Could not end the open connections of user %s (%s): %s",
                user_id,
                getattr(receiver, "__qualname__", receiver),
                result,
            )
