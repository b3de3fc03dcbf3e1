"""Login attempts are throttled by the product's own rate limiter.

The control plane is a client of itself: the limiter ``login`` of the
environment named by ``CONTROLPLANE_SELF_ENVIRONMENT`` (default
``controlplane``) counts attempts per source IP. Its code default allows 10
attempts per 5 minutes; an admin can tune it by creating that rate-limit policy
in that environment. The first refusal of a burst is written to the audit log,
with the attempted username (whatever the form sent) cut to fit its columns:
a write the database refuses must never hide a burst.
"""

from __future__ import annotations

import threading

import redis
from django.conf import settings
from django.db import models

from controlplane.accounts.actors import Actor
from controlplane.audit.models import AuditEntry
from controlplane.audit.record import record
from controlplane.client import Client
from controlplane.client.client import LimiterOptions
from controlplane.client.limiter import Decision
from controlplane.redis_connection import get_redis

LOGIN_LIMITER = "login"
LOGIN_DEFAULTS: LimiterOptions = {
    "algorithm": "sliding_window",
    "limit": 10,
    "period": 300,
    "key": "ip",
    "on_redis_error": "local",
}

_clients: dict[tuple[str, str, str], Client] = {}
_lock = threading.Lock()


def _self_client() -> Client:
    key = (settings.REDIS_URL, settings.REDIS_KEY_PREFIX, settings.CONTROLPLANE_SELF_ENVIRONMENT)
    client = _clients.get(key)
    if client is None:
        with _lock:
            client = _clients.get(key)
            if client is None:
                get_redis()  # starts the embedded Redis if that is what we use
                client = Client(
                    settings.REDIS_URL,
                    environment=settings.CONTROLPLANE_SELF_ENVIRONMENT,
                    service="controlplane",
                    key_prefix=settings.REDIS_KEY_PREFIX,
                    start_timeout=0.5,
                ).start()
                _clients[key] = client
    return client


def check_login_attempt(ip: str | None, username: str) -> Decision:
    """Count one login attempt from ``ip`` (None: not an address); audit a burst's first refusal.

    Attempts whose address is unknown share one count.
    """
    source = ip or "unknown"
    decision = _self_client().limiter(LOGIN_LIMITER, **LOGIN_DEFAULTS).hit(f"ip:{source}")
    if not decision.allowed and _first_refusal(source, decision):
        record(
            Actor(name=_clipped(username or "(unknown)", "actor_name"), ip=ip),
            "login.failed_burst",
            kind="login",
            name=_clipped(username, "object_name"),
            reason=f"Too many login attempts from {source}; "
            f"refused for {decision.retry_after:.0f}s.",
        )
    return decision


def _clipped(text: str, column: str) -> str:
    """``text`` cut to fit the audit log's ``column``, ending in "…" when it was cut."""
    field = AuditEntry._meta.get_field(column)
    limit = (field.max_length if isinstance(field, models.Field) else None) or len(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _first_refusal(source: str, decision: Decision) -> bool:
    marker = f"{{{settings.REDIS_KEY_PREFIX}:login-burst:{source}}}"
    try:
        ttl = max(1, int(decision.reset_after) or 1)
        return bool(get_redis().set(marker, "1", nx=True, ex=ttl))
    except redis.RedisError:
        return True


def close_clients() -> None:
    """Stop the self-clients (tests use a key prefix each, hence a client each)."""
    with _lock:
        for client in _clients.values():
            client.close()
        _clients.clear()
