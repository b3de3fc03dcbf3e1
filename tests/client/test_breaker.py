from __future__ import annotations

import asyncio
import functools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY

from controlplane.client import CircuitOpenError, Client
from controlplane.client.breaker import CircuitBreaker
from controlplane.client.breaker_fleet import BreakerHub
from controlplane.embedded_redis import RedisServer
from controlplane.policies.models import Environment, Policy
from controlplane.policies.publish import write_document
from controlplane.protocol.documents import OverrideDocument
from controlplane.protocol.schema import PolicyError
from tests.client.conftest import subscribers
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

# Small windows so a handful of calls decide.
TIGHT: dict[str, Any] = {
    "failure_rate_threshold": 50,
    "minimum_calls": 2,
    "window_size": 2,
    "open_for": 30,
}


class Boom(Exception):
    """The failure of a user's flaky upstream."""


class Upstream:
    """A user's upstream function: counts its calls and fails when told to."""

    def __init__(self) -> None:
        self.calls = 0
        self.failing = False

    def __call__(self, fail: bool | None = None) -> str:
        self.calls += 1
        if self.failing if fail is None else fail:
            raise Boom("upstream down")
        return "ok"


def attempt(function: Callable[[], Any]) -> str:
    """Call ``function`` and say how it ended."""
    try:
        function()
    except CircuitOpenError:
        return "rejected"
    except Boom:
        return "boom"
    return "ok"


def hub(client: Client) -> BreakerHub:
    return BreakerHub.of(client)


def shared_state(redis_client: redis.Redis, client: Client, name: str) -> dict[str, Any] | None:
    raw = redis_client.hget(client.keys.breakers, name)
    return None if raw is None else json.loads(raw)


def wait_subscribed(raw_redis: redis.Redis, client: Client, listeners: int) -> None:
    """Wait until ``listeners`` connections listen on the breaker events channel."""
    channel = client.keys.breaker_events
    wait_for(lambda: subscribers(raw_redis, channel) >= listeners)


def set_override(
    environment: Environment, name: str, state: str | None, expires_at: float | None = None
) -> None:
    """Publish a breaker override the way the control plane does, at the next revision."""
    environment.refresh_from_db()
    revision = environment.revision + 1
    Environment.objects.filter(pk=environment.pk).update(revision=revision)
    environment.revision = revision
    document = OverrideDocument(
        "breaker", name, revision, state, reason="test", actor="tests", expires_at=expires_at
    )
    write_document(environment.keys(), "overrides", f"breaker:{name}", document.encode(), revision)


def reports(redis_client: redis.Redis, client: Client, entry_type: str) -> list[dict[str, Any]]:
    return [
        json.loads(fields[b"data"])
        for _, fields in redis_client.xrange(client.keys.reports)
        if fields[b"type"] == entry_type.encode()
    ]


# The window and its thresholds


def test_opens_at_the_failure_rate_and_not_before_minimum_calls(cp_client: Client) -> None:
    breaker = cp_client.breaker(
        "payments", failure_rate_threshold=50, minimum_calls=4, window_size=10
    )
    upstream = Upstream()
    charge = breaker(upstream)

    assert [attempt(lambda: charge(True)) for _ in range(3)] == ["boom"] * 3
    assert breaker.state == "closed"  # 3 failures out of 3, but fewer than minimum_calls

    assert charge(False) == "ok"  # the 4th call reaches minimum_calls: 75% >= 50%
    assert breaker.state == "open"
    with pytest.raises(CircuitOpenError) as rejected:
        charge(False)
    assert rejected.value.state == "open" and rejected.value.name == "payments"
    assert rejected.value.retry_after is not None and 0 < rejected.value.retry_after <= 60
    assert upstream.calls == 4  # the rejected call never reached the upstream


