from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
import redis
from django.db import DataError, OperationalError, models

from controlplane.accounts.actors import Actor
from controlplane.live.history import (
    HISTORY_SECONDS,
    RATE_WINDOW,
    LiveWrites,
    SkippedEntries,
    read_history,
    read_snapshot,
    record_counters,
)
from controlplane.live.ingest import GROUP, Ingestor, ensure_group, process_entries, read_report
from controlplane.live.models import BreakerEvent, DiscoveredName
from controlplane.policies.actions import do_create_environment, do_create_policy
from controlplane.policies.models import Environment
from controlplane.protocol import reports
from controlplane.redis_connection import get_redis
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def _entry(kind: str, instance: str, data: dict[str, Any]) -> dict[str, str]:
    return {"type": kind, "instance": instance, "service": "checkout", "data": json.dumps(data)}


def _heartbeat(client: redis.Redis, environment: Environment, instance: str, revision: int) -> None:
    document = {
        "service": "checkout",
        "host": "h",
        "pid": 1,
        "library_version": "0.1.0",
        "revision": revision,
        "connected": True,
        "at": time.time(),
    }
    client.hset(environment.keys().instances, instance, json.dumps(document))


def test_counters_from_several_instances_are_summed_per_second(
    production: Environment, redis_client: redis.Redis
) -> None:
    at = time.time() - 2
    entries = [
        (
            "1-0",
            _entry(
                "counters",
                "a",
                {
                    "at": at,
                    "policies": {
                        "breaker:payments": {
                            "calls": 10,
                            "failures": 4,
                            "slow": 1,
                            "state": "closed",
                        },
                        "rate_limit:api": {
                            "allowed": 30,
                            "rejected": 6,
                            "top_rejected": {"user:7": 6},
                        },
                        "cache:prices": {"hits": 8, "misses": 2},
                    },
                },
            ),
        ),
        (
            "1-1",
            _entry(
                "counters",
                "b",
                {
                    "at": at,
                    "policies": {"breaker:payments": {"calls": 10, "failures": 6, "state": "open"}},
                },
            ),
        ),
    ]
    _heartbeat(redis_client, production, "a", 0)
    _heartbeat(redis_client, production, "b", 0)

    changed = process_entries(production, entries)

    assert changed.figures == {"breaker:payments", "rate_limit:api", "cache:prices"}
    assert changed.state == set()
    snapshot = read_snapshot(redis_client, production.keys(), now=at + 1.5)
    payments = snapshot.rates_for("breaker:payments")
    assert payments.counters["calls"] == 20
    assert payments.failure_rate == 50.0
    assert payments.calls_per_second == 20 / RATE_WINDOW
    assert snapshot.rates_for("cache:prices").hit_ratio == 80.0
    assert snapshot.breaker_states["payments"] == {"closed": 1, "open": 1}
    history = read_history(redis_client, production.keys(), "breaker:payments", ("calls",), 10)
    assert sum(history["calls"]) == 20


