"""The sync summary: instances in sync, applying a change, behind, and gone."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client

from controlplane.accounts.actors import Actor
from controlplane.live import ingest
from controlplane.live.history import _DELETE_UNCHANGED, Forgotten, _delete_unchanged, read_snapshot
from controlplane.live.ingest import (
    GROUP,
    claim_abandoned,
    ensure_group,
    forget_consumers,
    forget_gone,
    read_group,
    trim_processed,
)
from controlplane.policies.actions import do_create_policy
from controlplane.policies.models import Environment
from controlplane.policies.overrides import do_set_override
from controlplane.protocol.documents import MetaDocument
from controlplane.protocol.keys import KeyLayout

pytestmark = pytest.mark.django_db(transaction=True)


def heartbeat(
    client: redis.Redis, environment: Environment, instance: str, revision: int, at: float
) -> None:
    document = {
        "service": "shop",
        "host": "h",
        "pid": 1,
        "library_version": "0.1.0",
        "revision": revision,
        "connected": True,
        "heartbeat_interval": 5.0,  # gone 7.5 s after its last heartbeat
        "at": at,
    }
    client.hset(environment.keys().instances, instance, json.dumps(document))


def published(client: redis.Redis, environment: Environment, at: float) -> None:
    """Say in the meta document that the environment's revision was published at ``at``."""
    moment = datetime.fromtimestamp(at, UTC).isoformat()
    document = MetaDocument(environment.name, environment.revision, moment)
    client.set(environment.keys().meta, document.encode())


def test_each_instance_is_in_sync_applying_behind_or_gone(
    production: Environment, system: Actor, redis_client: redis.Redis
) -> None:
    do_create_policy(production, "breaker", "payments", {}, system)
    production.refresh_from_db()
    now = time.time()
    current, old = production.revision, production.revision - 1
    published(redis_client, production, now - 3)  # the change is 3 s old
    heartbeat(redis_client, production, "synced", current, now - 1)
    heartbeat(redis_client, production, "not-yet", old, now - 4)  # last heard before it
    heartbeat(redis_client, production, "stopped", old, now - 20)  # no heartbeat for 20 s
    heartbeat(redis_client, production, "ancient", old, now - settings.INSTANCES_FORGET_AFTER - 1)

    snapshot = read_snapshot(redis_client, production.keys(), now=now)
    sync = snapshot.sync(current, now=now)

    assert [i.instance for i in sync.in_sync] == ["synced"]
    assert [i.instance for i in sync.applying] == ["not-yet"]
    assert sync.behind == []
    assert [i.instance for i in sync.gone] == ["stopped"]  # "ancient" is no longer listed
    # Past its heartbeat timeout (5 s + 2.5 s) after the change, still old: behind.
    later = snapshot.sync(current, now=now + 5)
    assert [i.instance for i in later.behind] == ["not-yet"]
    assert later.applying == []


def test_a_change_not_yet_published_leaves_instances_applying(
    production: Environment, system: Actor, redis_client: redis.Redis
) -> None:
    do_create_policy(production, "breaker", "payments", {}, system)
    production.refresh_from_db()
    redis_client.delete(production.keys().meta)
    now = time.time()
    heartbeat(redis_client, production, "i1", 0, now)

    sync = read_snapshot(redis_client, production.keys(), now=now).sync(production.revision)

    assert [i.instance for i in sync.applying] == ["i1"] and sync.behind == []


def test_an_override_shows_instances_applying_not_behind(
    client: Client,
    viewer: User,
    production: Environment,
    system: Actor,
    redis_client: redis.Redis,
) -> None:
    do_create_policy(production, "breaker", "payments", {}, system)
    production.refresh_from_db()
    now = time.time()
    for name in ("a", "b", "c"):
        heartbeat(redis_client, production, name, production.revision, now)
    # The override bumps the revision; the instances report it at their next heartbeat.
    do_set_override(production, "breaker", "payments", "forced_open", system, "incident")
    client.force_login(viewer)

    html = client.get("/e/production/live/").content.decode()

    assert 'data-in-sync="0"' in html
    assert 'data-applying="3"' in html and "3 applying" in html
    assert 'data-behind="0"' in html and '<span class="muted" data-behind="0">' in html


