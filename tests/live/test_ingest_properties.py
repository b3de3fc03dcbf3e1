"""Property-based: whatever entries sit in a report stream next to the ones clients
write, one ingest pass raises nothing, stores every valid entry, acknowledges every
entry; and whatever sits in the live-state and instances hashes, the live pages
answer without a 5xx (issue 10: "the valid entries around each bad one must all
arrive")."""

from __future__ import annotations

import itertools
import json
import math
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
import redis
from django.contrib.auth.models import User
from django.test import Client as DjangoClient
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.accounts.actors import Actor
from controlplane.client import Client
from controlplane.live.ingest import GROUP, Ingestor, ensure_group
from controlplane.live.models import BreakerEvent, DiscoveredName
from controlplane.policies.actions import do_create_policy
from controlplane.policies.models import Environment
from controlplane.protocol.breaker_state import STATES
from controlplane.protocol.keys import NAME_PATTERN
from tests.properties import PROPERTIES, json_loads_values

pytestmark = pytest.mark.django_db(transaction=True)

INGEST_PROPERTIES = settings(PROPERTIES, max_examples=40)
_examples = itertools.count()

# Values that break an entry: what a hostile writer, or a broken client, could put.
overlong = st.sampled_from([101, 201, 1000, 100_000]).map(lambda n: "x" * n)
non_finite = st.sampled_from([float("nan"), float("inf"), float("-inf")])
huge = st.sampled_from([1e300, -1e300, 10**400, -1, 2**64, 1e13])
hostile_values: st.SearchStrategy[Any] = st.one_of(
    json_loads_values,
    overlong,
    non_finite,
    huge,
    st.sampled_from(["a\x00b", "\x00", "\ud800", "ajar", "breaker:", ":x", "breaker:a b"]),
)
random_fields = st.dictionaries(
    st.sampled_from([b"type", b"instance", b"service", b"data"]) | st.binary(max_size=8),
    st.binary(max_size=64),
    min_size=1,
    max_size=5,
)


def _bad_template(entry_type: str, now: float) -> dict[str, Any]:
    """A well-formed entry of ``entry_type`` about "bad" names, before it is broken."""
    templates: dict[str, dict[str, Any]] = {
        "transition": {
            "policy": "breaker:bad",
            "from_state": "closed",
            "to_state": "open",
            "reason": "failure_rate",
            "failure_rate": 50.0,
            "slow_call_rate": None,
            "at": now,
        },
        "counters": {
            "at": now,
            "policies": {
                "breaker:bad": {"calls": 1, "state": "open"},
                "rate_limit:bad": {"allowed": 1, "top_rejected": {"user:1": 1}},
            },
        },
        "discovered": {"policy": "cache:bad", "defaults": {"ttl": 60}},
        "heartbeat": {"service": "bad", "pid": 1, "revision": 0, "connected": True, "at": now},
    }
    return {
        "type": entry_type,
        "instance": "bad:1",
        "service": "bad",
        "data": templates[entry_type],
    }


@st.composite
def broken_entries(draw: st.DrawFn) -> dict[bytes, bytes]:
    """A stream entry broken in one place: a field, a member of its data, or anywhere."""
    how = draw(st.sampled_from(["random", "field", "member", "nested", "missing", "not-json"]))
    if how == "random":
        return draw(random_fields)
    entry = _bad_template(draw(st.sampled_from(list(REPORT_TYPES))), time.time())
    data = entry["data"]
    if how == "field":
        entry[draw(st.sampled_from(["type", "instance", "service"]))] = draw(hostile_values)
    elif how == "member":
        data[draw(st.sampled_from(sorted(data) + ["policy", "at"]))] = draw(hostile_values)
    elif how == "nested" and "policies" in data:
        policy = draw(st.sampled_from(sorted(data["policies"])))
        member = draw(st.sampled_from(["calls", "state", "allowed", "top_rejected"]))
        data["policies"][policy][member] = draw(hostile_values)
    elif how == "nested" and "defaults" in data:
        data["defaults"] = draw(hostile_values)
    elif how == "missing":
        entry.pop(draw(st.sampled_from(["type", "instance", "data"])))
    text = json.dumps(data) if how != "not-json" else draw(st.text(max_size=20))
    if "data" in entry:
        entry["data"] = text
    return {key.encode(): _bytes(value) for key, value in entry.items()}