def test_a_batch_costs_one_redis_command_per_key_and_field_not_per_report(
    production: Environment, redis_client: redis.Redis
) -> None:
    """300 instances' counters of one second, summed in the batch: a few commands, not 3,000."""
    at = float(int(time.time()) - 2)
    writes = LiveWrites()
    for i in range(300):
        policies = {
            "breaker:payments": {"calls": 10, "successes": 9, "failures": 1, "state": "closed"},
            "rate_limit:api": {"allowed": 3, "rejected": 2, "top_rejected": {"u:1": 1, "u:2": 1}},
            "cache:prices": {"hits": 8, "misses": 2},
        }
        assert record_counters(writes, f"i-{i}", at, policies) == set(policies)
    # The same instance again, later in the stream: its last reported state is kept.
    record_counters(writes, "i-7", at, {"breaker:payments": {"calls": 1, "state": "open"}})
    keys = production.keys()
    pipe = redis_client.pipeline(transaction=False)
    writes.write(pipe, keys)

    # 7 per-second fields + their EXPIRE, 7 per-minute fields and 2 state counts + EXPIRE,
    # 2 subjects + EXPIRE, one HSET of the 300 breaker states.
    assert len(pipe) == 7 + 1 + 9 + 1 + 2 + 1 + 1
    pipe.execute()
    second = redis_client.hgetall(keys.live_second(int(at)))
    assert float(second["breaker:payments|calls"]) == 300 * 10 + 1
    assert float(second["rate_limit:api|rejected"]) == 600
    assert float(second["cache:prices|hits"]) == 2400
    minute = redis_client.hgetall(keys.live_minute(int(at) // 60))
    assert float(minute["breaker:payments|failures"]) == 300
    assert float(minute["breaker:payments|state:closed"]) == 300
    assert float(minute["breaker:payments|state:open"]) == 1
    top = redis_client.zrange(keys.live_top_rejected("api", int(at) // 60), 0, -1, withscores=True)
    assert top == [("u:1", 300.0), ("u:2", 300.0)]
    states = redis_client.hgetall(keys.live_breaker_states)
    assert len(states) == 300
    assert states["payments|i-7"] == f"open|{at}"
    assert states["payments|i-8"] == f"closed|{at}"
    assert 0 < int(redis_client.ttl(keys.live_second(int(at)))) <= HISTORY_SECONDS


def test_transitions_are_stored_as_events(production: Environment) -> None:
    changes = process_entries(
        production,
        [
            (
                "1-0",
                _entry(
                    "transition",
                    "a",
                    {
                        "policy": "breaker:payments",
                        "from_state": "closed",
                        "to_state": "open",
                        "reason": "failure_rate",
                        "failure_rate": 62.5,
                        "at": time.time(),
                    },
                ),
            )
        ],
    )
    assert changes.state == {"breaker:payments"}  # pushed sooner than figures
    event = BreakerEvent.objects.get()
    assert (event.name, event.instance, event.to_state, event.failure_rate) == (
        "payments",
        "a",
        "open",
        62.5,
    )


def test_discovered_names_are_recorded_unless_managed(
    production: Environment, system: Actor
) -> None:
    do_create_policy(production, "breaker", "managed", {}, system)
    process_entries(
        production,
        [
            (
                "1-0",
                _entry("discovered", "a", {"policy": "breaker:new", "defaults": {"open_for": 5}}),
            ),
            ("1-1", _entry("discovered", "a", {"policy": "breaker:managed", "defaults": {}})),
        ],
    )
    assert [(d.kind, d.name, d.defaults) for d in DiscoveredName.objects.all()] == [
        ("breaker", "new", {"open_for": 5})
    ]


def test_malformed_entries_are_skipped(production: Environment) -> None:
    changed = process_entries(
        production,
        [
            ("1-0", {"type": "counters", "instance": "a", "data": "{not json"}),
            ("1-1", {"type": "counters", "instance": "a", "data": "[]"}),
        ],
    )
    assert changed.all == set()


def test_two_replicas_process_each_report_once(
    production: Environment, system: Actor, redis_client: redis.Redis
) -> None:
    # Two environments: on a cluster their streams live in different hash slots.
    staging = do_create_environment("staging", system)
    streams = [production.keys().reports, staging.keys().reports]
    for stream in streams:
        ensure_group(redis_client, stream)
    first, second = Ingestor(block_ms=50), Ingestor(block_ms=50)
    second.consumer += "-b"
    first.start()
    second.start()
    try:
        for number in range(40):
            redis_client.xadd(
                streams[number % 2],
                _entry(
                    "transition",
                    f"i{number}",
                    {"policy": "breaker:payments", "from_state": "closed", "to_state": "open"},
                ),
            )
        wait_for(lambda: first.processed + second.processed == 40)
        assert BreakerEvent.objects.filter(environment=production).count() == 20
        assert BreakerEvent.objects.filter(environment=staging).count() == 20
        for stream in streams:
            assert redis_client.xpending(stream, GROUP)["pending"] == 0
    finally:
        first.stop()
        second.stop()


# Hostile entries (issue 10, item 5): each is skipped and acknowledged, and the
# valid transition written right after it, in the same batch, is stored.
VALID_TRANSITION = {
    "policy": "breaker:payments",
    "from_state": "closed",
    "to_state": "open",
    "reason": "failure_rate",
    "failure_rate": 62.5,
}


def _ingest_once(environment: Environment, *entries: dict[Any, Any]) -> Ingestor:
    """Write ``entries`` to the environment's stream and run one pass of the ingest."""
    client = get_redis()
    stream = environment.keys().reports
    ensure_group(client, stream)
    for fields in entries:
        client.xadd(stream, fields)
    ingestor = Ingestor(block_ms=50)
    ingestor.read_once({stream: environment})
    return ingestor


def _transition(instance: str, **changes: Any) -> dict[str, str]:
    return _entry("transition", instance, {**VALID_TRANSITION, "at": time.time(), **changes})


def _assert_only_the_valid_transition_arrived(environment: Environment) -> None:
    assert list(BreakerEvent.objects.values_list("name", "instance", "to_state")) == [
        ("payments", "valid", "open")
    ]
    client = get_redis()
    assert client.xpending(environment.keys().reports, GROUP)["pending"] == 0
    states = client.hgetall(environment.keys().live_breaker_states)
    assert list(states) == ["payments|valid"]


@pytest.mark.parametrize(
    "bad_entry",
    [
        pytest.param(_transition("bad", policy="breaker:" + "n" * 101), id="name-over-100"),
        pytest.param(_transition("i" * 201), id="instance-over-200"),
        pytest.param(_transition("bad", to_state="s" * 21), id="state-over-20"),
        pytest.param(_transition("bad", reason="failure\x00rate"), id="nul-in-data"),
        pytest.param(_transition("bad\x00nul"), id="nul-in-instance"),
        pytest.param(_transition("bad", at=1e300), id="at-1e300"),
        pytest.param(
            {**_transition("bad"), "data": json.dumps({**VALID_TRANSITION, "at": float("nan")})},
            id="at-nan",
        ),
        pytest.param(_transition("bad", to_state="ajar"), id="unknown-state"),
        pytest.param({**_transition("bad"), "type": b"transition\xff"}, id="type-not-utf8"),
        pytest.param({**_transition("bad"), "instance": b"\xffbad"}, id="instance-not-utf8"),
    ],
)
def test_a_malformed_report_is_skipped_and_the_next_valid_one_arrives(
    production: Environment, bad_entry: dict[str, Any]
) -> None:
    ingestor = _ingest_once(production, bad_entry, _transition("valid"))

    assert ingestor.processed == 2  # both acknowledged
    _assert_only_the_valid_transition_arrived(production)


def test_one_warning_per_kind_of_problem_in_a_batch(
    production: Environment, caplog: pytest.LogCaptureFixture
) -> None:
    bad = [_transition(f"bad{n}", at=1e300) for n in range(5)]
    bad += [_transition(f"bad{n}", to_state="ajar") for n in range(5)]

    _ingest_once(production, *bad, _transition("valid"))

    warnings = [r.getMessage() for r in caplog.records if r.name == "controlplane.live.ingest"]
    assert len(warnings) == 2, warnings
    assert any("data.at" in w for w in warnings)
    assert any("data.to_state" in w for w in warnings)
    _assert_only_the_valid_transition_arrived(production)


def test_a_row_the_database_refuses_costs_that_row_only(
    production: Environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As PostgreSQL refuses what SQLite would take: the check that slipped through.
    save = BreakerEvent.save

    def refusing_save(self: BreakerEvent, *args: Any, **kwargs: Any) -> None:
        if self.instance == "refused":
            raise DataError("value too long for type character varying(100)")
        save(self, *args, **kwargs)

    def refusing_bulk_create(objs: list[BreakerEvent], *args: Any, **kwargs: Any) -> None:
        raise DataError("value too long for type character varying(100)")

    monkeypatch.setattr(BreakerEvent, "save", refusing_save)
    monkeypatch.setattr(BreakerEvent.objects, "bulk_create", refusing_bulk_create)

    ingestor = _ingest_once(production, _transition("refused"), _transition("valid"))

    assert ingestor.processed == 2
    _assert_only_the_valid_transition_was_stored(production)


def _assert_only_the_valid_transition_was_stored(environment: Environment) -> None:
    assert list(BreakerEvent.objects.values_list("instance", flat=True)) == ["valid"]
    assert get_redis().xpending(environment.keys().reports, GROUP)["pending"] == 0


def test_a_database_outage_leaves_the_batch_pending(
    production: Environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("connection refused")

    monkeypatch.setattr(BreakerEvent.objects, "bulk_create", unreachable)
    monkeypatch.setattr(BreakerEvent, "save", unreachable)

    with pytest.raises(OperationalError):
        _ingest_once(production, _transition("valid"))

    client = get_redis()
    assert client.xpending(production.keys().reports, GROUP)["pending"] == 1


def test_a_live_key_of_the_wrong_type_does_not_stop_the_transitions(
    production: Environment, redis_client: redis.Redis
) -> None:
    # Whoever can write to Redis turns the live breaker states into a string.
    redis_client.set(production.keys().live_breaker_states, "garbage")

    ingestor = _ingest_once(production, _transition("valid"))

    assert ingestor.processed == 1
    _assert_only_the_valid_transition_was_stored(production)


def _max_length(model: type[models.Model], name: str) -> int:
    length = model._meta.get_field(name).max_length
    assert isinstance(length, int)
    return length


def test_every_text_the_protocol_accepts_fits_its_database_column() -> None:
    assert _max_length(BreakerEvent, "instance") >= reports.INSTANCE_LENGTH
    assert _max_length(BreakerEvent, "service") >= reports.SERVICE_LENGTH
    assert _max_length(DiscoveredName, "service") >= reports.SERVICE_LENGTH
    assert _max_length(BreakerEvent, "to_state") >= reports.STATE_LENGTH
    assert _max_length(BreakerEvent, "from_state") >= reports.STATE_LENGTH
    assert _max_length(BreakerEvent, "reason") >= reports.REASON_LENGTH
    assert _max_length(BreakerEvent, "name") >= reports.NAME_LENGTH
    assert _max_length(DiscoveredName, "name") >= reports.NAME_LENGTH
    assert _max_length(DiscoveredName, "kind") >= reports.KIND_LENGTH


def test_entries_as_the_protocol_encodes_them_are_read_whole() -> None:
    now = time.time()
    transition = reports.encode_entry(
        "transition",
        "web-1:42:9f3a1c2e",
        "checkout",
        {
            "policy": "breaker:payments",
            "from_state": "closed",
            "to_state": "open",
            "reason": "failure_rate",
            "failure_rate": 62.5,
            "slow_call_rate": None,
            "source": "local",
            "epoch": 7,
            "at": now,
        },
    )
    heartbeat = {
        "instance": "web-1:42:9f3a1c2e",
        "service": "checkout",
        "host": "web-1",
        "pid": 42,
        "library_version": "0.1.0",
        "revision": 3,
        "connected": True,
        "at": now,
    }
    as_stored = {name.encode(): value.encode() for name, value in transition.items()}

    assert read_report(as_stored, now) == reports.Transition(
        instance="web-1:42:9f3a1c2e",
        service="checkout",
        name="payments",
        from_state="closed",
        to_state="open",
        reason="failure_rate",
        failure_rate=62.5,
        slow_call_rate=None,
        at=now,
    )
    entry = reports.encode_entry("heartbeat", "web-1:42:9f3a1c2e", "checkout", heartbeat)
    assert read_report(entry, now) == reports.Heartbeat("web-1:42:9f3a1c2e", heartbeat)
    with pytest.raises(reports.MalformedReport, match="is not a heartbeat"):
        read_report({**entry, "data": reports.encode_data({**heartbeat, "pid": "42"})}, now)


def test_heartbeats_say_their_implementation_and_hostile_ones_are_skipped(
    production: Environment,
) -> None:
    heartbeat = {"service": "checkout", "revision": 0, "at": time.time()}
    implementation = {"name": "controlplane.client", "version": "0.1.0", "language": "python"}
    hostile = [
        {**implementation, "name": "x" * 201},
        {**implementation, "version": 1},
        {**implementation, "language": None},
        ["python"],
    ]
    skipped = SkippedEntries(logging.getLogger(__name__), "report entries")

    changed = process_entries(
        production,
        [
            ("1-0", _entry("heartbeat", "a", heartbeat)),  # a 1.0 client
            ("1-1", _entry("heartbeat", "b", {**heartbeat, "implementation": implementation})),
            ("1-2", _entry("heartbeat", "c", {**heartbeat, "implementation": {"markup": "<b>"}})),
        ]
        + [
            (f"2-{n}", _entry("heartbeat", "d", {**heartbeat, "implementation": value}))
            for n, value in enumerate(hostile)
        ],
        skipped,
    )

    assert changed.figures == {"@instances"}
    assert skipped.total == 5
    entry = _entry("heartbeat", "b", {**heartbeat, "implementation": implementation})
    assert read_report(entry) == reports.Heartbeat(
        "b", {**heartbeat, "implementation": implementation}
    )
