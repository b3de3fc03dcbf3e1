"""The background workers: started on purpose, in the web processes or by ``run_workers``."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from django.test import override_settings

from controlplane.workers.runner import start_enabled_workers
from tests import test_serve
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent


var_dir = test_serve.var_dir  # a short path for the embedded Redis's socket


def _env(var_dir: Path) -> dict[str, str]:
    # As test_serve's app, but the web processes' switches off: they do not apply here.
    off = {
        "RECONCILER_ENABLED": "false",
        "INGEST_ENABLED": "false",
        "WEBHOOKS_ENABLED": "false",
        "ALERTS_ENABLED": "false",
    }
    return {**test_serve._env(var_dir), **off}


def test_run_workers_reconciles_and_ingests_until_sigterm(var_dir: Path) -> None:
    env = _env(var_dir)
    manage = [sys.executable, str(ROOT / "manage.py")]
    for command in (["migrate", "-v0"], ["load_example_policies"]):
        subprocess.run(manage + command, env=env, check=True, cwd=ROOT, timeout=120)
    client = redis.Redis(unix_socket_path=str(var_dir / "redis.sock"), decode_responses=True)
    client.flushall()  # as if Redis had restarted empty
    workers = subprocess.Popen(
        [*manage, "run_workers"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: client.hlen("{rcp:production}:policies") == 7, timeout=30)
        # The ingest joined the reports' consumer group.
        wait_for(lambda: client.exists("{rcp:production}:reports") == 1, timeout=10)
        assert [g["name"] for g in client.xinfo_groups("{rcp:production}:reports")] == [
            "controlplane"
        ]
        workers.send_signal(signal.SIGTERM)
        _, log = workers.communicate(timeout=20)
        assert workers.returncode == 0, log
    finally:
        if workers.poll() is None:
            workers.kill()
            workers.communicate()
        client.close()
    assert "Workers started: reconciler, ingest, webhooks, alerts" in log
    assert "Got SIGTERM: stopping the workers" in log
    assert "Workers stopped: reconciler, ingest, webhooks, alerts" in log


@pytest.mark.django_db(transaction=True)
def test_the_web_processes_start_only_the_workers_the_settings_enable() -> None:
    only_reconciler = {
        "RECONCILER_ENABLED": True,
        "INGEST_ENABLED": False,
        "WEBHOOKS_ENABLED": False,
        "ALERTS_ENABLED": False,
    }
    with override_settings(**only_reconciler):
        workers = start_enabled_workers()
    try:
        assert list(workers) == ["reconciler"]
        assert workers["reconciler"].is_alive()
    finally:
        for worker in workers.values():
            worker.stop()
    with override_settings(**{**only_reconciler, "RECONCILER_ENABLED": False}):
        assert start_enabled_workers() == {}
