"""Websocket of the live pages: pushes re-rendered widgets, coalesced, to each viewer.

What a viewer may see is checked again before a push goes out, at most every
``RECHECK_AFTER`` seconds: the session must still log its user in (not logged
out, not deactivated) and the user must still hold a role in the page's
environment. If not, the websocket is closed; if the role changed, the page gets
its new role's pushes. The home page gets the cards of the environments its
viewer may view, no others. Every socket of a user also closes at once when
``close_sessions_of`` is called for them (deactivation).
"""

from __future__ import annotations

import asyncio
import logging
import time
from importlib import import_module
from typing import Any
from urllib.parse import parse_qs

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib import auth
from django.db import DatabaseError
from django.http import HttpRequest
from redis.exceptions import RedisError

from controlplane.accounts.roles import Grants, abilities, abilities_in, grants_of
from controlplane.live.push import HOME_GROUP, group_name, overview_group
from controlplane.live.widgets import render_push
from controlplane.ops.metrics import DATABASE_ERRORS, WEBSOCKETS
from controlplane.ops.outage import Outage
from controlplane.policies.models import Environment

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_TRY_AGAIN_LATER = 1013  # the channel layer's Redis does not answer; the page reconnects
# How stale the viewer's session and role may be when a push goes out.
RECHECK_AFTER = 2.0

logger = logging.getLogger(__name__)
_database = Outage(
    logger,
    DATABASE_ERRORS.labels("websocket"),
    "Live websockets cannot check their viewers' sessions: the database fails",
    "The database answers again; live websockets check their viewers' sessions",
)


def user_group(user_id: object) -> str:
    """The group every live socket of one user joins: to close them all at once."""
    return f"user.{user_id}"


def close_sessions_of(user_id: object) -> None:
    """Close every open live page of the user ``user_id`` now, on every replica.

    Pushes check their viewer every ``RECHECK_AFTER`` seconds anyway; this is
    for deactivation, which must not leave a page showing figures meanwhile.
    """
    layer = get_channel_layer()
    if layer is not None:
        async_to_sync(layer.group_send)(user_group(user_id), {"type": "user.revoked"})


class LiveConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    """A live page's websocket: an environment's overview or policy page, or the home page."""

    environment: Environment | None
    can: dict[str, bool]
    grants: Grants

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.grants = await database_sync_to_async(grants_of)(user)
        name = self.scope["url_route"]["kwargs"].get("environment")
        self.can = abilities(self.grants) if name is None else abilities_in(self.grants, name)
        if not self.can["view"]:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        if name is None:  # the home page: the card of every environment it may view
            self.environment = None
        else:
            environment = await database_sync_to_async(
                Environment.objects.filter(name=name).first
            )()
            if environment is None:
                await self.close(code=CLOSE_NOT_FOUND)
                return
            self.environment = environment
        self.session_key: str | None = self.scope["session"].session_key
        self.checked_at = time.monotonic()
        self._checking = asyncio.Lock()
        self._refused = False
        self.focus = _focus(self.scope.get("query_string", b""))
        self._dirty: set[str] = set()
        self._flush: asyncio.Task[None] | None = None
        self.user_group = user_group(user.pk)
        try:
            await self.channel_layer.group_add(self._group_for(self.can), self.channel_name)
            await self.channel_layer.group_add(self.user_group, self.channel_name)
        except (RedisError, OSError) as exc:
            logger.warning("Refusing a live websocket: the channel layer fails (%s)", exc)
            await self.close(code=CLOSE_TRY_AGAIN_LATER)
            return
        self.group = self._group_for(self.can)
        await self.accept()
        WEBSOCKETS.inc()
        self.counted = True

    def _group_for(self, can: dict[str, bool]) -> str:
        # A policy's page renders its own section from the changed list; the
        # overview gets ready HTML, rendered once for every viewer of its variant,
        # and so does the home page (the same for every role: it has no controls).
        if self.environment is None:
            return HOME_GROUP
        if self.focus is None:
            return overview_group(self.environment.name, "operator" if can["operate"] else "viewer")
        return group_name(self.environment.name)

    async def disconnect(self, code: int) -> None:
        if getattr(self, "counted", False):
            WEBSOCKETS.dec()
        if hasattr(self, "group"):
            await self._leave()
            await self._discard(self.user_group)
        if getattr(self, "_flush", None) is not None and self._flush is not None:
            self._flush.cancel()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        return None  # actions go through the HTTP forms, which check roles and CSRF

    async def live_html(self, event: dict[str, Any]) -> None:
        group = self.group
        if not event.get("html") or not await self._may_see() or self.group != group:
            return
        # A home card goes to the viewers of its environment only.
        environment = event.get("environment")
        if environment is not None and self.grants.role_in(environment) is None:
            return
        await self.send(text_data=event["html"])  # HTML of the variant the viewer still has

    async def user_revoked(self, event: dict[str, Any]) -> None:
        """``close_sessions_of`` this user: close now, without waiting for a recheck."""
        await self._refuse(CLOSE_UNAUTHENTICATED)

    async def live_changed(self, event: dict[str, Any]) -> None:
        if self._refused:
            return
        changed = event.get("changed", ())
        if self.environment is None or (self.focus not in changed and "@instances" not in changed):
            return
        self._dirty.update(changed)
        if self._flush is None or self._flush.done():
            self._flush = asyncio.create_task(self._render_while_dirty())

    async def _render_while_dirty(self) -> None:
        # Changes that arrive while a render runs are taken by the next round.
        environment = self.environment
        if environment is None:  # the home page gets ready HTML
            return
        while self._dirty:
            changed, self._dirty = self._dirty, set()
            if not await self._may_see():
                return
            html = await database_sync_to_async(render_push)(
                environment, changed, self.can, self.focus
            )
            if html:
                await self.send(text_data=html)

    async def _may_see(self) -> bool:
        """Whether the viewer may still get pushes; checks again after ``RECHECK_AFTER`` s."""
        async with self._checking:
            if self._refused:
                return False
            if time.monotonic() - self.checked_at < RECHECK_AFTER:
                return True
            try:
                grants = await database_sync_to_async(_grants_of_session)(self.session_key)
            except DatabaseError as exc:
                # No logout, deactivation or role change commits while it is down.
                _database.failed(exc)
                self.checked_at = time.monotonic()
                return True
            _database.answered()
            self.checked_at = time.monotonic()
            can = None if grants is None else self._abilities(grants)
            if grants is not None:
                self.grants = grants
            if can is None or not can["view"]:
                await self._refuse(CLOSE_UNAUTHENTICATED if can is None else CLOSE_FORBIDDEN)
                return False
            if can != self.can:
                self.can = can
                if not await self._join(self._group_for(can)):
                    await self._refuse(CLOSE_TRY_AGAIN_LATER)
                    return False
            return True

    def _abilities(self, grants: Grants) -> dict[str, bool]:
        """What ``grants`` allow on this page: in its environment, or anywhere (home)."""
        if self.environment is None:
            return abilities(grants)
        return abilities_in(grants, self.environment.name)

    async def _join(self, group: str) -> bool:
        """Leave the current group for ``group``; False if the channel layer fails."""
        if group == self.group:
            return True
        try:
            await self.channel_layer.group_add(group, self.channel_name)
        except (RedisError, OSError) as exc:
            logger.warning("Closing a live websocket: the channel layer fails (%s)", exc)
            return False
        await self._leave()
        self.group = group
        return True

    async def _leave(self) -> None:
        await self._discard(self.group)

    async def _discard(self, group: str) -> None:
        try:
            await self.channel_layer.group_discard(group, self.channel_name)
        except (RedisError, OSError) as exc:  # its membership expires by itself
            logger.debug("Cannot leave %s (%s)", group, exc)

    async def _refuse(self, code: int) -> None:
        self._refused = True
        self._dirty.clear()
        await self._leave()
        await self.close(code=code)


def _grants_of_session(session_key: str | None) -> Grants | None:
    """What the user whom this session logs in holds now; None when it logs no one in.

    The session is read afresh: logging out deletes it, and Django's own checks
    (an inactive user, a changed password) refuse it as they would a request.
    """
    if session_key is None:
        return None
    request = HttpRequest()
    request.session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    user = auth.get_user(request)
    return grants_of(user) if user.is_authenticated else None


def _focus(query_string: bytes) -> str | None:
    """``?policy=<kind>:<name>``: the page shows one policy's live section."""
    values = parse_qs(query_string.decode("latin-1")).get("policy")
    return values[0] if values else None
