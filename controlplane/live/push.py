"""Push re-rendered widgets to every open live page, rendered once per change, not per viewer.

The process that learns of a change (the ingest that processed a report, the
request that set an override) tells its pusher which policies changed. The
pusher coalesces: state changes (transitions, overrides) go out at most every
0.2 s, the first one at once; figures from counters at most once a second. Each
push takes the changed rows' HTML once per variant (with or without the override
controls), the same HTML as the page's (``widgets.row_html``: a row is rendered
again only when a value it shows changed), and sends it through the channel
layer, which fans it out to every viewer on every replica. A figures push
leaves out the rows whose HTML the viewers already have, so a second of
counters that changes no figure sends nothing. A policy's own page gets the
list of changed policies instead, and renders its single section itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Any

from channels.layers import get_channel_layer
from django.db import close_old_connections, connections
from django.dispatch import receiver

from controlplane.accounts.roles import Role, abilities_of
from controlplane.live.home import render_card
from controlplane.live.widgets import render_rows
from controlplane.policies.models import Environment
from controlplane.policies.signals import row_changed

logger = logging.getLogger(__name__)

STATE_INTERVAL = 0.2
FIGURES_INTERVAL = 1.0
# The home page's card of an environment follows its figures at most this often
# (it reads every policy of the environment); state changes go out at once.
HOME_FIGURES_INTERVAL = 5.0
HOME_GROUP = "live.home"
HOME_CARD = "@card"  # in a figures push's changes: render the home page's card now
# What an overview push shows to whom: operators also get the override controls.
VARIANTS: dict[str, dict[str, bool]] = {
    "viewer": abilities_of(Role.VIEWER),
    "operator": abilities_of(Role.OPERATOR),
}


def group_name(environment: str) -> str:
    """The group of an environment's policy pages: they get the changed policies."""
    return f"live.{environment}"


def overview_group(environment: str, variant: str) -> str:
    """The group of an environment's overview pages of one variant: they get HTML."""
    return f"live.{environment}.overview.{variant}"


