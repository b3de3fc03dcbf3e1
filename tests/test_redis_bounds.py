"""Every Redis key the control plane and the client library write expires, or has a known bound.

A workload of the product's own code paths runs against a Redis server of the
test's own: policies of each kind saved and published, a client using breakers
(a trip, a fleet-wide probe), each rate-limit algorithm, a cache (its recompute
lock held), config and reports, the ingest reading them through its consumer
group, overrides, a breaker reset, a repaired drift, a refused burst of logins,
pushes through the channel layer. After each phase every key of the server is
read: it must have a TTL, or match a row of the protocol's table of keys without
a TTL (docs/protocol.md, 3.1), which says what keeps it from growing. A new key
without either fails this test until it gets an expiry or a row in that table.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from asgiref.sync import async_to_sync
from channels.layers import channel_layers, get_channel_layer
from django.utils import timezone

from controlplane.accounts.actors import Actor
from controlplane.accounts.throttle import check_login_attempt
from controlplane.alerts.evaluator import evaluate_environment
from controlplane.client import CircuitOpenError, Client
from controlplane.embedded_redis import RedisServer
from controlplane.live import history
from controlplane.live.ingest import Ingestor, ensure_group
from controlplane.live.push import group_name, overview_group, send_now
from controlplane.policies.actions import do_create_policy, do_delete_policy
from controlplane.policies.models import Environment
from controlplane.policies.overrides import (
    do_purge_cache,
    do_reset_breaker,
    do_set_override,
)
from controlplane.policies.reconcile import reconcile_environment
from controlplane.redis_connection import get_redis
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

# Two failures open it, for 0.3 s; then one probe, fleet-wide, decides.
TRIPS_AT_ONCE = {
    "failure_rate_threshold": 50,
    "minimum_calls": 2,
    "window_size": 2,
    "open_for": 0.3,
    "half_open_calls": 1,
}

PROTOCOL = Path(__file__).parent.parent / "docs" / "protocol.md"


def bounded_keys() -> dict[str, str]:
    """The protocol's table of keys without a TTL (3.1): key template -> what bounds it.

    ``{P:E}`` (prefix and environment) becomes ``{<P>:<E>}``: every ``<...>`` of a
    template stands for a part of the name without braces.
    """
    section = PROTOCOL.read_text().split("### 3.1 What bounds each key")[1]
    table = section.split("Keys without a TTL:")[1].split("\n\n")[1]
    rows = re.findall(r"^\| `([^`]+)` \| [^|]+ \| (.+) \|$", table, flags=re.MULTILINE)
    return {key.replace("{P:E}", "{<P>:<E>}"): bound for key, bound in rows}


# Keys with a TTL the workload must have written at least once (else it no longer
# exercises what it says it does).
EXPIRING = (
    "{<P>:<E>}:breaker-probes:<name>",
    "{<P>:<E>:rl:<name>:<subject>}:tb",
    "{<P>:<E>:rl:<name>:<subject>}:gcra",
    "{<P>:<E>:rl:<name>:<subject>}:fw",
    "{<P>:<E>:rl:<name>:<subject>}:sw",
    "{<P>:<E>:c:<name>:<digest>}:g<generation>",
    "{<P>:<E>:c:<name>:<digest>}:g<generation>:lock",
    "{<P>:<E>}:live:s:<second>",
    "{<P>:<E>}:live:m:<minute>",
    "{<P>:<E>}:live:top:<limiter>:<minute>",
    "{<P>:<E>}:drift-reported:<fingerprint>",
    "{<P>:login-burst:<source>}",
    "<P>:asgi:group:<group>",
    "<P>:asgispecific.<channel>",  # channels-redis adds no colon
)


def _regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"<[A-Za-z]+>", template)
    return re.compile("[^{}]+".join(re.escape(part) for part in parts) + r"\Z")


BOUNDED = bounded_keys()
BOUNDED_PATTERNS = {template: _regex(template) for template in BOUNDED}
EXPIRING_PATTERNS = {template: _regex(template) for template in EXPIRING}


class KeyAudit:
    """Reads every key of the test's Redis; remembers which rows were seen."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.seen: set[str] = set()

    def check(self, phase: str) -> None:
        keys = list(self.client.scan_iter(count=1000))
        with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.pttl(key)
            ttls = pipe.execute()
        unbounded = []
        for key, ttl in zip(keys, ttls, strict=True):
            name = key.decode() if isinstance(key, bytes) else key
            rows = BOUNDED_PATTERNS if ttl == -1 else EXPIRING_PATTERNS
            matched = [template for template, pattern in rows.items() if pattern.match(name)]
            self.seen.update(matched)
            if ttl == -1 and not matched:
                unbounded.append(name)
        assert unbounded == [], f"after {phase}: keys without a TTL or a bound: {unbounded}"


