"""The control plane's connection to Redis."""

from __future__ import annotations

import threading
from pathlib import Path

import redis
from django.conf import settings
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from controlplane.embedded_redis import ensure_embedded_redis
from controlplane.protocol.connection import connect

_clients: dict[str, redis.Redis] = {}
_lock = threading.Lock()


def get_redis() -> redis.Redis:
    """Return a client for ``settings.REDIS_URL``, starting the embedded server if needed.

    Timeouts are short and retries off: a Redis outage must make a publish fail
    fast (the reconciler catches up later), never hang a request.
    """
    url: str = settings.REDIS_URL
    client = _clients.get(url)
    if client is not None:
        return client
    with _lock:
        if url not in _clients:
            if settings.EMBEDDED_REDIS:
                ensure_embedded_redis(Path(url.removeprefix("unix://")))
            _clients[url] = connect(
                url,
                decode_responses=True,
                socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
                socket_connect_timeout=settings.REDIS_SOCKET_TIMEOUT,
                health_check_interval=30,
                # One quick retry: it reconnects a pooled socket that a Redis
                # restart closed, without stalling when Redis is really gone.
                retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), 1),
            )
        return _clients[url]


def redis_answers() -> bool:
    """Whether Redis answers now: for /readyz, and for pages that say when a saved change
    awaits the reconciler."""
    try:
        return bool(get_redis().ping())
    except redis.RedisError:
        return False