def test_an_instance_that_stopped_is_gone_on_the_overview_and_instances_page(
    client: Client,
    viewer: User,
    production: Environment,
    system: Actor,
    redis_client: redis.Redis,
) -> None:
    do_create_policy(production, "breaker", "payments", {}, system)
    production.refresh_from_db()
    now = time.time()
    published(redis_client, production, now - 60)
    heartbeat(redis_client, production, "alive", production.revision, now)
    heartbeat(redis_client, production, "killed", production.revision - 1, now - 20)
    client.force_login(viewer)

    overview = client.get("/e/production/live/").content.decode()
    instances = client.get("/e/production/instances/").content.decode()

    assert 'data-in-sync="1"' in overview and 'data-behind="0"' in overview
    assert 'data-gone="1"' in overview and "1 gone" in overview
    assert "<strong>1</strong> instance reporting" in overview
    assert 'data-instance="killed" data-status="gone"' in instances
    assert 'data-instance="alive" data-status="in_sync"' in instances
    assert "data-behind" not in instances


def test_instances_gone_long_ago_leave_redis_with_their_breaker_states(
    production: Environment, redis_client: redis.Redis, settings: Any
) -> None:
    settings.INSTANCES_FORGET_AFTER = 600.0
    now = time.time()
    keys = production.keys()
    heartbeat(redis_client, production, "live", 1, now - 1)
    heartbeat(redis_client, production, "gone-lately", 1, now - 300)  # still listed as gone
    heartbeat(redis_client, production, "gone-long-ago", 1, now - 601)
    slow = {"service": "batch", "revision": 1, "at": now - 3000, "heartbeat_interval": 3600}
    redis_client.hset(keys.instances, "hourly", json.dumps(slow))  # not yet due: still live
    redis_client.hset(keys.instances, "garbled", b"\xff not json")  # left for readers to skip
    states = {
        "payments|live": f"closed|{now - 5000}",  # an old state of a live instance stays
        "payments|gone-lately": f"open|{now - 300}",
        "payments|gone-long-ago": f"open|{now - 601}",
        "payments|said-goodbye": f"closed|{now - 120}",  # its heartbeat field is gone
        "payments|just-started": f"open|{now - 2}",  # its first heartbeat is on its way
        "payments|hourly": f"closed|{now - 3000}",
    }
    redis_client.hset(keys.live_breaker_states, mapping=states)

    forgotten = forget_gone([production])

    assert (forgotten.instances, forgotten.breaker_states) == (1, 2)
    assert sorted(redis_client.hkeys(keys.instances)) == [
        "garbled",
        "gone-lately",
        "hourly",
        "live",
    ]
    assert sorted(redis_client.hkeys(keys.live_breaker_states)) == [
        "payments|gone-lately",
        "payments|hourly",
        "payments|just-started",
        "payments|live",
    ]
    assert forget_gone([production]) == Forgotten(0, 0)  # nothing more to do


def test_an_instance_that_reports_again_is_not_forgotten(
    production: Environment, redis_client: redis.Redis, settings: Any
) -> None:
    settings.INSTANCES_FORGET_AFTER = 60.0
    keys = production.keys()
    now = time.time()
    heartbeat(redis_client, production, "back", 1, now - 100)
    read = redis_client.hget(keys.instances, "back")
    heartbeat(redis_client, production, "back", 1, now)  # it reports between read and delete

    removed = _delete_unchanged(
        redis_client.register_script(_DELETE_UNCHANGED), keys.instances, [b"back", read]
    )

    assert removed == 0 and redis_client.hexists(keys.instances, "back")


def test_the_control_planes_own_environment_is_pruned_though_it_has_no_row(
    production: Environment, redis_client: redis.Redis, settings: Any
) -> None:
    """The login limiter's client reports to an environment nobody ingests: its stream keeps
    an hour, its instances hash loses the long-gone (docs/protocol.md, 3.1)."""
    settings.INSTANCES_FORGET_AFTER = 600.0
    own = KeyLayout(settings.CONTROLPLANE_SELF_ENVIRONMENT, settings.REDIS_KEY_PREFIX)
    now = time.time()
    two_hours_ago = int((now - 7200) * 1000)
    for i in range(5):
        redis_client.xadd(own.reports, {"type": "heartbeat"}, id=f"{two_hours_ago}-{i}")
    recent = redis_client.xadd(own.reports, {"type": "heartbeat"})
    old = {"service": "controlplane", "revision": 0, "at": now - 700, "heartbeat_interval": 5}
    redis_client.hset(own.instances, "died-without-goodbye", json.dumps(old))
    redis_client.hset(own.instances, "alive", json.dumps({**old, "at": now - 1}))

    forgotten = forget_gone([production])

    assert forgotten.instances == 1
    assert redis_client.hkeys(own.instances) == ["alive"]
    assert [entry_id for entry_id, _ in redis_client.xrange(own.reports)] == [recent]


