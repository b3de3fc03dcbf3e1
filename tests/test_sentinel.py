"""Redis Sentinel: the URL, the control plane and the client through a failover.

The servers (a primary, a replica, three sentinels) are real processes on
loopback ports (tests/sentinel.py).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.connection
from channels_redis.core import RedisChannelLayer
from django.conf import settings as django_settings
from redis.backoff import NoBackoff
from redis.retry import Retry

from controlplane.accounts.actors import Actor
from controlplane.client import CircuitOpenError, Client, RateLimitExceeded
from controlplane.client.health import shown_url
from controlplane.policies.actions import do_create_policy, do_update_policy
from controlplane.policies.models import Environment, Policy
from controlplane.policies.reconcile import Reconciler
from controlplane.protocol.connection import (
    SentinelUrl,
    channel_layer_host,
    check_primary,
    check_url,
    connect,
    connect_async,
    parse_sentinel_url,
    take_over_after_fork,
)
from controlplane.protocol.documents import PolicyDocument
from controlplane.protocol.scripts import LuaScript, arun
from controlplane.redis_connection import get_redis
from tests.conftest import use_redis, wait_for
from tests.sentinel import SentinelServers

NO_RETRY = Retry(NoBackoff(), 0)

# The URL


def test_a_full_sentinel_url_is_read() -> None:
    url = (
        "redis+sentinel://app:s%40cret@10.0.0.1:26379,[::1]:26380,sentinel-3/cp-primary/2"
        "?socket_timeout=0.5&sentinel_password=watch&sentinel_username=ops"
    )
    assert parse_sentinel_url(url) == SentinelUrl(
        sentinels=(("10.0.0.1", 26379), ("::1", 26380), ("sentinel-3", 26379)),
        service="cp-primary",
        db=2,
        username="app",
        password="s@cret",
        tls=False,
        sentinel_username="ops",
        sentinel_password="watch",
        options=(("socket_timeout", "0.5"),),
    )


def test_the_data_nodes_and_the_sentinels_get_their_own_credentials() -> None:
    address = parse_sentinel_url(
        "rediss+sentinel://:data@h:1/svc?ssl_cert_reqs=none&sentinel_password=watch"
    )
    options = address.connection_options(redis.connection.parse_url)
    assert options == {"db": 0, "password": "data", "ssl": True, "ssl_cert_reqs": "none"}
    sentinel = address.sentinel_options({**options, "socket_timeout": 0.2, "retry": None})
    assert sentinel == {"socket_timeout": 0.2, "retry": None, "password": "watch"}


def test_a_url_without_password_gives_none_to_anyone() -> None:
    address = parse_sentinel_url("redis+sentinel://h/svc/")
    assert (address.password, address.sentinel_password, address.db) == (None, None, 0)
    assert address.sentinel_options({}) == {}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel:///svc", "no sentinel host"),
        ("redis+sentinel://:pw@/svc", "no sentinel host"),
        ("redis+sentinel://h1,,h2/svc", "empty sentinel address"),
        ("redis+sentinel://:26379/svc", "':26379' in the Redis URL: no host"),
        ("redis+sentinel://h:port/svc", "the port must be a number"),
        ("redis+sentinel://h:0/svc", "the port must be a number"),
        ("redis+sentinel://h:70000/svc", "the port must be a number"),
        ("redis+sentinel://h:/svc", "no port after ':'"),
        ("redis+sentinel://[::1/svc", "use [IPv6]:port"),
        ("redis+sentinel://h:26379", "no service name"),
        ("redis+sentinel://h:26379/", "no service name"),
        ("redis+sentinel://h:26379//0", "no service name"),
        ("redis+sentinel://h/svc/zero", "database 'zero'"),
        ("redis+sentinel://h/svc/-1", "database '-1'"),
        ("redis+sentinel://h/svc/0/extra", "use /<service name>[/<db>]"),
        ("redis+sentinel://h/svc?cluster=true", "cluster=true with a Sentinel URL"),
        ("redis+sentinel://h/svc?db=3", "put the database after the service name"),
        ("redis+sentinel://h/svc?socket_timeout=soon", "Invalid value for 'socket_timeout'"),
        ("redis://h/svc", "not a Sentinel URL"),
    ],
)
def test_a_malformed_sentinel_url_is_refused_naming_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_sentinel_url(url)
    assert message in str(raised.value)
    if url.startswith("redis+sentinel"):
        with pytest.raises(ValueError):
            check_url(url)  # what the settings call


def test_cluster_false_is_allowed_and_dropped() -> None:
    assert parse_sentinel_url("redis+sentinel://h/svc?cluster=false").options == ()


def test_the_channel_layer_gets_channels_redis_sentinel_host() -> None:
    host = channel_layer_host("redis+sentinel://:pw@a:1,b:2/svc/3?sentinel_password=s")
    assert host == {
        "sentinels": [("a", 1), ("b", 2)],
        "master_name": "svc",
        "sentinel_kwargs": {"password": "s"},
        "db": 3,
        "password": "pw",
    }
    assert channel_layer_host("redis://h:6379/0") == "redis://h:6379/0"


def test_creating_a_client_needs_no_sentinel_and_a_call_fails_as_redis_errors_do() -> None:
    client = connect("redis+sentinel://127.0.0.1:9/svc", socket_timeout=0.5, retry=NO_RETRY)
    with pytest.raises(redis.ConnectionError):
        client.ping()


# Real servers


@pytest.fixture
def sentinel(settings: Any, tmp_path: Path) -> Iterator[SentinelServers]:
    servers = SentinelServers(tmp_path / "sentinel")
    try:
        servers.start()
        use_redis(settings, servers.url)
        yield servers
    finally:
        servers.stop()


def _client(sentinel: SentinelServers) -> Client:
    return Client(
        sentinel.url,
        environment="production",
        service="tests",
        key_prefix=django_settings.REDIS_KEY_PREFIX,
        start_timeout=5,
    )


@pytest.mark.django_db(transaction=True)
def test_a_policy_published_through_sentinel_reaches_a_client(
    sentinel: SentinelServers, production: Environment, system: Actor
) -> None:
    do_create_policy(production, "config", "banner", {"value": "hello"}, system)
    client = _client(sentinel).start()
    try:
        wait_for(lambda: client.connected)
        assert client.config.get("banner") == "hello"
        policy = Policy.objects.get(environment=production, kind="config", name="banner")
        do_update_policy(policy, {"value": "pushed"}, system)
        wait_for(lambda: client.config.get("banner") == "pushed")
        # Both wrote to the primary the sentinels name.
        primary = redis.Redis(port=sentinel.primary.port)
        assert primary.hget(production.keys().policies, "config:banner")
    finally:
        client.close()


def _published(environment: Environment, field: str) -> PolicyDocument | None:
    try:
        raw = get_redis().hget(environment.keys().policies, field)
    except redis.RedisError:
        return None
    return PolicyDocument.decode(raw) if raw else None


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("how", ["sentinel failover", "primary killed"])
def test_a_failover_under_client_load_loses_no_policy_change(
    how: str, sentinel: SentinelServers, production: Environment, system: Actor
) -> None:
    do_create_policy(
        production, "breaker", "payments", {"minimum_calls": 5, "window_size": 10}, system
    )
    do_create_policy(
        production,
        "rate_limit",
        "api",
        {"algorithm": "token_bucket", "limit": 100_000, "period": 1, "burst": 100_000},
        system,
    )
    banner = do_create_policy(production, "config", "banner", {"value": "0"}, system)
    reconciler = Reconciler(interval=0.1, full_interval=2)
    reconciler.start()
    client = _client(sentinel).start()
    breaker = client.breaker("payments")
    limiter = client.limiter("api")

    @breaker
    def pay() -> None:
        pass

    seen: Counter[str] = Counter()
    unexpected: list[BaseException] = []
    stop = threading.Event()

    def traffic(worker: int) -> None:
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                limiter.hit(f"user:{worker}")
                pay()
                client.config.get("banner", "")
                seen["decided"] += 1
            except (CircuitOpenError, RateLimitExceeded) as exc:
                seen[type(exc).__name__] += 1
            except BaseException as exc:  # anything else reached the caller: a bug
                unexpected.append(exc)
            time.sleep(0.002)

    saved: list[int] = []

    def save(value: int) -> None:
        banner.refresh_from_db()
        do_update_policy(banner, {"value": str(value)}, system)
        saved.append(value)

    workers = [threading.Thread(target=traffic, args=(n,)) for n in range(3)]
    for worker in workers:
        worker.start()
    try:
        wait_for(lambda: client.config.get("banner") == "0" and seen["decided"] > 50)
        save(1)
        old, new = sentinel.primary.port, sentinel.replica.port
        started = time.monotonic()
        if how == "sentinel failover":
            sentinel.failover()
        else:
            sentinel.kill_primary()
        # The control plane saves changes all through the failover.
        value = 1
        while sentinel.primary_port() != new:
            value += 1
            save(value)
            assert time.monotonic() - started < 30, "the sentinels did not promote the replica"
        switched = time.monotonic() - started
        decided_at_switch = seen["decided"]
        value += 1
        save(value)  # saved once the sentinels name the new primary
        pool: Any = client.redis.connection_pool
        wait_for(lambda: pool.master_address == ("127.0.0.1", new), timeout=30)
        wait_for(lambda: client.config.get("banner") == str(value), timeout=30)
        followed = time.monotonic() - started
        wait_for(lambda: seen["decided"] > decided_at_switch + 50)  # still deciding
        # Scripts run on the new primary (which answers NOSCRIPT first: its script
        # cache did not come with the data).
        wait_for(lambda: limiter.hit("user:probe").source == "redis", timeout=15)
        stats: Any = redis.Redis(port=new).info("commandstats")
        assert stats["cmdstat_eval"]["calls"] > 0  # sent whole after a NOSCRIPT
        print(
            f"\n{how}: sentinels switched after {switched:.2f} s, client followed after "
            f"{followed:.2f} s, {seen['decided']} calls decided"
        )
        assert followed < 30
        # No change lost: the new primary and the client end with the last one.
        production.refresh_from_db()
        wait_for(
            lambda: (
                (doc := _published(production, "config:banner")) is not None
                and doc.spec["value"] == str(value)
            ),
            timeout=15,
        )
        wait_for(lambda: client.state.revision == production.revision, timeout=15)
        assert client.config.get("banner") == str(value) and saved[-1] == value
        assert old != new
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=30)
        client.close()
        reconciler.stop()
    assert unexpected == []
    assert seen["decided"] > 0


def test_logs_hide_both_passwords_of_a_sentinel_url() -> None:
    url = "redis+sentinel://app:secret@h1:1,h2:2/svc/0?sentinel_password=watch&socket_timeout=1"
    shown = shown_url(url)
    assert "secret" not in shown and "watch" not in shown
    assert shown == (
        "redis+sentinel://app:***@h1:1,h2:2/svc/0?sentinel_password=***&socket_timeout=1"
    )


def test_check_primary_is_false_without_sentinel_or_without_an_answer() -> None:
    assert check_primary(redis.Redis(port=9)) is False
    unreachable = connect("redis+sentinel://127.0.0.1:9/svc", retry=NO_RETRY)  # discard port
    assert check_primary(unreachable) is False


def test_a_forked_child_gets_fresh_locks_of_the_sentinel_pools_too() -> None:
    client: Any = connect("redis+sentinel://127.0.0.1:9,127.0.0.1:10/svc")
    sentinels = client.connection_pool.sentinel_manager.sentinels
    before = [sentinel.connection_pool._lock for sentinel in sentinels]
    take_over_after_fork(client)
    after = [sentinel.connection_pool._lock for sentinel in sentinels]
    assert all(old is not new for old, new in zip(before, after, strict=True))


ADDRESS = LuaScript("return redis.call('INFO', 'server'):match('tcp_port:(%d+)')", "address")


async def test_asyncio_clients_and_the_channel_layer_follow_a_killed_primary(
    sentinel: SentinelServers,
) -> None:
    client = connect_async(sentinel.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    layer = RedisChannelLayer(hosts=[channel_layer_host(sentinel.url)], prefix="sentinel-test")
    try:
        assert await arun(client, ADDRESS, ["k"], []) == str(sentinel.primary.port).encode()
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "hello", "n": 1})
        assert (await layer.receive(channel))["n"] == 1

        sentinel.kill_primary()
        deadline = time.monotonic() + 30
        while True:  # calls fail until the sentinels promote the replica, then reach it
            try:
                port = await arun(client, ADDRESS, ["k"], [])
                if port == str(sentinel.replica.port).encode():
                    break
            except redis.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the asyncio client did not follow"
            await asyncio.sleep(0.05)
        # channels-redis does not retry: a push on a connection to the dead primary
        # fails (the live pages skip it); the next one reaches the new primary.
        while True:
            try:
                await layer.send(channel, {"type": "hello", "n": 2})
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "the channel layer did not follow"
        # The replica may still hold channels-redis' receive backup of message 1 (the
        # cleanup was lost with the primary): delivered again, then message 2.
        received = [(await asyncio.wait_for(layer.receive(channel), 10))["n"]]
        while received[-1] != 2:
            received.append((await asyncio.wait_for(layer.receive(channel), 10))["n"])
        assert received in ([2], [1, 2])
    finally:
        await client.aclose()
        await layer.flush()


@pytest.mark.django_db(transaction=True)
def test_asyncio_calls_leave_a_primary_demoted_while_up(
    sentinel: SentinelServers, production: Environment, system: Actor
) -> None:
    # Sentinel reconfigures the old primary (and closes its connections) about 11 s
    # after SENTINEL FAILOVER; until then only the client's own check moves the calls.
    limit = {"algorithm": "token_bucket", "limit": 100_000, "period": 1, "burst": 100_000}
    do_create_policy(production, "rate_limit", "api", limit, system)
    client = _client(sentinel).start()
    loop = asyncio.new_event_loop()
    try:
        limiter = client.limiter("api")
        wait_for(lambda: loop.run_until_complete(limiter.ahit("before")).source == "redis")
        new = redis.Redis(port=sentinel.replica.port)
        started = time.monotonic()
        sentinel.failover()
        wait_for(lambda: sentinel.primary_port() == sentinel.replica.port, timeout=30)

        def on_the_new_primary() -> bool:
            decision = loop.run_until_complete(limiter.ahit("after"))
            return decision.source == "redis" and bool(new.keys("*:rl:api:after*"))

        wait_for(on_the_new_primary, timeout=15)
        assert time.monotonic() - started < 8  # before Sentinel demotes the old primary
    finally:
        client.close()
        loop.close()