def _bytes(value: Any) -> bytes:
    text = value if isinstance(value, str) else json.dumps(value)
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate: not UTF-8 in Redis


REPORT_TYPES = ("heartbeat", "transition", "counters", "discovered")
# Valid entries, as clients write them: (type, data) with the names made unique later.
names = st.from_regex(NAME_PATTERN, fullmatch=True).map(lambda n: n[:60])
valid_transitions = st.fixed_dictionaries(
    {
        "name": names,
        "from_state": st.sampled_from(STATES),
        "to_state": st.sampled_from(STATES),
        "reason": st.sampled_from(["failure_rate", "probes_succeeded", "override", "reset"]),
        "failure_rate": st.none() | st.floats(min_value=0, max_value=100),
        "slow_call_rate": st.none() | st.floats(min_value=0, max_value=100),
    }
)
valid_counters = st.fixed_dictionaries(
    {"calls": st.integers(0, 10**6), "failures": st.integers(0, 10**6)}
)
valid_entries = st.one_of(
    st.tuples(st.just("transition"), valid_transitions),
    st.tuples(st.just("counters"), valid_counters),
    st.tuples(st.just("discovered"), names),
    st.tuples(st.just("heartbeat"), st.none()),
)


@pytest.fixture
def reporter_client(client_factory: Callable[..., Client], production: Environment) -> Client:
    """A client (not started): its reporter writes the valid entries, as in a service."""
    return client_factory()


@INGEST_PROPERTIES
@given(
    batch=st.lists(
        st.tuples(st.just("bad"), broken_entries()) | st.tuples(st.just("good"), valid_entries),
        min_size=1,
        max_size=30,
    )
)
def test_every_valid_entry_arrives_whatever_is_around_it(
    production: Environment, reporter_client: Client, batch: list[tuple[str, Any]]
) -> None:
    BreakerEvent.objects.all().delete()
    DiscoveredName.objects.all().delete()
    example = next(_examples)
    reporter, keys = reporter_client.reporter, production.keys()
    stream = keys.reports
    ensure_group(reporter_client.redis, stream)
    transitions: list[tuple[str, str, str]] = []
    discovered: set[str] = set()
    counted: dict[tuple[int, str], float] = defaultdict(float)
    with reporter_client.redis.pipeline(transaction=False) as pipe:
        for number, (which, item) in enumerate(batch):
            if which == "bad":
                pipe.xadd(stream, item)
                continue
            entry_type, data = item
            now = time.time()
            if entry_type == "transition":
                name = f"{data['name']}-{example}"
                transitions.append((name, data["from_state"], data["to_state"]))
                data = {
                    "policy": f"breaker:{name}",
                    **{k: v for k, v in data.items() if k != "name"},
                    "source": "local",
                    "epoch": 0,
                    "at": now,
                }
            elif entry_type == "counters":
                policy = f"breaker:good-{example}-{number}"
                for counter, value in data.items():
                    if value:
                        counted[(int(now), f"{policy}|{counter}")] += value
                data = {"at": now, "policies": {policy: {**data, "state": "closed"}}}
            elif entry_type == "discovered":
                name = f"{data}-{example}"
                discovered.add(name)
                data = {"policy": f"cache:{name}", "defaults": {"ttl": 60.0}}
            else:
                data = reporter.heartbeat_document()
            reporter._xadd(pipe, entry_type, data)  # the client's own encoder
        pipe.execute()

    ingestor = Ingestor(block_ms=10)
    ingestor.read_once({stream: production})  # nothing may escape it

    assert ingestor.processed == len(batch)
    assert reporter_client.redis.xpending(stream, GROUP)["pending"] == 0
    stored = BreakerEvent.objects.filter(instance=reporter_client.instance_id)
    assert sorted(stored.values_list("name", "from_state", "to_state")) == sorted(transitions)
    names_found = set(DiscoveredName.objects.values_list("name", flat=True))
    assert discovered <= names_found
    for (second, field), total in counted.items():
        assert float(reporter_client.redis.hget(keys.live_second(second), field) or 0) == total


