"""The client's address behind reverse proxies, for every request and websocket.

With ``TRUSTED_PROXIES`` set to the number of proxies in front of Daphne (a load
balancer: 1), the address is taken from the right end of ``X-Forwarded-For``,
where those proxies wrote it, and given to Django and Channels as the ASGI
``client``. The entries to the left came from the client and are never believed,
unlike Daphne's ``--proxy-headers``, which takes the leftmost. The audit log, the
login throttle and the ``/metrics`` address list all read that address.
"""

from __future__ import annotations

from typing import Any

from controlplane.client.django import forwarded_client

ASGIApp = Any


class TrustedProxies:
    """ASGI middleware: set ``scope["client"]`` from the trusted proxies' ``X-Forwarded-For``."""

    def __init__(self, app: ASGIApp, trusted: int) -> None:
        self.app = app
        self.trusted = trusted

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] in ("http", "websocket"):
            values = [
                value.decode("latin-1")
                for name, value in scope.get("headers", ())
                if name == b"x-forwarded-for"
            ]
            address = forwarded_client(",".join(values), self.trusted)
            if address is not None:
                client = scope.get("client") or (None, 0)
                scope = {**scope, "client": (address, client[1])}
        return await self.app(scope, receive, send)