def test_stays_closed_below_the_threshold_and_the_count_window_slides(cp_client: Client) -> None:
    breaker = cp_client.breaker("orders", failure_rate_threshold=50, minimum_calls=4, window_size=4)
    call = breaker(Upstream())

    outcomes = [True, False, False, False, False, True]  # 1 in 4, then 0 in 4, then 1 in 4
    assert [attempt(functools.partial(call, f)) for f in outcomes] == [
        "boom",
        "ok",
        "ok",
        "ok",
        "ok",
        "boom",
    ]
    assert breaker.state == "closed"
    assert breaker.stats()["failure_rate"] == 25.0  # the first failure slid out
    assert attempt(lambda: call(True)) == "boom"  # ok ok boom boom: 50%
    assert breaker.state == "open"


def test_slow_calls_open_it_and_a_slow_success_is_still_a_success(cp_client: Client) -> None:
    breaker = cp_client.breaker(
        "search",
        slow_call_duration=timedelta(milliseconds=30),
        slow_call_rate_threshold=50,
        failure_rate_threshold=50,
        minimum_calls=2,
        window_size=2,
    )

    @breaker
    def slow_search() -> str:
        time.sleep(0.04)  # the slowness is the behaviour under test
        return "results"

    assert slow_search() == "results"
    assert breaker.state == "closed"
    assert slow_search() == "results"
    assert breaker.state == "open"
    stats = breaker.stats()
    assert (stats["successes"], stats["failures"], stats["slow"]) == (2, 0, 2)


def test_ignored_and_not_recorded_exceptions(cp_client: Client) -> None:
    breaker = cp_client.breaker(
        "inventory",
        record_exceptions=[Boom, "builtins.OSError"],
        ignore_exceptions=["KeyError"],
        failure_rate_threshold=50,
        minimum_calls=2,
        window_size=2,
    )

    @breaker
    def lookup(error: BaseException) -> None:
        raise error

    for error in (ValueError("not recorded"), ValueError("not recorded")):
        with pytest.raises(ValueError):
            lookup(error)
    assert breaker.state == "closed"  # exceptions outside `record` count as successes
    for neither in (KeyError("ignored"), KeyError("ignored"), CircuitOpenError("inner", "open")):
        with pytest.raises((KeyError, CircuitOpenError)):
            lookup(neither)
    assert breaker.state == "closed"  # ignored, and a nested breaker's rejection, count as neither
    stats = breaker.stats()
    assert (stats["successes"], stats["failures"], stats["ignored"]) == (2, 0, 3)

    with pytest.raises(ConnectionRefusedError):
        lookup(ConnectionRefusedError())  # a subclass of builtins.OSError, named in `record`
    assert breaker.state == "open"  # 1 failure out of the last 2 recorded calls


def test_a_time_window_forgets_calls_older_than_its_size(cp_client: Client) -> None:
    breaker = cp_client.breaker(
        "ledger", window_type="time", window_size=1, minimum_calls=2, failure_rate_threshold=50
    )
    call = breaker(Upstream())

    assert attempt(lambda: call(True)) == "boom"
    time.sleep(1.1)  # the window elapsing is the behaviour under test
    assert attempt(lambda: call(True)) == "boom"
    assert breaker.state == "closed"  # only one call in the last second
    assert attempt(lambda: call(False)) == "ok"  # 1 of 2 calls in the window failed
    assert breaker.state == "open"


def test_keywords_are_the_policy_fields_and_bad_ones_raise(cp_client: Client) -> None:
    breaker = cp_client.breaker(
        "mapping",
        failure_rate_threshold=25,
        slow_call_rate_threshold=80,
        window_type="time",
        open_for=timedelta(minutes=2),
    )
    assert breaker.settings["failure_rate_threshold"] == 25
    assert breaker.settings["slow_call_rate_threshold"] == 80
    assert breaker.settings["window_type"] == "time"
    assert breaker.settings["open_for"] == 120.0
    with pytest.raises(PolicyError, match="failure_rate_threshold"):
        CircuitBreaker(cp_client, "bad", failure_rate_threshold=0)
    with pytest.raises(ValueError, match="colour"):
        CircuitBreaker(cp_client, "bad", colour="red")


