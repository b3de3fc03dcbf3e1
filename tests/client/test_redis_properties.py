"""Property-based: whatever bytes sit in the keys a client reads, or arrive on its channels,
a started client never raises into the caller, keeps the last good policy of each name,
and its breakers, limiters, caches and config reads keep working."""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from django.conf import settings
from hypothesis import example, given
from hypothesis import strategies as st

from controlplane.accounts.actors import Actor
from controlplane.client import (
    CircuitOpenError,
    Client,
    RateLimitExceeded,
    cached,
    configure,
    rate_limited,
    with_circuit_breaker,
)
from controlplane.client import decorators as module_decorators
from controlplane.client.cache import (
    ENVELOPE_HEADER,
    ENVELOPE_VERSION,
    EnvelopeError,
    decode_envelope,
)
from controlplane.policies.models import Policy
from controlplane.policies.overrides import do_set_override
from controlplane.protocol.documents import (
    SECTION_POLICIES,
    ChangeMessage,
    PolicyDocument,
    ProtocolError,
    change_message,
)
from controlplane.protocol.schema import default_spec
from tests.conftest import wait_for
from tests.properties import PROPERTIES, json_loads_values, json_values

pytestmark = pytest.mark.django_db(transaction=True)

GOOD: dict[str, dict[str, Any]] = {
    "breaker:payments": {"open_for": 30},
    "rate_limit:api": {"limit": 1000, "period": 60},
    "cache:prices": {"ttl": 60},
    "config:banner": {"value": "good"},
}
_sentinels = itertools.count(1)


class Service:
    """A service of the client: one breaker, limiter, cache and config read, as in the docs."""

    def __init__(self, client: Client, *, module_level: bool = False) -> None:
        self.client = client
        if module_level:  # the module-level decorators, on the default client
            breaker, limit, cache = (
                with_circuit_breaker("payments"),
                rate_limited("api", key=lambda user: user),
                cached("prices"),
            )
        else:
            breaker, limit, cache = (
                client.breaker("payments"),
                client.rate_limited("api", key=lambda user: user),
                client.cached("prices"),
            )
        self.charge: Callable[[int], int] = breaker(lambda amount: amount * 2)
        self.view: Callable[[str], str] = limit(lambda user: f"page for {user}")
        self.price: Callable[[str], str] = cache(lambda sku: f"price of {sku}")

    def works(self, forged_cache_values: tuple[Any, ...] = ()) -> None:
        """Every enforcer answers; only the documented exceptions may reach the caller
        (a forged but well-formed document may legitimately open a breaker or block)."""
        with contextlib.suppress(CircuitOpenError):
            assert self.charge(21) == 42
        with contextlib.suppress(RateLimitExceeded):
            assert self.view("alice") == "page for alice"
        assert self.price("sku-1") in ("price of sku-1", *forged_cache_values)
        assert self.client.config.get("banner", default="code default") is not None