class _Sent:
    """What each overview variant last received per row, and when rows' state was pushed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.html: dict[tuple[str, str, str], str] = {}  # (environment, variant, row) -> HTML
        self.state_at: dict[tuple[str, str], float] = {}  # (environment, row) -> monotonic
        self.home_at: dict[str, float] = {}  # environment -> monotonic, of its last card


_sent = _Sent()

SEND_TIMEOUT = 10.0


class _Sender:
    """An event loop of the pushers', running for the process's life, that sends to the layer.

    ``async_to_sync`` would start a thread, an event loop and (with channels-redis)
    a Redis connection for every ``group_send``: about 6 ms each, three per push.
    Here the layer keeps its connections, and one push's messages go in one call.
    """

    def __init__(self) -> None:
        self.forget()

    def forget(self) -> None:
        """Start afresh: a forked child has the loop but not the thread that ran it."""
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def _running(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(
                    target=self._loop.run_forever, name="controlplane-live-send", daemon=True
                ).start()
            return self._loop

    def send(self, layer: Any, messages: list[tuple[str, dict[str, Any]]]) -> None:
        """Send each ``(group, message)`` in order; raise what the layer raised."""

        async def send_all() -> None:
            for group, message in messages:
                await layer.group_send(group, message)

        future = asyncio.run_coroutine_threadsafe(send_all(), self._running())
        try:
            future.result(timeout=SEND_TIMEOUT)
        except TimeoutError:
            future.cancel()
            raise


_sender = _Sender()
os.register_at_fork(after_in_child=_sender.forget)


def send_now(environment_name: str, changed: set[str], *, state: bool = True) -> None:
    """Render and send one push for ``changed`` (``kind:name`` and ``@instances``).

    A figures push (``state=False``) leaves out rows whose state was pushed
    after it started rendering (they would be older), and rows whose HTML is
    what the viewers already have.
    """
    layer = get_channel_layer()
    if layer is None or not changed:
        return
    environment = Environment.objects.filter(name=environment_name).first()
    if environment is None:
        return
    if state:  # the home page's card follows within a second, off this thread
        notify(environment_name, {HOME_CARD}, urgent=False)
    else:
        _push_home_card(layer, environment, due=HOME_CARD in changed)
        changed = changed - {HOME_CARD}
        if not changed:
            return
    started = time.monotonic()
    notice = {"type": "live.changed", "changed": sorted(changed)}
    _sender.send(layer, [(group_name(environment_name), notice)])  # pages that render themselves
    rendered = render_rows(environment, changed, VARIANTS)
    # Sent under the lock, so viewers get the pushes in the order they were decided.
    with _sent.lock:
        messages: list[tuple[str, dict[str, Any]]] = []
        for variant, rows in rendered.items():
            parts = []
            for row, html in rows.items():
                key = (environment_name, variant, row)
                if not state and (
                    _sent.state_at.get((environment_name, row), 0.0) > started
                    or _sent.html.get(key) == html
                ):
                    continue
                _sent.html[key] = html
                parts.append(html)
            if parts:
                html = "\n".join(parts)
                messages.append(
                    (overview_group(environment_name, variant), {"type": "live.html", "html": html})
                )
        if messages:
            _sender.send(layer, messages)
        if state:
            for row in changed:
                _sent.state_at[(environment_name, row)] = time.monotonic()


def _push_home_card(layer: Any, environment: Environment, *, due: bool) -> None:
    """The environment's home-page card, if it changed since the viewers got it.

    Rendered by the figures pusher only (one thread: cards go out in order), when a
    state push asked for it (``due``) or its figures are ``HOME_FIGURES_INTERVAL`` old.
    """
    name = environment.name
    now = time.monotonic()
    if not due and now - _sent.home_at.get(name, 0.0) < HOME_FIGURES_INTERVAL:
        return
    _sent.home_at[name] = now
    html = render_card(environment)
    with _sent.lock:
        key = (name, "home", HOME_CARD)
        if _sent.html.get(key) == html:
            return
        _sent.html[key] = html
    # Each home page shows the card only if its viewer may view the environment.
    message = {"type": "live.html", "html": html, "environment": name}
    _sender.send(layer, [(HOME_GROUP, message)])


class LivePusher(threading.Thread):
    """One kind of push for every environment: state changes or figures."""

    def __init__(self, *, state: bool = True) -> None:
        super().__init__(
            name=f"controlplane-live-push-{'state' if state else 'figures'}", daemon=True
        )
        self.state = state
        self.interval = STATE_INTERVAL if state else FIGURES_INTERVAL
        self._pending: dict[str, set[str]] = {}
        self._last_sent: dict[str, float] = {}
        self._spacing: dict[str, float] = {}
        self._condition = threading.Condition()
        self.pushes = 0

    def notify(self, environment: str, changed: set[str]) -> None:
        if not changed:
            return
        with self._condition:
            self._pending.setdefault(environment, set()).update(changed)
            self._condition.notify()

    def _due(self, now: float) -> tuple[list[tuple[str, set[str]]], float]:
        """Pop the pushes due now; return them and how long to wait for the next one."""
        due: list[tuple[str, set[str]]] = []
        wait = 1.0
        for environment, fields in list(self._pending.items()):
            at = self._last_sent.get(environment, 0.0) + self._spacing.get(
                environment, self.interval
            )
            if now >= at:
                due.append((environment, fields))
                del self._pending[environment]
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
                started = time.monotonic()
                try:
                    send_now(environment, changed, state=self.state)
                    self.pushes += 1
                except Exception:
                    logger.exception("Could not push live changes of %s", environment)
                # Measured from the end of a push, and figures pushes that take long
                # to render come less often: state changes keep most of the CPU.
                self._last_sent[environment] = time.monotonic()
                if not self.state:
                    self._spacing[environment] = max(
                        self.interval, 4 * (self._last_sent[environment] - started)
                    )
            connections.close_all()  # idle until the next change: hold no connection


_pushers: dict[bool, LivePusher] = {}
_lock = threading.Lock()


def notify(environment: str, changed: set[str], *, urgent: bool) -> None:
    """Hand changes to this process's pusher for state changes, or the one for figures.

    They run in separate threads, so a transition never waits behind a large
    refresh of figures.
    """
    if not changed:
        return
    with _lock:
        pusher = _pushers.get(urgent)
        if pusher is None or not pusher.is_alive():
            pusher = _pushers[urgent] = LivePusher(state=urgent)
            pusher.start()
    pusher.notify(environment, changed)


@receiver(row_changed, dispatch_uid="controlplane.live.push.announce_row")
def announce_row(sender: object, *, environment: str, field: str, **kwargs: object) -> None:
    """A committed change of a policy's row (settings, tags, override): the next state push."""
    notify(environment, {field}, urgent=True)