def test_the_old_short_keywords_warn_with_the_new_name_and_still_apply(cp_client: Client) -> None:
    with pytest.warns(DeprecationWarning) as caught:
        breaker = cp_client.breaker(
            "legacy",
            failure_rate=40,
            slow_call_rate=70,
            window="time",
            record=[Boom],
            ignore=["KeyError"],
        )
    assert sorted(str(warning.message) for warning in caught) == [
        f"{old}= is deprecated; write {new}= (the policy's field name)"
        for old, new in sorted(
            [
                ("failure_rate", "failure_rate_threshold"),
                ("ignore", "ignore_exceptions"),
                ("record", "record_exceptions"),
                ("slow_call_rate", "slow_call_rate_threshold"),
                ("window", "window_type"),
            ]
        )
    ]
    assert {warning.filename for warning in caught} == {__file__}  # the caller's line
    settings = breaker.settings
    assert settings["failure_rate_threshold"] == 40
    assert settings["slow_call_rate_threshold"] == 70
    assert settings["window_type"] == "time"
    assert settings["record_exceptions"] == ["tests.client.test_breaker.Boom"]
    assert settings["ignore_exceptions"] == ["KeyError"]
    with (
        pytest.warns(DeprecationWarning),
        pytest.raises(ValueError, match=r"window_type: given twice \(as window and window_type"),
    ):
        CircuitBreaker(cp_client, "twice", window="time", window_type="count")


# The hot path


