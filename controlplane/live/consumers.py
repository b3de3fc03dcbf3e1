"""Websocket of the live pages: pushes re-rendered widgets, coalesced, to each viewer."""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from redis.exceptions import RedisError

from controlplane.accounts.context_processors import abilities
from controlplane.accounts.roles import Role, has_role
from controlplane.live.push import group_name, overview_group
from controlplane.live.widgets import render_push
from controlplane.metrics import WEBSOCKETS
from controlplane.policies.models import Environment

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_TRY_AGAIN_LATER = 1013  # the channel layer's Redis does not answer; the page reconnects

logger = logging.getLogger(__name__)


class LiveConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    environment: Environment
    can: dict[str, bool]

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if not await database_sync_to_async(has_role)(user, Role.VIEWER):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        name = self.scope["url_route"]["kwargs"]["environment"]
        environment = await database_sync_to_async(Environment.objects.filter(name=name).first)()
        if environment is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.environment = environment
        self.can = await database_sync_to_async(abilities)(user)
        self.focus = _focus(self.scope.get("query_string", b""))
        self._dirty: set[str] = set()
        self._flush: asyncio.Task[None] | None = None
        # A policy's page renders its own section from the changed list; the
        # overview gets ready HTML, rendered once for every viewer of its variant.
        if self.focus is None:
            variant = "operator" if self.can["operate"] else "viewer"
            group = overview_group(environment.name, variant)
        else:
            group = group_name(environment.name)
        try:
            await self.channel_layer.group_add(group, self.channel_name)
        except (RedisError, OSError) as exc:
            logger.warning("Refusing a live websocket: the channel layer fails (%s)", exc)
            await self.close(code=CLOSE_TRY_AGAIN_LATER)
            return
        self.group = group
        await self.accept()
        WEBSOCKETS.inc()
        self.counted = True

    async def disconnect(self, code: int) -> None:
        if getattr(self, "counted", False):
            WEBSOCKETS.dec()
        if hasattr(self, "group"):
            try:
                await self.channel_layer.group_discard(self.group, self.channel_name)
            except (RedisError, OSError) as exc:  # its membership expires by itself
                logger.debug("Cannot leave %s (%s)", self.group, exc)
        if getattr(self, "_flush", None) is not None and self._flush is not None:
            self._flush.cancel()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        return None  # actions go through the HTTP forms, which check roles and CSRF

    async def live_html(self, event: dict[str, Any]) -> None:
        if event.get("html"):
            await self.send(text_data=event["html"])

    async def live_changed(self, event: dict[str, Any]) -> None:
        changed = event.get("changed", ())
        if self.focus not in changed and "@instances" not in changed:
            return
        self._dirty.update(changed)
        if self._flush is None or self._flush.done():
            self._flush = asyncio.create_task(self._render_while_dirty())

    async def _render_while_dirty(self) -> None:
        # Changes that arrive while a render runs are taken by the next round.
        while self._dirty:
            changed, self._dirty = self._dirty, set()
            html = await database_sync_to_async(render_push)(
                self.environment, changed, self.can, self.focus
            )
            if html:
                await self.send(text_data=html)


def _focus(query_string: bytes) -> str | None:
    """``?policy=<kind>:<name>``: the page shows one policy's live section."""
    values = parse_qs(query_string.decode("latin-1")).get("policy")
    return values[0] if values else None
