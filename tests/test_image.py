"""The Docker image's start command, run directly from a virtual environment built the
way the Dockerfile builds it (no Docker engine runs here)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from controlplane.embedded_redis import RedisServer, free_port
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _dockerfile_cmd() -> list[str]:
    import json

    line = next(
        line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD ")
    )
    return list(json.loads(line.removeprefix("CMD ")))


@pytest.mark.timeout(600)
def test_image_start_command_serves_from_a_fresh_virtualenv(tmp_path: Path) -> None:
    # Build stage: a venv with the package installed (not editable), static collected.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "manage.py"):
        shutil.copy(ROOT / name, src / name)
    for name in ("controlplane", "templates", "static"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", ".[server]"],
        cwd=src,
        check=True,
        timeout=500,
    )
    app = tmp_path / "app"
    app.mkdir()
    for name in ("manage.py",):
        shutil.copy(src / name, app / name)
    for name in ("templates", "static"):
        shutil.copytree(src / name, app / name)
    redis_server = RedisServer(tmp_path / "redis")
    redis_server.start()
    env = {
        "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
        "CONTROLPLANE_HOME": str(app),
        "CONTROLPLANE_VAR_DIR": str(tmp_path / "var"),
        "STATIC_ROOT": str(app / "staticfiles"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "REDIS_URL": redis_server.url,
        "SECRET_KEY_FILE": str(tmp_path / "secret"),
        "SECURE_SSL_REDIRECT": "false",
    }
    (tmp_path / "secret").write_text("image-test-secret-key-7b3e9f1a5d2c8064-MzQxRtVwKpLnYsHj")
    subprocess.run(
        [python, "manage.py", "collectstatic", "--noinput", "-v0"], cwd=app, env=env, check=True
    )
    subprocess.run(
        [python, "manage.py", "migrate", "--noinput", "-v0"], cwd=app, env=env, check=True
    )
    # The image's CMD, on a free loopback port.
    port = free_port()
    command = _dockerfile_cmd()
    command[command.index("--bind") + 1] = "127.0.0.1"
    command[command.index("--port") + 1] = str(port)
    server = subprocess.Popen(
        command, cwd=app, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _status(f"{base}/healthz") == 200, timeout=60)
        assert _status(f"{base}/login/") == 200
        assert _status(f"{base}/static/css/app.css") == 200  # collected and served by WhiteNoise
        assert _status(f"{base}/readyz") == 200
    finally:
        server.terminate()
        server.wait(timeout=10)
        redis_server.stop()