def test_consumers_long_idle_with_nothing_pending_leave_the_group(
    production: Environment, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = production.keys().reports
    ensure_group(redis_client, stream)
    redis_client.xadd(stream, {"type": "heartbeat"})
    redis_client.xadd(stream, {"type": "heartbeat"})
    read_group(redis_client, "restarted-long-ago", [stream])  # reads one batch: both entries
    redis_client.xack(stream, GROUP, *[i for i, _ in redis_client.xrange(stream)][:1])
    redis_client.xadd(stream, {"type": "heartbeat"})
    read_group(redis_client, "gone-with-nothing-pending", [stream])
    redis_client.xack(stream, GROUP, *[i for i, _ in redis_client.xrange(stream)][2:])
    redis_client.xadd(stream, {"type": "heartbeat"})
    read_group(redis_client, "me", [stream])
    redis_client.xack(stream, GROUP, *[i for i, _ in redis_client.xrange(stream)][3:])
    monkeypatch.setattr(ingest, "CONSUMER_FORGET_MS", 20)
    deadline = time.monotonic() + 5
    while min(c["idle"] for c in redis_client.xinfo_consumers(stream, GROUP)) <= 20:
        assert time.monotonic() < deadline
        time.sleep(0.01)

    assert forget_consumers(redis_client, stream, keep="me") == 1

    # The one still holding an entry stays until the entry is claimed; "me" is never removed.
    names = sorted(c["name"] for c in redis_client.xinfo_consumers(stream, GROUP))
    assert names == ["me", "restarted-long-ago"]


def test_entries_trimmed_while_pending_are_acknowledged_not_kept_pending(
    production: Environment, disposable_redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis 6.2 (the embedded server) keeps them pending, returned without fields for ever."""
    client = redis.Redis.from_url(disposable_redis.url, decode_responses=True)
    stream = production.keys().reports
    ensure_group(client, stream)
    for _ in range(10):
        client.xadd(stream, {"type": "heartbeat"})
    read_group(client, "dead", [stream])
    client.xtrim(stream, maxlen=0)  # the stream moved on while "dead" held them
    client.xadd(stream, {"type": "heartbeat"})
    monkeypatch.setattr(ingest, "CLAIM_IDLE_MS", 0)

    assert claim_abandoned(client, "alive", stream) == []
    assert client.xpending(stream, GROUP)["pending"] == 0


def test_the_stream_keeps_only_what_is_still_to_be_read_or_pending(
    production: Environment, redis_client: redis.Redis
) -> None:
    stream = production.keys().reports
    ensure_group(redis_client, stream)
    ids = [redis_client.xadd(stream, {"type": "heartbeat", "n": n}) for n in range(6)]
    read_group(redis_client, "a", [stream])  # all six delivered to "a"
    redis_client.xack(stream, GROUP, *ids[:2], ids[3])  # ids[2] is still pending
    later = [redis_client.xadd(stream, {"type": "heartbeat", "n": n}) for n in range(6, 8)]

    trim_processed(redis_client, stream)

    kept = [entry_id for entry_id, _ in redis_client.xrange(stream)]
    assert kept == ids[2:] + later  # from the oldest pending on; ids[3] is after it

    redis_client.xack(stream, GROUP, *ids[2:])
    trim_processed(redis_client, stream)
    assert [entry_id for entry_id, _ in redis_client.xrange(stream)] == later  # not read yet

    read_group(redis_client, "a", [stream])
    redis_client.xack(stream, GROUP, *later)
    trim_processed(redis_client, stream)
    assert redis_client.xlen(stream) == 0