class Gate:
    """An upstream call that waits, inside the breaker or the cache, until released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, *args: Any) -> str:
        self.entered.set()
        self.release.wait(10)
        return "ok"

    def run_in_thread(self, target: Callable[[], Any]) -> threading.Thread:
        thread = threading.Thread(target=target)
        thread.start()
        assert self.entered.wait(5)
        return thread


class Boom(Exception):
    pass


def _fail() -> None:
    raise Boom("upstream down")


@pytest.fixture
def own_redis(
    disposable_redis: RedisServer, settings: Any, key_prefix: str
) -> Iterator[redis.Redis]:
    """The test's Redis server for the control plane, its clients and the channel layer."""
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [disposable_redis.url], "prefix": f"{key_prefix}:asgi"},
        }
    }
    channel_layers.backends.clear()
    yield get_redis()
    channel_layers.backends.clear()


def test_every_key_written_expires_or_is_bounded(
    own_redis: redis.Redis,
    production: Environment,
    system: Actor,
    settings: Any,
    key_prefix: str,
) -> None:
    audit = KeyAudit(own_redis)
    keys = production.keys()
    do_create_policy(production, "breaker", "payments", TRIPS_AT_ONCE, system)
    for algorithm in ("token_bucket", "gcra", "fixed_window", "sliding_window"):
        spec = {"algorithm": algorithm, "limit": 2, "period": 3600}
        do_create_policy(production, "rate_limit", algorithm.replace("_", "-"), spec, system)
    do_create_policy(production, "cache", "prices", {"ttl": 30}, system)
    max_items = {"value_type": "integer", "value": 12}
    do_create_policy(production, "config", "checkout.max_items", max_items, system)
    retired = do_create_policy(production, "config", "retired.flag", {}, system)
    do_delete_policy(retired, system)
    audit.check("publishing policies")

    client = Client(
        settings.REDIS_URL,
        environment="production",
        service="bounds",
        key_prefix=key_prefix,
        heartbeat_interval=0.2,
        report_interval=0.2,
        start_timeout=5,
    ).start()
    try:
        assert client.config.get("checkout.max_items", default=-1) == 12
        for algorithm in ("token-bucket", "gcra", "fixed-window", "sliding-window"):
            limiter = client.limiter(algorithm)
            decisions = [limiter.hit(subject) for subject in ("user:7",) * 3 + ("{x}" * 40,)]
            assert [d.allowed for d in decisions] == [True, True, False, True]

        breaker = client.breaker("payments")
        for _ in range(2):
            with pytest.raises(Boom):
                breaker.call(_fail)
        wait_for(lambda: breaker.state == "half_open")
        probe = Gate()  # the fleet-wide probe permit is taken while it waits
        thread = probe.run_in_thread(lambda: breaker.call(probe))
        with pytest.raises(CircuitOpenError):
            breaker.call(_fail)
        audit.check("a half-open probe in flight")
        probe.release.set()
        thread.join(10)
        wait_for(lambda: breaker.state == "closed")

        compute = Gate()  # the recompute lock is held while it waits
        price = client.cached("prices")(compute)
        thread = compute.run_in_thread(lambda: price("sku-1"))
        audit.check("a cache entry being computed")
        compute.release.set()
        thread.join(10)
        client.cache("prices").set(("sku", 2), {"price": 3})
        price.invalidate("sku-1")
        assert price("sku-1") == "ok"

        layer = get_channel_layer()
        assert layer is not None
        channel = async_to_sync(layer.new_channel)()
        for group in (group_name("production"), overview_group("production", "viewer")):
            async_to_sync(layer.group_add)(group, channel)

        ingestor = Ingestor(block_ms=50)
        ensure_group(own_redis, keys.reports)

        def ingested() -> bool:
            ingestor.read_once({keys.reports: production})
            top = keys.live_top_rejected("fixed-window", 0).removesuffix("0") + "*"
            return bool(
                next(own_redis.scan_iter(match=top), None)
                and own_redis.hlen(keys.live_breaker_states)
                and own_redis.hexists(keys.instances, client.instance_id)
            )

        wait_for(ingested)
        send_now("production", {"breaker:payments", "@instances"})
        evaluate_environment(production)
        audit.check("reporting and ingesting")

        for_an_hour = timezone.now() + timedelta(hours=1)
        do_set_override(
            production, "breaker", "payments", "forced_open", system, "drill", for_an_hour
        )
        do_set_override(production, "rate_limit", "gcra", "bypass", system, "drill")
        wait_for(lambda: breaker.state == "forced_open")
        do_reset_breaker(production, "payments", system, "drill over")
        do_purge_cache(production, "prices", system, "new prices")
        own_redis.hdel(keys.policies, "config:checkout.max_items")
        assert reconcile_environment(production, repair=True).missing
        for _ in range(11):
            check_login_attempt("203.0.113.7", "mallory")
        audit.check("overrides, a reset, a purge, a repaired drift and refused logins")

        later = time.time() + settings.INSTANCES_FORGET_AFTER + 60
        forgotten = history.forget_gone(own_redis, keys, now=later)
        assert forgotten.instances >= 1 and forgotten.breaker_states >= 1
    finally:
        client.close()
    audit.check("the client's goodbye")

    assert audit.seen == set(BOUNDED) | set(EXPIRING)


def test_the_protocol_table_of_bounded_keys_is_read() -> None:
    assert len(BOUNDED) == 7
    assert BOUNDED["{<P>:<E>}:meta"] == "one string per environment"
