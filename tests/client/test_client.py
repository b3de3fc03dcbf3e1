from __future__ import annotations

import importlib.machinery
import json
import logging
import os
import platform
import subprocess
import sys
import threading
import types
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from prometheus_client import REGISTRY

from controlplane.client import Client, client_settings, snapshot
from controlplane.embedded_redis import RedisServer
from controlplane.policies.models import Policy
from controlplane.protocol.documents import SECTION_POLICIES, change_message
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_client_loads_the_snapshot_at_start(
    set_policy: Callable[..., Policy], client_factory: Callable[..., Client]
) -> None:
    set_policy("config", "checkout.max_items", value_type="integer", value=12)
    client = client_factory().start()
    assert client.config.get("checkout.max_items", default=3) == 12
    assert client.state.revision == 1


def test_client_follows_a_change_pushed_after_start(
    set_policy: Callable[..., Policy], cp_client: Client
) -> None:
    set_policy("config", "banner", value="hello")
    wait_for(lambda: cp_client.config.get("banner") == "hello")
    set_policy("config", "banner", value="bye")
    wait_for(lambda: cp_client.config.get("banner") == "bye")
    assert cp_client.state.revision == 2


def test_config_change_callbacks_fire_with_the_new_value(
    set_policy: Callable[..., Policy], cp_client: Client
) -> None:
    seen: list[tuple[str, Any]] = []
    cp_client.config.on_change("checkout.max_items", lambda key, value: seen.append((key, value)))
    set_policy("config", "checkout.max_items", value_type="integer", value=7)
    wait_for(lambda: seen == [("checkout.max_items", 7)])


def test_unmanaged_config_returns_the_code_default(cp_client: Client) -> None:
    assert cp_client.config.get("not.managed", default=42) == 42


def test_malformed_document_is_ignored_and_the_last_good_kept(
    set_policy: Callable[..., Policy], cp_client: Client, redis_client: redis.Redis
) -> None:
    set_policy("config", "banner", value="good")
    wait_for(lambda: cp_client.config.get("banner") == "good")
    keys = cp_client.keys
    redis_client.hset(keys.policies, "config:banner", '{"schema": 1, "kind": "config"}')

    cp_client.resync()

    assert cp_client.config.get("banner") == "good"
    assert cp_client.state.malformed == 1


