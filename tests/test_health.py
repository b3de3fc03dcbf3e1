from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis
from asgiref.testing import ApplicationCommunicator
from django.core.asgi import get_asgi_application
from django.test import Client

from controlplane.accounts.actors import Actor
from controlplane.embedded_redis import RedisServer
from controlplane.live.ingest import process_entries
from controlplane.ops.proxy import TrustedProxies
from controlplane.policies.actions import do_create_policy
from controlplane.policies.models import Environment

pytestmark = pytest.mark.django_db(transaction=True)


def test_healthz_answers_anyone(client: Client) -> None:
    response = client.get("/healthz")
    assert (response.status_code, response.content) == (200, b"ok\n")


def test_readyz_ready_names_only_its_checks(
    client: Client, production: Environment, system: Actor
) -> None:
    do_create_policy(production, "cache", "prices", {}, system)
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "checks": {"database": "ok", "redis": "ok", "reconciler": "ok"},
    }


def test_readyz_fails_when_redis_is_down(
    client: Client, disposable_redis: RedisServer, production: Environment
) -> None:
    disposable_redis.stop()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["redis"] == "failing"


def test_readyz_fails_while_redis_is_behind_the_database(
    client: Client, production: Environment, system: Actor, redis_client: redis.Redis
) -> None:
    do_create_policy(production, "cache", "prices", {}, system)
    redis_client.delete(production.keys().meta)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["reconciler"] == "failing"


def test_metrics_refused_to_other_addresses(client: Client) -> None:
    assert client.get("/metrics", REMOTE_ADDR="10.9.9.9").status_code == 403


def test_metrics_with_a_token(client: Client, settings: Any) -> None:
    settings.METRICS_TOKEN = "s3cret"
    assert client.get("/metrics").status_code == 403
    response = client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
    assert response.status_code == 200


def test_metrics_show_the_control_plane_and_the_fleet(
    client: Client, production: Environment, system: Actor, redis_client: redis.Redis
) -> None:
    do_create_policy(production, "breaker", "payments", {}, system)
    redis_client.hset(production.keys().instances, "i1", json.dumps({"at": time.time()}))
    process_entries(
        production,
        [
            (
                "1-0",
                {
                    "type": "counters",
                    "instance": "i1",
                    "data": json.dumps(
                        {
                            "at": time.time() - 2,
                            "policies": {
                                "breaker:payments": {"calls": 10, "failures": 5, "state": "open"},
                                "cache:prices": {"hits": 3, "misses": 1},
                            },
                        }
                    ),
                },
            )
        ],
    )
    text = client.get("/metrics").content.decode()
    assert "controlplane_publishes_total" in text
    assert 'controlplane_reports_ingested_total{type="counters"}' in text
    assert (
        'controlplane_fleet_breaker_instances{breaker="payments",environment="production",'
        'state="open"} 1.0'
    ) in text
    assert (
        'controlplane_fleet_cache_hit_ratio{cache="prices",environment="production"} 0.75' in text
    )
    assert 'counter="failures",environment="production",policy="breaker:payments"} 1.0' in text


def test_security_headers(client: Client) -> None:
    response = client.get("/login/")
    assert "frame-ancestors 'none'" in response["Content-Security-Policy"]
    assert "script-src 'self'" in response["Content-Security-Policy"]
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"


def test_check_deploy_with_production_settings_reports_nothing() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECURE_SSL_REDIRECT"}}
    env.update(
        SECRET_KEY="k" * 20 + "-production-like-secret-" + "x" * 30,
        DJANGO_SETTINGS_MODULE="controlplane.settings",
        ALLOWED_HOSTS="cp.example.com",
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_production_cookies_are_secure_and_http_only() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "DEBUG"}
    env.update(SECRET_KEY="x" * 60, DJANGO_SETTINGS_MODULE="controlplane.settings")
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.SESSION_COOKIE_SECURE, s.SESSION_COOKIE_HTTPONLY, s.CSRF_COOKIE_SECURE, "
        "s.SECURE_SSL_REDIRECT, s.SECURE_HSTS_SECONDS)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.split() == ["True", "True", "True", "True", "31536000"], result.stderr


def test_probes_answer_whatever_the_host_while_pages_check_it(
    client: Client, settings: Any
) -> None:
    settings.ALLOWED_HOSTS = ["controlplane.example.com"]
    # An orchestrator probing a replica by its pod address:
    assert client.get("/healthz", HTTP_HOST="10.0.0.7:8000").status_code == 200
    assert client.get("/readyz", HTTP_HOST="10.0.0.7:8000").status_code in (200, 503)
    assert client.get("/metrics", HTTP_HOST="10.0.0.7:8000").status_code == 200  # loopback
    assert client.get("/login/", HTTP_HOST="10.0.0.7:8000").status_code == 400


async def _status_through(application: Any, path: str, peer: str, forwarded_for: str) -> int:
    communicator = ApplicationCommunicator(
        application,
        {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"127.0.0.1"), (b"x-forwarded-for", forwarded_for.encode())],
            "client": (peer, 40000),
            "server": ("127.0.0.1", 8000),
        },
    )
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(timeout=10)
    await communicator.receive_output(timeout=10)  # the body
    status: int = start["status"]
    return status


async def test_the_client_address_comes_from_the_trusted_proxy_only() -> None:
    # One load balancer in front (its own address 10.0.0.2) appends the address it saw.
    application = TrustedProxies(get_asgi_application(), 1)
    # A client forging "127.0.0.1" on the left does not pass the loopback-only /metrics.
    assert (
        await _status_through(application, "/metrics", "10.0.0.2", "127.0.0.1, 203.0.113.9") == 403
    )
    # The address the balancer wrote is believed (here, a loopback client).
    assert (
        await _status_through(application, "/metrics", "10.0.0.2", "203.0.113.9, 127.0.0.1") == 200
    )
    # Without trusted proxies the header is ignored: the peer is the balancer.
    plain = get_asgi_application()
    assert await _status_through(plain, "/metrics", "10.0.0.2", "127.0.0.1") == 403