@pytest.fixture
def raw_redis() -> Iterator[redis.Redis]:
    """The suite's Redis, answering bytes: what the keys hold need not be text."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    yield client
    client.close()


def acceptable(field: str, written: Any, good: dict[str, Any] | None) -> list[Any]:
    """The specs a reader may hold for ``field`` after ``written`` arrived for it: the
    last good one, or what ``written`` says if it is a well-formed document for that field."""
    try:
        document = PolicyDocument.decode(written)
    except ProtocolError:
        return [good]
    if f"{document.kind}:{document.name}" != field:
        return [good]
    return [good, document.spec]


def check_policies_kept(
    client: Client, good: dict[str, dict[str, Any]], target: str, raw: Any
) -> None:
    for field, spec in good.items():
        kind, _, name = field.partition(":")
        allowed = acceptable(field, raw, spec) if field == target else [spec]
        assert client.policy_spec(kind, name) in allowed, field


@pytest.fixture
def published(set_policy: Callable[..., Policy], raw_redis: redis.Redis) -> dict[str, Any]:
    """The good policies, published; returns their specs as clients hold them."""
    for field, spec in GOOD.items():
        kind, _, name = field.partition(":")
        set_policy(kind, name, **spec)
    policy = Policy.objects.first()
    assert policy is not None
    keys = policy.environment.keys()
    # An override in force, so that override documents are there to be garbled too.
    do_set_override(policy.environment, "rate_limit", "api", "bypass", Actor.system("t"), "tests")
    wait_for(lambda: len(raw_redis.hgetall(keys.policies)) == len(GOOD))
    wait_for(lambda: raw_redis.hlen(keys.overrides) == 1)
    stored = raw_redis.hgetall(keys.policies)
    return {field.decode(): PolicyDocument.decode(raw).spec for field, raw in stored.items()}


@pytest.fixture
def default_client() -> Iterator[None]:
    yield
    module_decorators._default = None


def real_document(data: st.DataObject, raw_redis: redis.Redis, key: str) -> Any:
    """One of the documents really stored under ``key``, with a few members replaced."""
    if raw_redis.type(key) == b"hash":
        stored = sorted(raw_redis.hvals(key))
    else:
        stored = [raw for raw in [raw_redis.get(key)] if raw is not None]
    if not stored:
        return data.draw(json_values)
    document = json.loads(data.draw(st.sampled_from(stored)))
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        target = document
        if isinstance(document.get("spec"), dict) and data.draw(st.booleans()):
            target = document["spec"]
        member = data.draw(st.sampled_from(sorted(target)) | st.text(max_size=6))
        target[member] = data.draw(json_loads_values)
    return document


def garbage(data: st.DataObject, raw_redis: redis.Redis, key: str) -> bytes:
    """Bytes for ``key``: random, any JSON, or a real document with members replaced."""
    choice = data.draw(st.sampled_from(["bytes", "json", "real", "real"]), label="kind")
    if choice == "bytes":
        return data.draw(st.binary(max_size=64), label="bytes")
    value = (
        data.draw(json_loads_values) if choice == "json" else real_document(data, raw_redis, key)
    )
    return json.dumps(value).encode()


@PROPERTIES
@given(data=st.data())
# The first ones broke the follower: a decoder raised past the malformed-document check,
# so the whole snapshot (every other policy's change included) was lost, again each time.
@example(data=("policies", "breaker:payments", b"[" * 100_000))  # too deep for json.loads
@example(
    data=(
        "policies",
        "breaker:payments",
        b'{"schema":1,"kind":"breaker","name":"payments","version":9,"revision":99,'
        b'"deleted":false,"spec":{"failure_rate_threshold":1' + b"0" * 400 + b"}}",
    )
)
@example(
    data=(
        "overrides",
        "rate_limit:api",
        b'{"schema":1,"kind":"rate_limit","name":"api","revision":99,"deleted":false,'
        b'"state":"block_all","expires_at":1' + b"0" * 400 + b"}",
    )
)
# An override whose kind is a list: a dict lookup of it raised TypeError (found in CI).
@example(
    data=(
        "overrides",
        "rate_limit:api",
        b'{"schema":1,"kind":[],"name":"api","revision":5,"deleted":false,"state":"bypass"}',
    )
)
# A well-formed document under another policy's field was held under that field: the
# config read then found a breaker's spec and raised KeyError into the caller.
@example(
    data=(
        "policies",
        "config:banner",
        PolicyDocument("breaker", "payments", 9, 99, {"mode": "observe"}).encode().encode(),
    )
)
def test_garbage_in_the_policy_keys_is_ignored(
    client_factory: Callable[..., Client],
    published: dict[str, Any],
    raw_redis: redis.Redis,
    data: Any,
) -> None:
    client = client_factory().start()
    service = Service(client)
    keys = client.keys
    if isinstance(data, tuple):
        section, field, raw = data
    else:
        section = data.draw(st.sampled_from(["policies", "overrides", "meta"]), label="key")
        field = data.draw(st.sampled_from([*GOOD, "config:other", "nonsense"]), label="field")
    key = {"policies": keys.policies, "overrides": keys.overrides, "meta": keys.meta}[section]
    if not isinstance(data, tuple):
        raw = garbage(data, raw_redis, key)
    saved = raw_redis.dump(key)
    try:
        if section == "meta":
            raw_redis.set(key, raw)
        else:
            raw_redis.hset(key, field, raw)
        client.resync()  # what the follower does on a timer; must not raise either
        service.works()
        check_policies_kept(client, published, field if section == "policies" else "", raw)
    finally:
        raw_redis.delete(key)
        if saved is not None:
            raw_redis.restore(key, 0, saved)
        client.close()


def send_sentinel(client: Client, raw_redis: redis.Redis) -> None:
    """Publish a well-formed change and wait for it: what was sent before it was read."""
    number = next(_sentinels)
    document = PolicyDocument(
        "config",
        "sentinel",
        number,
        10**15 + number,
        {**default_spec("config"), "value": str(number)},
    )
    raw_redis.hset(client.keys.policies, "config:sentinel", document.encode())
    message = change_message(
        SECTION_POLICIES, "config:sentinel", document.revision, document.encode()
    )
    raw_redis.publish(client.keys.changes, message)
    wait_for(lambda: client.config.get("sentinel") == str(number))


@PROPERTIES
@given(data=st.data())
def test_garbage_on_the_channels_is_ignored(
    cp_client: Client,
    published: dict[str, Any],
    raw_redis: redis.Redis,
    default_client: None,
    data: st.DataObject,
) -> None:
    configure(cp_client)
    wait_for(lambda: all(cp_client.policy_spec(*f.split(":")) for f in GOOD))
    services = [Service(cp_client), Service(cp_client, module_level=True)]
    for service in services:
        service.works()  # creates the enforcers, which subscribe to their channels
    keys = cp_client.keys
    channel = data.draw(
        st.sampled_from([keys.changes, keys.breaker_events, keys.cache_invalidations("prices")]),
        label="channel",
    )
    if channel == keys.changes and data.draw(st.booleans(), label="as a change message"):
        field = data.draw(st.sampled_from(list(GOOD)), label="field")
        document = garbage(data, raw_redis, keys.policies)
        try:
            inner = json.loads(document)
        except ValueError:
            inner = document.decode(errors="replace")
        raw = json.dumps(
            {
                "schema": 1,
                "section": "policies",
                "field": field,
                "revision": 10**14,
                "document": inner,
            }
        ).encode()
    else:
        raw = garbage(data, raw_redis, keys.policies)
    raw_redis.publish(channel, raw)
    send_sentinel(cp_client, raw_redis)
    for service in services:
        service.works()
    target, written = "", b""
    try:
        message = ChangeMessage.decode(raw)
        target, written = message.field, message.document.encode()
    except ProtocolError:
        pass
    check_policies_kept(cp_client, published, target if channel == keys.changes else "", written)


numbers = st.floats() | st.integers(min_value=-(2**64), max_value=2**64) | json_loads_values
breaker_states = st.fixed_dictionaries(
    {},
    optional={
        "schema": st.just(1) | json_values,
        "name": st.just("payments") | json_values,
        "state": st.sampled_from(["closed", "open", "half_open", "forced_open"]) | json_values,
        "epoch": numbers,
        "since": numbers,
        "open_until": numbers,
        "failure_rate": numbers,
        "instance": json_values,
    },
).map(lambda state: json.dumps(state).encode())


def envelopes(code: int) -> st.SearchStrategy[bytes]:
    """A cache entry with a well-formed header (some numbers odd) and any payload."""
    times = st.floats() | st.sampled_from([0.0, 1e12])
    header = st.builds(
        ENVELOPE_HEADER.pack,
        st.just(ENVELOPE_VERSION) | st.integers(0, 255),
        st.just(code) | st.integers(0, 255),
        times,
        times,
        times,
    )
    return st.builds(bytes.__add__, header, st.binary(max_size=32))


@PROPERTIES
@given(data=st.data())
def test_garbage_in_shared_breaker_and_cache_keys_is_ignored(
    cp_client: Client,
    published: dict[str, Any],
    raw_redis: redis.Redis,
    data: st.DataObject,
) -> None:
    service = Service(cp_client)
    service.works()  # stores the cache entry of sku-1
    keys = cp_client.keys
    entries = sorted(raw_redis.scan_iter(match=keys.cache_entry("prices", 0, "*")))
    assert entries, "the cache stored its entry"
    serializer = cp_client.cache("prices").serializer
    target = data.draw(st.sampled_from(["breaker state", "cache entry"]), label="key")
    forged: tuple[Any, ...] = ()
    if target == "breaker state":
        raw = data.draw(breaker_states | st.binary(max_size=32), label="state")
        raw_redis.hset(keys.breakers, "payments", raw)
        raw_redis.publish(keys.breaker_events, raw)
    else:
        raw = data.draw(envelopes(serializer.code) | st.binary(max_size=32), label="entry")
        raw_redis.set(entries[0], raw)
        with contextlib.suppress(EnvelopeError):
            forged = (decode_envelope(raw, serializer).value,)
    cp_client.resync()  # reads the shared breaker states too
    cp_client.cache("prices").clear_local()
    service.works(forged_cache_values=forged)
    check_policies_kept(cp_client, published, "", b"")
