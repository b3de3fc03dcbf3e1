"""Login attempts are throttled by the product's own rate limiter.

The control plane is a client of itself: the limiter ``login`` of the
environment named by ``CONTROLPLANE_SELF_ENVIRONMENT`` (default
``controlplane``) counts attempts per source IP. Its code default allows 10
attempts per 5 minutes; an admin can tune it by creating that rate-limit policy
in that environment. The first refusal of a burst is written to the audit log.
"""

from __future__ import annotations

import threading

import redis
from django.conf import settings

from controlplane.accounts.actors import Actor
from controlplane.audit.record import record
from controlplane.client import Client
from controlplane.client.limiter import Decision
from controlplane.redis_connection import get_redis

LOGIN_LIMITER = "login"
LOGIN_DEFAULTS = {
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


def check_login_attempt(ip: str, username: str) -> Decision:
    """Count one login attempt from ``ip``; audit the first refusal of a burst."""
    decision = _self_client().limiter(LOGIN_LIMITER, **LOGIN_DEFAULTS).hit(f"ip:{ip}")
    if not decision.allowed and _first_refusal(ip, decision):
        record(
            Actor(name=username or "(unknown)", ip=ip),
            "login.failed_burst",
            kind="login",
            name=username,
            reason=f"Too many login attempts from {ip}; refused for {decision.retry_after:.0f}s.",
        )
    return decision


def _first_refusal(ip: str, decision: Decision) -> bool:
    marker = f"{{{settings.REDIS_KEY_PREFIX}:login-burst:{ip}}}"
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
