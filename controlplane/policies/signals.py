"""What the policies app tells the rest of the house once a change has committed.

``row_changed`` is sent with ``environment`` (its name) and ``field``
(``kind:name``) after a change of what a policy's live row shows has committed
that no report of the fleet would bring: its override, or its tags or team. The
live app answers it (``live.push``, connected in ``LiveConfig.ready``) by pushing
the row to open dashboards: policies never import live.
"""

from __future__ import annotations

import logging

from django.dispatch import Signal

logger = logging.getLogger(__name__)

row_changed = Signal()


def announce_row(environment: str, field: str) -> None:
    """Send ``row_changed``; a failed announcement never fails the action that made it."""
    for _, result in row_changed.send_robust(None, environment=environment, field=field):
        if isinstance(result, Exception):
            logger.warning("Could not announce the change of %s to open dashboards", field)
