"""The app as ``make run`` serves it: Daphne, embedded Redis, reconciler at start-up."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from controlplane.embedded_redis import free_port
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def var_dir(tmp_path: Path) -> Iterator[Path]:
    # A short path: unix socket paths are limited to about 100 bytes.
    yield tmp_path
    socket_path = tmp_path / "redis.sock"
    if socket_path.exists():
        with contextlib.suppress(redis.RedisError):
            redis.Redis(unix_socket_path=str(socket_path)).shutdown(nosave=True)


def _env(var_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "DATABASE_URL", "DEBUG"}}
    env.update(
        CONTROLPLANE_VAR_DIR=str(var_dir),
        SECRET_KEY="serve-test-secret-key-2f9d4b7a1c6e3058-HsKqVmXtZpWrNyLj",
        DJANGO_SETTINGS_MODULE="controlplane.settings",
        RECONCILE_INTERVAL="0.1",
        SECURE_SSL_REDIRECT="false",
    )
    return env


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def test_daphne_serves_login_and_restores_an_empty_redis_at_start_up(var_dir: Path) -> None:
    env = _env(var_dir)
    manage = [sys.executable, str(ROOT / "manage.py")]
    for command in (["migrate", "-v0"], ["load_example_policies"]):
        subprocess.run(manage + command, env=env, check=True, cwd=ROOT, timeout=120)
    client = redis.Redis(unix_socket_path=str(var_dir / "redis.sock"), decode_responses=True)
    assert client.hlen("{rcp:production}:policies") == 7  # the documented key
    client.flushall()  # as if Redis had restarted empty

    port = free_port()
    daphne = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "controlplane.asgi:application",
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _get(f"http://127.0.0.1:{port}/login/") == 200, timeout=30)
        assert _get(f"http://127.0.0.1:{port}/") == 200  # redirected to the login page
        wait_for(lambda: client.hlen("{rcp:production}:policies") == 7, timeout=10)
        assert client.hlen("{rcp:staging}:policies") == 2
    finally:
        daphne.terminate()
        daphne.wait(timeout=10)
        client.close()
