"""A tiny Starlette service served by a real uvicorn in tests/client/test_servers.py.

The client is created at import and started in the ASGI lifespan, once per
uvicorn worker process; the ASGI middleware applies the rate limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from controlplane.client import Client
from controlplane.client.asgi import RateLimitMiddleware

client = Client(
    os.environ["CP_REDIS_URL"],
    environment=os.environ.get("CP_ENVIRONMENT", "production"),
    service="catalogue",
    key_prefix=os.environ["CP_KEY_PREFIX"],
    heartbeat_interval=float(os.environ.get("CP_HEARTBEAT", "5")),
    start_timeout=5.0,
)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    astart = getattr(client, "astart", None)
    if astart is not None:
        await astart()
    else:
        await asyncio.to_thread(client.start)
    yield
    await asyncio.to_thread(client.close)


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"hello from {os.getpid()}")


app = Starlette(
    routes=[Route("/api/hello", hello), Route("/ready", hello)],
    middleware=[Middleware(RateLimitMiddleware, rules={"/api/": "api"}, client=client)],
    lifespan=lifespan,
)
