"""Push re-rendered widgets to every open live page, rendered once per change, not per viewer.

The process that learns of a change (the ingest that processed a report, the
request that set an override) tells its pusher which policies changed. The
pusher coalesces: state changes (transitions, overrides) go out at most every
0.2 s, the first one at once; figures from counters at most once a second. Each
push renders the changed rows once per variant (with or without the override
controls) and sends the HTML through the channel layer, which fans it out to
every viewer on every replica. A policy's own page gets the list of changed
policies instead, and renders its single section itself.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import close_old_connections

from controlplane.policies.models import Environment

logger = logging.getLogger(__name__)

STATE_INTERVAL = 0.2
FIGURES_INTERVAL = 1.0
# What an overview push shows to whom: operators also get the override controls.
VARIANTS: dict[str, dict[str, bool]] = {
    "viewer": {"view": True, "operate": False, "edit": False, "administer": False},
    "operator": {"view": True, "operate": True, "edit": False, "administer": False},
}


def group_name(environment: str) -> str:
    """The group of an environment's policy pages: they get the changed policies."""
    return f"live.{environment}"


def overview_group(environment: str, variant: str) -> str:
    """The group of an environment's overview pages of one variant: they get HTML."""
    return f"live.{environment}.overview.{variant}"


@dataclass
class _Pending:
    fields: set[str] = field(default_factory=set)
    urgent: bool = False


def send_now(environment_name: str, changed: set[str]) -> None:
    """Render and send one push for ``changed`` (``kind:name`` and ``@instances``)."""
    from controlplane.live.widgets import render_push

    layer = get_channel_layer()
    if layer is None or not changed:
        return
    environment = Environment.objects.filter(name=environment_name).first()
    if environment is None:
        return
    send = async_to_sync(layer.group_send)
    send(group_name(environment_name), {"type": "live.changed", "changed": sorted(changed)})
    for variant, can in VARIANTS.items():
        html = render_push(environment, changed, can)
        send(overview_group(environment_name, variant), {"type": "live.html", "html": html})


class LivePusher(threading.Thread):
    def __init__(self) -> None:
        super().__init__(name="controlplane-live-push", daemon=True)
        self._pending: dict[str, _Pending] = {}
        self._last_sent: dict[str, float] = {}
        self._condition = threading.Condition()
        self.pushes = 0

    def notify(self, environment: str, changed: set[str], *, urgent: bool) -> None:
        if not changed:
            return
        with self._condition:
            pending = self._pending.setdefault(environment, _Pending())
            pending.fields |= changed
            pending.urgent = pending.urgent or urgent
            self._condition.notify()

    def _due(self, now: float) -> tuple[list[tuple[str, set[str]]], float]:
        """Pop the pushes due now; return them and how long to wait for the next one."""
        due: list[tuple[str, set[str]]] = []
        wait = 1.0
        for environment, pending in list(self._pending.items()):
            interval = STATE_INTERVAL if pending.urgent else FIGURES_INTERVAL
            at = self._last_sent.get(environment, 0.0) + interval
            if now >= at:
                due.append((environment, pending.fields))
                del self._pending[environment]
                self._last_sent[environment] = now
            else:
                wait = min(wait, at - now)
        return due, wait

    def run(self) -> None:
        while True:
            with self._condition:
                due, wait = self._due(time.monotonic())
                if not due:
                    self._condition.wait(wait)
                    continue
            close_old_connections()
            for environment, changed in due:
                try:
                    send_now(environment, changed)
                    self.pushes += 1
                except Exception:
                    logger.exception("Could not push live changes of %s", environment)


_pusher: LivePusher | None = None
_lock = threading.Lock()


def pusher() -> LivePusher:
    """This process's pusher, started on first use."""
    global _pusher
    with _lock:
        if _pusher is None or not _pusher.is_alive():
            _pusher = LivePusher()
            _pusher.start()
        return _pusher