def test_client_starts_with_the_good_policies_next_to_undecodable_bytes(
    set_policy: Callable[..., Policy],
    client_factory: Callable[..., Client],
    raw_redis: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Issue 10, item 3: a field name that is not UTF-8 made every snapshot read fail.
    set_policy("config", "banner", value="good")
    set_policy("config", "x", value="also good")
    client = client_factory()
    keys = client.keys
    raw_redis.hset(keys.policies, "config:x", b"\xff")
    raw_redis.hset(keys.policies, b"config:\xfe", b"{}")
    raw_redis.hset(keys.overrides, b"\xff", b"\xff")

    client.start()

    assert client.wait_synced(0)
    assert client.config.get("banner") == "good"
    assert client.config.get("x", default="code default") == "code default"
    client.resync()
    logged = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    assert len(logged) == 3  # once per field and cause, not once per resync
    assert any("config:\\xfe" in line for line in logged)


def test_a_field_turned_to_garbage_keeps_its_last_good_version_and_is_logged_once(
    set_policy: Callable[..., Policy],
    cp_client: Client,
    raw_redis: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    set_policy("config", "banner", value="good")
    wait_for(lambda: cp_client.config.get("banner") == "good")
    raw_redis.hset(cp_client.keys.policies, "config:banner", b"\xff")

    for _ in range(3):  # what the follower's timer does every resync_interval
        cp_client.resync()

    assert cp_client.config.get("banner") == "good"
    assert cp_client.state.malformed == 3  # counted each time...
    logged = [r for r in caplog.records if "config:banner" in r.getMessage()]
    assert len(logged) == 1  # ...logged once


def test_a_gap_in_revisions_triggers_a_resync(
    set_policy: Callable[..., Policy], cp_client: Client, redis_client: redis.Redis
) -> None:
    set_policy("config", "a", value="1")
    wait_for(lambda: cp_client.config.get("a") == "1")
    # Changes 2 and 3 reach Redis but their notifications are lost...
    cp_client.state.revision = 1
    set_policy("config", "b", value="2")
    set_policy("config", "c", value="3")
    wait_for(lambda: cp_client.config.get("c") == "3")
    assert cp_client.config.get("b") == "2"


def test_a_stray_revision_costs_a_minute_of_resyncs_not_every_resync_forever(
    set_policy: Callable[..., Policy],
    cp_client: Client,
    raw_redis: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(snapshot, "BELIEVE_META_AFTER", 2.0)  # 60 s in production
    set_policy("config", "banner", value="one")
    wait_for(lambda: cp_client.config.get("banner") == "one")
    held = cp_client.state.policies["config:banner"]
    resyncs = cp_client.metrics.resyncs.labels(cp_client.environment)

    # Someone with access to Redis publishes a message no control plane wrote.
    stray_document = replace(held, name="other", revision=2**50)
    stray = change_message(SECTION_POLICIES, "config:other", 2**50, stray_document.encode())
    raw_redis.publish(cp_client.keys.changes, stray)
    wait_for(lambda: cp_client.state.revision == 2**50)
    wait_for(lambda: cp_client.state.behind)  # Redis's meta (1) is below it
    before = resyncs._value.get()
    wait_for(lambda: resyncs._value.get() > before, timeout=5)  # catching up, not every 30 s

    # Redis's meta stays at 1: after BELIEVE_META_AFTER the snapshot is believed again.
    wait_for(lambda: cp_client.state.revision == 1 and not cp_client.state.behind, timeout=10)
    assert [r for r in caplog.records if "taking Redis's snapshot" in r.getMessage()]
    set_policy("config", "banner", value="two")  # revision 2, below the stray one
    wait_for(lambda: cp_client.config.get("banner") == "two")
    assert cp_client.state.revision == 2


def test_start_while_redis_is_down_uses_code_defaults_and_catches_up(
    set_policy: Callable[..., Policy],
    client_factory: Callable[..., Client],
    disposable_redis: RedisServer,
) -> None:
    set_policy("config", "banner", value="from the control plane")
    disposable_redis.stop()
    client = client_factory(start_timeout=0.2).start()  # must not raise
    assert client.config.get("banner", default="code default") == "code default"
    disposable_redis.start()
    # Redis restarted empty; the control plane's reconciler is what restores it.
    from controlplane.policies.reconcile import reconcile_all

    reconcile_all()
    wait_for(lambda: client.config.get("banner") == "from the control plane")


def test_only_the_health_probe_retries_while_redis_refuses_connections(
    client_factory: Callable[..., Client], disposable_redis: RedisServer
) -> None:
    disposable_redis.stop()  # connections are refused at once: nothing slows a retry loop
    client = client_factory(start_timeout=0.1, report_interval=0.2).start()
    name = "controlplane_client_redis_errors_total"

    def errors(operation: str) -> float:
        return REGISTRY.get_sample_value(name, {"operation": operation}) or 0

    wait_for(lambda: errors("probe") > 0)
    before = {operation: errors(operation) for operation in ("probe", "report", "follow")}
    threading.Event().wait(1.0)  # observe one second of retrying, whatever it does
    assert client.health.down
    assert 1 <= errors("probe") - before["probe"] <= 10  # backing off to 2 a second at most
    assert errors("report") == before["report"]  # the reporter waits for Redis to be back
    assert errors("follow") == before["follow"]  # and so does the follower
    assert client.config.get("banner", default="still served") == "still served"


def test_snapshot_file_gives_the_last_policies_when_redis_is_down(
    set_policy: Callable[..., Policy],
    client_factory: Callable[..., Client],
    disposable_redis: RedisServer,
    tmp_path: Path,
) -> None:
    snapshot = tmp_path / "policies.json"
    set_policy("config", "banner", value="remembered")
    first = client_factory(snapshot_path=snapshot).start()
    assert first.config.get("banner") == "remembered"
    first.close()
    assert json.loads(snapshot.read_text())["revision"] == 1

    disposable_redis.stop()
    second = client_factory(snapshot_path=snapshot, start_timeout=0.2).start()
    assert second.config.get("banner", default="code default") == "remembered"


def test_close_twice_and_context_manager(client_factory: Callable[..., Client]) -> None:
    with client_factory() as client:
        assert client.wait_synced(5)
    client.close()
    client.close()


# Settings the client does not guess


def test_there_is_no_default_environment_or_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONTROLPLANE_ENVIRONMENT", raising=False)
    monkeypatch.delenv("CONTROLPLANE_REDIS_URL", raising=False)
    with pytest.raises(
        ValueError,
        match=r"^environment: give Client\(environment=\.\.\.\) or set CONTROLPLANE_ENVIRONMENT$",
    ):
        Client(settings.REDIS_URL, service="tests")
    with pytest.raises(
        ValueError,
        match=r"^redis_url: give Client\(redis_url=\.\.\.\) or set CONTROLPLANE_REDIS_URL$",
    ):
        Client(environment="production", service="tests")
    monkeypatch.setenv("CONTROLPLANE_ENVIRONMENT", " ")
    with pytest.raises(
        ValueError, match="^environment: CONTROLPLANE_ENVIRONMENT is set but empty$"
    ):
        Client(settings.REDIS_URL, service="tests")
    with pytest.raises(ValueError, match="^environment: give a non-empty string, not ''$"):
        Client(settings.REDIS_URL, "", "tests")


def test_environment_redis_and_service_come_from_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONTROLPLANE_ENVIRONMENT", "staging")
    monkeypatch.setenv("CONTROLPLANE_REDIS_URL", settings.REDIS_URL)
    monkeypatch.setenv("CONTROLPLANE_SERVICE", "checkout")
    client = Client(key_prefix=settings.REDIS_KEY_PREFIX)
    try:
        assert (client.environment, client.redis_url, client.service) == (
            "staging",
            settings.REDIS_URL,
            "checkout",
        )
        assert client.keys.environment == "staging"
        explicit = Client(settings.REDIS_URL, "production", "billing")
        assert (explicit.environment, explicit.service) == ("production", "billing")
        explicit.close()
    finally:
        client.close()


def test_the_service_is_the_program_never_the_shells_last_argument(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("CONTROLPLANE_SERVICE", raising=False)
    monkeypatch.setenv("_", "/srv/venv/bin/gunicorn")  # what $_ said under gunicorn
    main = types.ModuleType("__main__")
    main.__spec__ = None
    monkeypatch.setitem(sys.modules, "__main__", main)
    monkeypatch.setattr(sys, "argv", ["/srv/app/bin/worker.py", "--queue", "mail"])
    client = Client(settings.REDIS_URL, "production")
    client.close()
    assert client.service == "worker"

    main.__spec__ = importlib.machinery.ModuleSpec("billing.jobs.__main__", None)
    assert client_settings.service_name(None) == "billing.jobs"  # python -m billing.jobs

    main.__spec__ = None
    monkeypatch.setattr(sys, "argv", ["/srv/venv/bin/gunicorn", "app.wsgi"])
    monkeypatch.setattr(client_settings, "_launcher_logged", False)
    with caplog.at_level(logging.WARNING, logger="controlplane.client"):
        names = [client_settings.service_name(None) for _ in range(3)]
    assert names == ["gunicorn"] * 3
    [line] = [r.getMessage() for r in caplog.records if "launched" in r.getMessage()]
    assert "'gunicorn'" in line and "CONTROLPLANE_SERVICE" in line

    monkeypatch.setattr(sys, "argv", ["-c"])
    assert client_settings.service_name(None) == "python"
    assert client_settings.service_name("") == "python"  # empty means not given


def test_heartbeat_registers_the_instance(cp_client: Client, redis_client: redis.Redis) -> None:
    raw = wait_for(lambda: redis_client.hget(cp_client.keys.instances, cp_client.instance_id))
    heartbeat = json.loads(raw)
    assert heartbeat["pid"] == os.getpid()
    assert heartbeat["service"] == "tests"
    assert heartbeat["revision"] == cp_client.state.revision
    assert heartbeat["implementation"] == {
        "name": "controlplane.client",
        "version": heartbeat["library_version"],
        "language": "python",
        "language_version": platform.python_version(),
    }


def test_unmanaged_names_are_reported_as_discovered(
    cp_client: Client, redis_client: redis.Redis
) -> None:
    cp_client.config.get("feature.flag", default=True)

    def discovered() -> list[dict[str, Any]]:
        entries = redis_client.xrange(cp_client.keys.reports)
        return [
            json.loads(fields["data"]) for _, fields in entries if fields["type"] == "discovered"
        ]

    assert wait_for(discovered) == [{"policy": "config:feature.flag", "defaults": {"value": True}}]


FORK_CHILD = """
import os, sys, time
from controlplane.client import Client
client = Client(sys.argv[1], environment="production", key_prefix=sys.argv[2]).start()
pid = os.fork()
if pid == 0:
    deadline = time.monotonic() + 20
    while client.config.get("banner") != "after fork":
        if time.monotonic() > deadline:
            os._exit(1)
        time.sleep(0.01)
    os._exit(0)
print("forked", flush=True)
sys.stdin.readline()
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_forked_child_follows_a_change_made_after_the_fork(
    set_policy: Callable[..., Policy], settings: Any
) -> None:
    set_policy("config", "banner", value="before fork")
    process = subprocess.Popen(
        [sys.executable, "-c", FORK_CHILD, settings.REDIS_URL, settings.REDIS_KEY_PREFIX],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdin is not None
    assert process.stdout.readline().strip() == "forked"
    set_policy("config", "banner", value="after fork")
    process.stdin.write("\n")
    process.stdin.flush()
    assert process.wait(timeout=30) == 0


FORK_WHILE_A_THREAD_HOLDS_THE_POOL = """
import os, sys, threading, time
from controlplane.client import Client
client = Client(sys.argv[1], environment="production", key_prefix=sys.argv[2]).start()
pool = getattr(client.redis, "connection_pool", None)  # a cluster: one node's
pool = pool or client.redis.get_default_node().redis_connection.connection_pool
held, release = threading.Event(), threading.Event()

def hold():  # as the follower or the reporter may, at the moment of fork()
    with pool._lock:
        held.set()
        release.wait()

threading.Thread(target=hold, daemon=True).start()
held.wait()
pid = os.fork()
if pid == 0:
    client.config.get("banner")
    works = client.redis.exists(sys.argv[2] + ":nothing") == 0  # its own connection
    client.close()
    os._exit(0 if works else 1)
release.set()
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        sys.exit(os.waitstatus_to_exitcode(status))
    time.sleep(0.05)
os.kill(pid, 9)
sys.exit("the child hung")
"""


def test_a_child_forked_while_a_thread_holds_the_redis_pool_does_not_hang(settings: Any) -> None:
    # redis-py resets an inherited pool under the pool's locks; one held by a thread
    # of the parent at fork() stayed held in the child, which waited forever.
    process = subprocess.run(
        [sys.executable, "-c", FORK_WHILE_A_THREAD_HOLDS_THE_POOL]
        + [settings.REDIS_URL, settings.REDIS_KEY_PREFIX],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 0, process.stderr