# The dashboard's reads: whatever the live-state and instances hashes hold.
hostile_bytes = st.binary(max_size=40) | st.sampled_from(
    [b"\xff", b"nan", b"inf", b"-inf", b"1e309", b"open|nan", b"ajar|1", b"|", b"", b"\x00"]
)
heartbeat_members = st.dictionaries(
    st.sampled_from(["service", "host", "pid", "library_version", "revision", "connected", "at"]),
    hostile_values,
    max_size=3,
)


@st.composite
def hostile_heartbeats(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(hostile_bytes)
    document = {"service": "shop", "pid": 1, "revision": 0, "at": time.time()}
    return _bytes({**document, **draw(heartbeat_members)})


@pytest.fixture
def live_policies(production: Environment, system: Actor) -> None:
    do_create_policy(production, "breaker", "payments", {}, system)
    do_create_policy(production, "rate_limit", "api", {}, system)
    do_create_policy(production, "cache", "prices", {"ttl": 30}, system)


PAGES = (
    "/e/production/live/",
    "/e/production/instances/",
    "/e/production/breaker/payments/",
    "/e/production/breaker/payments/series.json?seconds=10",
)


@settings(PROPERTIES, max_examples=30)
@given(
    instances=st.dictionaries(hostile_bytes, hostile_heartbeats(), max_size=4),
    states=st.dictionaries(hostile_bytes | st.just(b"payments|good"), hostile_bytes, max_size=4),
    counters=st.dictionaries(
        hostile_bytes | st.sampled_from([b"breaker:payments|calls", b"cache:prices|hits"]),
        hostile_bytes,
        max_size=4,
    ),
    rejected=st.dictionaries(
        hostile_bytes, st.floats(allow_nan=False) | st.sampled_from([1e308]), max_size=4
    ),
)
def test_live_pages_answer_whatever_the_live_state_holds(
    client: DjangoClient,
    viewer: User,
    production: Environment,
    live_policies: None,
    redis_client: redis.Redis,
    instances: dict[bytes, bytes],
    states: dict[bytes, bytes],
    counters: dict[bytes, bytes],
    rejected: dict[bytes, float],
) -> None:
    keys = production.keys()
    now = time.time()
    written = [keys.instances, keys.live_breaker_states]
    good = {"service": "shop", "host": "h", "pid": 1, "revision": 0, "connected": True, "at": now}
    redis_client.hset(keys.instances, "good", json.dumps(good))
    if instances:
        redis_client.hset(keys.instances, mapping=instances)
    if states:
        redis_client.hset(keys.live_breaker_states, mapping=states)
    for second in range(int(now) - 8, int(now) + 1):
        written.append(keys.live_second(second))
        if counters:
            redis_client.hset(keys.live_second(second), mapping=counters)
    minute = int(now) // 60
    for m in (minute - 1, minute):
        written.append(keys.live_top_rejected("api", m))
        scores = {member: score for member, score in rejected.items() if not math.isnan(score)}
        if scores:
            redis_client.zadd(keys.live_top_rejected("api", m), scores)
    client.force_login(viewer)
    try:
        for page in PAGES:
            response = client.get(page)
            assert response.status_code < 500, page
            if page == "/e/production/instances/" and b"good" not in instances:
                assert 'data-instance="good"' in response.content.decode()
    finally:
        redis_client.delete(*written)
