from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_settings(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DEBUG", "REDIS_URL"}}
    return subprocess.run(
        [sys.executable, "-c", "import controlplane.settings as s; print(s.REDIS_URL, s.DEBUG)"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_refuses_to_start_without_a_secret_key_outside_debug() -> None:
    result = _load_settings()
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def test_debug_has_a_development_secret_and_embedded_redis() -> None:
    result = _load_settings(DEBUG="true")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("unix://") and "redis.sock True" in result.stdout


def test_secret_key_can_come_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-a-file\n")
    result = _load_settings(SECRET_KEY_FILE=str(secret), REDIS_URL="redis://127.0.0.1:1/0")
    assert result.returncode == 0, result.stderr
    assert "redis://127.0.0.1:1/0 False" in result.stdout


def test_a_cluster_for_policies_and_a_server_for_the_channel_layer() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import controlplane.settings as s; "
            "print(s.REDIS_CLUSTER, s.CHANNEL_LAYERS['default']['CONFIG']['hosts'])",
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "SECRET_KEY": "x",
            "REDIS_URL": "rediss://:pw@redis-0:6379/0?cluster=true",
            "CHANNEL_LAYER_URL": "redis://layer:6379/1",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True ['redis://layer:6379/1']"


def test_a_sentinel_url_serves_policies_and_the_channel_layer() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import controlplane.settings as s; "
            "print(s.REDIS_CLUSTER, s.CHANNEL_LAYERS['default']['CONFIG']['hosts'])",
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "SECRET_KEY": "x",
            "REDIS_URL": "redis+sentinel://:pw@s1:26379,s2:26380/cp/1?sentinel_password=w",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "False [{'sentinels': [('s1', 26379), ('s2', 26380)], 'master_name': 'cp', "
        "'sentinel_kwargs': {'password': 'w'}, 'db': 1, 'password': 'pw'}]"
    )


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DEBUG", "sometimes", "DEBUG='sometimes' is not a boolean"),
        ("RECONCILE_INTERVAL", "fast", "RECONCILE_INTERVAL='fast' is not a number"),
        ("REDIS_KEY_PREFIX", "a b", "REDIS_KEY_PREFIX='a b'"),
        ("DATABASE_URL", "nonsense://x", "DATABASE_URL is not a database URL"),
        ("REDIS_URL", "redis://r:6379/0?cluster=maybe", "REDIS_URL: cluster='maybe'"),
        ("REDIS_URL", "redis://r:6379/0?cluster=true", "CHANNEL_LAYER_URL: channels-redis cannot"),
        ("DATABASE_POOL_MAX_SIZE", "0", "DATABASE_POOL_MAX_SIZE='0' must be at least 1"),
        ("REDIS_URL", "redis+sentinel://s1:26379,s2:26379", "REDIS_URL: no service name"),
        ("CHANNEL_LAYER_URL", "redis+sentinel://s1:x/cp", "CHANNEL_LAYER_URL: sentinel address"),
    ],
)
def test_bad_setting_stops_start_up_naming_it(name: str, value: str, message: str) -> None:
    database = {"DATABASE_URL": "postgres://u@db.internal:5432/cp"} if "POOL" in name else {}
    result = _load_settings(SECRET_KEY="x", **database, **{name: value})
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://u@db.internal:5432/cp", "5"),
        ("postgres://u@db.internal:5432/cp?connect_timeout=2", "2"),
    ],
)
def test_postgresql_connections_give_up_after_a_timeout(url: str, expected: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import controlplane.settings as s; "
            "print(s.DATABASES['default']['OPTIONS']['connect_timeout'])",
        ],
        cwd=ROOT,
        env={**os.environ, "SECRET_KEY": "x", "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def _manage(tmp_path: Path, *command: str, **env: str) -> subprocess.CompletedProcess[str]:
    return _run_python(tmp_path, "manage.py", *command, **env)


def _run_python(tmp_path: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run Python in the project with production settings on a throw-away database."""
    clean = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DEBUG"}}
    return subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        env={
            **clean,
            "DJANGO_SETTINGS_MODULE": "controlplane.settings",
            "CONTROLPLANE_VAR_DIR": str(tmp_path),
            "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
            "REDIS_URL": "redis://127.0.0.1:1/0",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


STRONG = "Kq3v-Zp8_rT1wYb6LmN0xHc4JdF9sGa2UeQ7iOk5VnB-yXj_Wt"


@pytest.mark.parametrize(
    ("key", "weakness"),
    [
        ("x", "is too short (1 characters; at least 50)"),
        ("serve-test", "is too short (10 characters; at least 50)"),
        ("ab" * 40, "has too few distinct characters (2; at least 5)"),
        ("django-insecure-" + STRONG, "starts with 'django-insecure-'"),
    ],
)
def test_a_weak_secret_key_fails_the_checks_outside_debug(
    tmp_path: Path, key: str, weakness: str
) -> None:
    result = _manage(tmp_path, "check", SECRET_KEY=key)
    assert result.returncode != 0
    assert f"SECRET_KEY {weakness}" in result.stderr


def test_migrate_refuses_a_weak_secret_key_and_changes_nothing(tmp_path: Path) -> None:
    result = _manage(tmp_path, "migrate", "--noinput", SECRET_KEY="x" * 64)
    assert result.returncode != 0
    assert "SECRET_KEY has too few distinct characters (1; at least 5)" in result.stderr
    database = tmp_path / "db.sqlite3"
    if database.exists():
        with sqlite3.connect(database) as connection:
            assert not connection.execute("SELECT name FROM sqlite_master").fetchall()


@pytest.mark.parametrize(("key", "debug"), [(STRONG, "false"), ("x", "true")])
def test_a_strong_secret_key_or_debug_starts(tmp_path: Path, key: str, debug: str) -> None:
    result = _manage(tmp_path, "check", SECRET_KEY=key, DEBUG=debug)
    assert result.returncode == 0, result.stderr


def _load_asgi(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    workers_off = {"RECONCILER_ENABLED": "false", "INGEST_ENABLED": "false"}
    return _run_python(tmp_path, "-c", "import controlplane.asgi", **workers_off, **env)


def test_daphne_refuses_to_serve_with_a_weak_secret_key_outside_debug(tmp_path: Path) -> None:
    # Daphne runs no system checks: the ASGI application itself refuses.
    weak = _load_asgi(tmp_path, SECRET_KEY="x")
    assert weak.returncode != 0
    assert "ImproperlyConfigured: SECRET_KEY is too short" in weak.stderr
    assert _load_asgi(tmp_path, SECRET_KEY=STRONG).returncode == 0
    assert _load_asgi(tmp_path, SECRET_KEY="x", DEBUG="true").returncode == 0


def _database_settings(**env: str) -> str:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import controlplane.settings as s; d = s.DATABASES['default']; "
            "print(d['CONN_MAX_AGE'], d['OPTIONS'].get('pool'))",
        ],
        cwd=ROOT,
        env={**os.environ, "SECRET_KEY": "x", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_postgresql_connections_come_from_a_pool_per_process() -> None:
    url = "postgres://u@db.internal:5432/cp"

    assert _database_settings(DATABASE_URL=url) == (
        "0 {'min_size': 2, 'max_size': 20, 'timeout': 5.0}"
    )
    assert _database_settings(
        DATABASE_URL=url, DATABASE_POOL_MAX_SIZE="5", DATABASE_POOL_MIN_SIZE="1"
    ) == ("0 {'min_size': 1, 'max_size': 5, 'timeout': 5.0}")
    assert _database_settings(DATABASE_URL=url, DATABASE_POOL="false") == "0 None"
    assert _database_settings(DATABASE_URL="sqlite:////tmp/x.sqlite3") == "0 None"