def test_concurrent_calls_are_not_serialized(cp_client: Client) -> None:
    breaker = cp_client.breaker("parallel")
    barrier = threading.Barrier(2, timeout=5)
    results: list[int] = []

    @breaker
    def inside() -> int:
        return barrier.wait()  # both calls must be inside at once to pass

    threads = [threading.Thread(target=lambda: results.append(inside())) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(results) == [0, 1]


def test_the_closed_path_sends_nothing_to_redis(
    client_factory: Callable[..., Client], disposable_redis: RedisServer
) -> None:
    client = client_factory()  # not started: no follower or reporter traffic
    breaker = client.breaker("quiet", failure_rate_threshold=90, minimum_calls=5, window_size=10)
    call = breaker(Upstream())
    probe = redis.Redis.from_url(disposable_redis.url)
    before = probe.info("stats")["total_commands_processed"]
    for index in range(1000):
        attempt(functools.partial(call, index % 10 == 0))  # successes and some failures
    after = probe.info("stats")["total_commands_processed"]
    assert after - before == 1  # the second INFO itself
    assert breaker.state == "closed"


# Shared state across the fleet


def test_a_trip_reaches_other_instances_and_new_ones_start_open(
    client_factory: Callable[..., Client], raw_redis: redis.Redis, production: Environment
) -> None:
    first, second = client_factory().start(), client_factory().start()
    a, b = first.breaker("payments", **TIGHT), second.breaker("payments", **TIGHT)
    wait_subscribed(raw_redis, first, 2)
    upstream = Upstream()
    for _ in range(2):
        attempt(lambda: a(upstream)(True))
    assert a.state == "open"

    wait_for(lambda: b.state == "open")
    document = wait_for(lambda: shared_state(raw_redis, first, "payments"))
    assert document["schema"] == 1 and document["state"] == "open"
    assert document["instance"] == first.instance_id and document["reason"] == "failure_rate"
    assert document["open_until"] == pytest.approx(document["since"] + 30)
    assert b.epoch == a.epoch == document["epoch"]
    with pytest.raises(CircuitOpenError):
        b.call(upstream, False)

    third = client_factory().start()
    assert third.breaker("payments", **TIGHT).state == "open"  # read at construction
    assert upstream.calls == 2


def test_two_instances_tripping_at_once_make_one_epoch(
    client_factory: Callable[..., Client], raw_redis: redis.Redis, production: Environment
) -> None:
    first, second = client_factory().start(), client_factory().start()
    breakers = [first.breaker("race", **TIGHT), second.breaker("race", **TIGHT)]
    wait_subscribed(raw_redis, first, 2)
    listener = raw_redis.pubsub()
    listener.subscribe(first.keys.breaker_events)
    wait_for(lambda: listener.get_message(timeout=0.1))  # the subscription confirmation
    barrier = threading.Barrier(2, timeout=5)

    def trip(breaker: CircuitBreaker) -> None:
        attempt(lambda: breaker.call(Upstream(), True))
        barrier.wait()
        attempt(lambda: breaker.call(Upstream(), True))

    threads = [threading.Thread(target=trip, args=(b,)) for b in breakers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert [b.state for b in breakers] == ["open", "open"]
    wait_for(lambda: hub(first).idle() and hub(second).idle())
    document = shared_state(raw_redis, first, "race")
    assert document is not None
    assert breakers[0].epoch == breakers[1].epoch == document["epoch"]
    messages = []
    while (message := listener.get_message(timeout=0.2)) is not None:
        messages.append(json.loads(message["data"]))
    assert [m["epoch"] for m in messages] == [document["epoch"]]  # one transition published
    listener.close()


def probe_round(
    breakers: list[CircuitBreaker], per_breaker: int, fail: bool
) -> tuple[int, int, Callable[[], None]]:
    """Start calls that block inside the upstream; return (admitted, rejected, release)."""
    release = threading.Event()
    lock = threading.Lock()
    counts = {"admitted": 0, "rejected": 0}

    def upstream() -> str:
        with lock:
            counts["admitted"] += 1
        release.wait(10)
        if fail:
            raise Boom("still down")
        return "ok"

    def caller(breaker: CircuitBreaker) -> None:
        if attempt(lambda: breaker.call(upstream)) == "rejected":
            with lock:
                counts["rejected"] += 1

    threads = [
        threading.Thread(target=caller, args=(breaker,))
        for breaker in breakers
        for _ in range(per_breaker)
    ]
    for thread in threads:
        thread.start()
    wait_for(lambda: counts["admitted"] + counts["rejected"] == len(threads))

    def finish() -> None:
        release.set()
        for thread in threads:
            thread.join(10)

    return counts["admitted"], counts["rejected"], finish


@pytest.mark.parametrize("probes_fail", [False, True])
def test_half_open_admits_exactly_half_open_calls_across_two_clients(
    client_factory: Callable[..., Client],
    raw_redis: redis.Redis,
    production: Environment,
    probes_fail: bool,
) -> None:
    first, second = client_factory().start(), client_factory().start()
    options = {**TIGHT, "open_for": 0.3, "half_open_calls": 3}
    a, b = first.breaker("gateway", **options), second.breaker("gateway", **options)
    wait_subscribed(raw_redis, first, 2)
    for _ in range(2):
        attempt(lambda: a.call(Upstream(), True))
    wait_for(lambda: b.state == "open")
    opened_epoch = a.epoch
    wait_for(lambda: a.state == "half_open" and b.state == "half_open")

    admitted, rejected, finish = probe_round([a, b], per_breaker=4, fail=probes_fail)
    assert (admitted, rejected) == (3, 5)  # 3 probes for the whole fleet, not 3 each
    finish()

    wait_for(lambda: opened_epoch < a.epoch == b.epoch)  # both follow the fleet's verdict
    document = shared_state(raw_redis, first, "gateway")
    assert document is not None and document["epoch"] == a.epoch
    if probes_fail:
        assert (document["state"], document["reason"]) == ("open", "probes_failed")
        assert {a.state, b.state} <= {"open", "half_open"}  # reopened (for 0.3 s)
    else:
        assert (document["state"], document["reason"]) == ("closed", "probes_succeeded")
        assert (a.state, b.state) == ("closed", "closed")


def test_open_in_one_process_is_seen_by_another_within_100ms(
    cp_client: Client, raw_redis: redis.Redis, settings: Any
) -> None:
    child_code = """
import sys, time
from controlplane.client import Client
client = Client(sys.argv[1], environment="production", key_prefix=sys.argv[2]).start()
options = dict(failure_rate_threshold=50, minimum_calls=2, window_size=2, open_for=30)
breakers = [client.breaker(name, **options) for name in sys.argv[3].split(",")]
print("ready", flush=True)
for breaker in breakers:
    deadline = time.monotonic() + 20
    while breaker.state != "open":
        if time.monotonic() > deadline:
            print("timeout", flush=True)
            sys.exit(1)
        time.sleep(0.0005)
    print(f"open {time.time():.6f}", flush=True)
"""
    names = ["payments", "search", "ledger"]
    breakers = [cp_client.breaker(name, **TIGHT) for name in names]
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            child_code,
            settings.REDIS_URL,
            settings.REDIS_KEY_PREFIX,
            ",".join(names),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    latencies = []
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        wait_subscribed(raw_redis, cp_client, 2)  # both processes listen before the trips
        for breaker in breakers:  # three trips, each measured on its own
            assert breaker.state == "closed"
            fail = functools.partial(breaker.call, Upstream(), True)
            attempt(fail)
            tripped_at = time.time()  # taken before the call that trips: an upper bound
            attempt(fail)
            assert breaker.state == "open"
            status, seen_at = child.stdout.readline().split()
            assert status == "open"
            latencies.append(float(seen_at) - tripped_at)
        assert child.wait(timeout=20) == 0
    finally:
        child.kill()
        child.wait()
    print("open seen by the other process after", [f"{x * 1000:.1f} ms" for x in latencies])
    # The median, so one scheduling hiccup on a loaded test machine does not decide.
    assert all(x >= 0 for x in latencies)
    assert sorted(latencies)[1] < 0.1, latencies
    assert max(latencies) < 1.0, latencies
    document = shared_state(raw_redis, cp_client, "payments")
    assert document is not None and document["instance"] == cp_client.instance_id


def test_a_malformed_shared_state_is_ignored(cp_client: Client, raw_redis: redis.Redis) -> None:
    breaker = cp_client.breaker("mangled", **TIGHT)
    raw_redis.hset(cp_client.keys.breakers, "mangled", '{"schema": 1, "state": "sideways"}')
    labels = {"environment": "production"}
    name = "controlplane_client_malformed_documents_total"
    before = REGISTRY.get_sample_value(name, labels) or 0.0
    cp_client.resync()
    assert breaker.state == "closed"
    assert REGISTRY.get_sample_value(name, labels) == before + 1
    for _ in range(2):
        attempt(lambda: breaker.call(Upstream(), True))
    assert breaker.state == "open"  # and the next transition overwrites the bad value
    wait_for(lambda: (shared_state(raw_redis, cp_client, "mangled") or {})["state"] == "open")


# Overrides from the dashboard


def test_forced_open_rejects_every_call(cp_client: Client, production: Environment) -> None:
    breaker = cp_client.breaker("payments", **TIGHT)
    upstream = Upstream()
    set_override(production, "payments", "forced_open")
    wait_for(lambda: breaker.state == "forced_open")
    with pytest.raises(CircuitOpenError) as rejected:
        breaker.call(upstream, False)
    assert rejected.value.state == "forced_open" and rejected.value.retry_after is None
    assert upstream.calls == 0

    set_override(production, "payments", None)  # lifted
    wait_for(lambda: breaker.state == "closed")
    assert breaker.call(upstream, False) == "ok"


@pytest.mark.parametrize("state", ["forced_closed", "disabled"])
def test_forced_closed_and_disabled_let_everything_through(
    cp_client: Client, production: Environment, state: str
) -> None:
    breaker = cp_client.breaker("payments", **TIGHT)
    set_override(production, "payments", state)
    wait_for(lambda: breaker.state == state)
    upstream = Upstream()
    assert [attempt(lambda: breaker.call(upstream, True)) for _ in range(5)] == ["boom"] * 5
    assert breaker.state == state and upstream.calls == 5
    assert breaker.stats()["failures"] == 5  # still counted for the metrics


def test_an_override_expires_by_itself(cp_client: Client, production: Environment) -> None:
    breaker = cp_client.breaker("payments", **TIGHT)
    expires_at = time.time() + 1.0
    set_override(production, "payments", "forced_open", expires_at=expires_at)
    wait_for(lambda: breaker.state == "forced_open")
    with pytest.raises(CircuitOpenError) as rejected:
        breaker.call(Upstream(), False)
    assert rejected.value.retry_after is not None and 0 < rejected.value.retry_after <= 1.0

    # The call path itself honours the expiry: reading `state` first would lift the
    # override and hide a call path that ignored it.
    wait_for(lambda: time.time() > expires_at, timeout=3)  # no change in Redis needed
    assert breaker.call(Upstream(), False) == "ok"
    assert breaker.state == "closed"


def test_an_override_that_already_expired_is_not_applied(
    cp_client: Client, production: Environment
) -> None:
    breaker = cp_client.breaker("payments", **TIGHT)
    set_override(production, "payments", "forced_open", expires_at=time.time() - 10)
    wait_for(lambda: "breaker:payments" in cp_client.state.overrides)
    assert breaker.state == "closed"
    assert breaker.call(Upstream(), False) == "ok"


# Observe-only mode


def test_observe_mode_never_rejects_and_counts_would_reject(
    cp_client: Client, raw_redis: redis.Redis
) -> None:
    breaker = cp_client.breaker("shadow", mode="observe", **TIGHT)
    upstream = Upstream()
    outcomes = [attempt(lambda: breaker.call(upstream, True)) for _ in range(2)]
    outcomes += [attempt(lambda: breaker.call(upstream, False)) for _ in range(3)]
    assert outcomes == ["boom", "boom", "ok", "ok", "ok"]
    assert upstream.calls == 5
    assert breaker.state == "open"  # the state machine runs and is reported
    assert breaker.stats()["would_reject"] == 3
    assert breaker.stats()["rejected"] == 0

    def reported_would_reject() -> int:
        return sum(
            entry["policies"].get("breaker:shadow", {}).get("would_reject", 0)
            for entry in reports(raw_redis, cp_client, "counters")
        )

    wait_for(lambda: reported_would_reject() == 3)


# Async


async def test_async_functions_and_async_with(cp_client: Client) -> None:
    breaker = cp_client.breaker("async", **{**TIGHT, "open_for": 0.2, "half_open_calls": 1})

    @breaker
    async def fetch(fail: bool) -> str:
        await asyncio.sleep(0)
        if fail:
            raise Boom("down")
        return "ok"

    assert await fetch(False) == "ok"
    with pytest.raises(Boom):
        async with breaker:
            raise Boom("down")
    assert breaker.state == "open"
    with pytest.raises(CircuitOpenError):
        await fetch(False)
    with pytest.raises(CircuitOpenError):
        async with breaker:
            pass

    deadline = time.monotonic() + 5
    while breaker.state != "half_open":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert await fetch(False) == "ok"  # the probe, permitted through the async connection
    while breaker.state != "closed":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    async with breaker:
        pass
    assert await breaker.acall(fetch, False) == "ok"


# Redis outages


def test_calls_keep_working_while_redis_is_down(
    client_factory: Callable[..., Client], disposable_redis: RedisServer
) -> None:
    client = client_factory().start()
    breaker = client.breaker(
        "outage",
        failure_rate_threshold=50,
        minimum_calls=4,
        window_size=4,
        open_for=0.2,
        half_open_calls=2,
    )
    upstream = Upstream()
    call = breaker(upstream)
    seen: set[str] = set()
    unexpected: list[BaseException] = []
    slowest = 0.0

    def traffic(seconds: float) -> None:
        nonlocal slowest
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.monotonic()
            try:
                call()
            except (Boom, CircuitOpenError):
                pass
            except BaseException as exc:
                unexpected.append(exc)
            slowest = max(slowest, time.monotonic() - started)
            seen.add(breaker.state)
            time.sleep(0.002)

    traffic(0.2)
    disposable_redis.stop()
    upstream.failing = True
    traffic(0.6)  # opens, probes locally, reopens
    assert "open" in seen
    upstream.failing = False

    def recovered() -> bool:
        traffic(0.05)
        return breaker.state == "closed"

    wait_for(recovered, timeout=5)  # half-open, local probes succeed, closed
    assert not unexpected
    assert slowest < 1.0  # nothing waits long on the dead server

    # Back up (empty): the transition Redis missed is written after the resync.
    disposable_redis.start()
    document = wait_for(
        lambda: shared_state(redis.Redis.from_url(disposable_redis.url), client, "outage")
    )
    assert document["state"] == "closed" and document["instance"] == client.instance_id


# Policies, reporting, metrics


def test_a_published_policy_changes_thresholds_live(
    cp_client: Client, set_policy: Callable[..., Policy]
) -> None:
    breaker = cp_client.breaker(
        "live", failure_rate_threshold=50, minimum_calls=50, window_size=100
    )
    upstream = Upstream()
    for _ in range(3):
        attempt(lambda: breaker.call(upstream, True))
    assert breaker.state == "closed"

    set_policy("breaker", "live", minimum_calls=2, window_size=2, open_for=30)
    wait_for(lambda: breaker.settings["minimum_calls"] == 2)
    assert breaker.stats()["window_calls"] == 0  # a resized window starts empty
    attempt(lambda: breaker.call(upstream, False))
    assert breaker.state == "closed"
    attempt(lambda: breaker.call(upstream, True))
    assert breaker.state == "open"

    set_policy("breaker", "live", minimum_calls=2, window_size=2, open_for=30, mode="observe")
    wait_for(lambda: breaker.settings["mode"] == "observe")
    assert attempt(lambda: breaker.call(upstream, False)) == "ok"


def test_transitions_are_reported_and_the_gauge_follows(
    cp_client: Client, raw_redis: redis.Redis
) -> None:
    breaker = cp_client.breaker("reported-breaker", **TIGHT)
    for _ in range(2):
        attempt(lambda: breaker.call(Upstream(), True))

    transitions = wait_for(lambda: reports(raw_redis, cp_client, "transition"))
    assert transitions[0]["policy"] == "breaker:reported-breaker"
    assert (transitions[0]["from_state"], transitions[0]["to_state"]) == ("closed", "open")
    assert transitions[0]["reason"] == "failure_rate"
    assert transitions[0]["failure_rate"] == 100.0

    def gauge(state: str) -> float | None:
        labels = {"breaker": "reported-breaker", "state": state}
        return REGISTRY.get_sample_value("controlplane_client_breaker_state", labels)

    assert (gauge("open"), gauge("closed")) == (1.0, 0.0)
    breaker.reset()
    assert breaker.state == "closed"
    assert (gauge("open"), gauge("closed")) == (0.0, 1.0)


def test_an_unmanaged_breaker_is_reported_as_discovered(
    cp_client: Client, raw_redis: redis.Redis
) -> None:
    cp_client.breaker("discovered", failure_rate_threshold=30, record_exceptions=[Boom])
    found = wait_for(
        lambda: [
            e
            for e in reports(raw_redis, cp_client, "discovered")
            if e["policy"] == "breaker:discovered"
        ]
    )
    defaults = found[0]["defaults"]
    assert defaults["failure_rate_threshold"] == 30
    assert defaults["record_exceptions"] == ["tests.client.test_breaker.Boom"]
