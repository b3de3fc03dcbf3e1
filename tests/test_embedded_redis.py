from __future__ import annotations

from pathlib import Path

import redis

from controlplane.embedded_redis import ensure_embedded_redis


def test_embedded_redis_starts_once_and_is_reused(tmp_path: Path) -> None:
    socket_path = tmp_path / "redis.sock"
    try:
        assert ensure_embedded_redis(socket_path) is True
        assert ensure_embedded_redis(socket_path) is False
        client = redis.Redis(unix_socket_path=str(socket_path))
        assert client.ping()
        assert client.config_get("save") == {"save": ""}
    finally:
        redis.Redis(unix_socket_path=str(socket_path)).shutdown(nosave=True)
