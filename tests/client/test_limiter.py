from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from django.db.models import F
from prometheus_client import REGISTRY
from redis.crc import key_slot

from controlplane.client import Client, RateLimitExceeded
from controlplane.client.limiter import Decision, RateLimiter, _LocalBuckets
from controlplane.embedded_redis import RedisServer
from controlplane.policies.models import Environment, Policy
from controlplane.policies.publish import write_document
from controlplane.protocol.documents import OverrideDocument
from controlplane.protocol.schema import PolicyError
from controlplane.protocol.scripts import batcher_for
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

ALGORITHMS = ["token_bucket", "gcra", "fixed_window", "sliding_window"]
# Long enough that no refill and no window boundary falls inside a test (windows
# are aligned to multiples of the period since the epoch).
LONG = 30 * 24 * 3600.0


@pytest.fixture
def client(client_factory: Callable[..., Client]) -> Client:
    """A client that is not started: no background traffic on Redis."""
    return client_factory()


def decisions_of(limiter: RateLimiter, subject: str, count: int) -> list[Decision]:
    return [limiter.hit(subject) for _ in range(count)]


def raw_state(redis_client: redis.Redis, key: str) -> Any:
    kind = redis_client.type(key)
    if kind == "hash":
        return redis_client.hgetall(key)
    return redis_client.get(key)


def decision_count(limiter: str, result: str) -> float:
    value = REGISTRY.get_sample_value(
        "controlplane_client_rate_limit_decisions_total", {"limiter": limiter, "result": result}
    )
    return value or 0.0


def publish_override(
    environment: Environment, client: Client, name: str, state: str | None, **extra: Any
) -> None:
    """Publish an operator override the way the control plane does."""
    Environment.objects.filter(pk=environment.pk).update(revision=F("revision") + 1)
    environment.refresh_from_db()
    document = OverrideDocument(
        kind="rate_limit",
        name=name,
        revision=environment.revision,
        state=state,
        reason="tests",
        actor="tests",
        **extra,
    )
    write_document(
        client.keys,
        "overrides",
        f"rate_limit:{name}",
        document.encode(),
        environment.revision,
    )


# Admission


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_algorithm_admits_exactly_the_limit(client: Client, algorithm: str) -> None:
    limiter = client.limiter(f"exact-{algorithm}", algorithm=algorithm, limit=5, period=LONG)

    decisions = decisions_of(limiter, "user:1", 9)

    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 4
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0, 0, 0, 0]
    assert {d.limit for d in decisions} == {5}
    assert all(d.source == "redis" for d in decisions)
    assert all(d.retry_after == 0 for d in decisions[:5])
    assert all(0 < d.retry_after <= 2 * LONG for d in decisions[5:])
    # Another subject has its own quota.
    assert limiter.hit("user:2").remaining == 4


@pytest.mark.parametrize("algorithm", ["token_bucket", "gcra"])
def test_burst_is_the_capacity_and_the_rate_stays_limit_per_period(
    client: Client, algorithm: str
) -> None:
    limiter = client.limiter(f"burst-{algorithm}", algorithm=algorithm, limit=4, period=40, burst=2)

    first, second, third = decisions_of(limiter, "s", 3)

    assert (first.allowed, second.allowed, third.allowed) == (True, True, False)
    assert first.limit == 2 and first.remaining == 1
    # One request is earned back every period / limit = 10 seconds.
    assert 9.0 < third.retry_after <= 10.0
    assert 19.0 < second.reset_after <= 20.0


@pytest.mark.parametrize("algorithm", ["token_bucket", "gcra"])
def test_quota_comes_back_after_retry_after(client: Client, algorithm: str) -> None:
    limiter = client.limiter(f"refill-{algorithm}", algorithm=algorithm, limit=2, period=0.4)
    assert [d.allowed for d in decisions_of(limiter, "s", 2)] == [True, True]
    rejected = limiter.hit("s")
    assert not rejected.allowed
    assert 0 < rejected.retry_after <= 0.2

    time.sleep(rejected.retry_after)  # the behaviour under test: the quota refills

    assert limiter.hit("s").allowed


@pytest.mark.parametrize("algorithm", ["token_bucket", "gcra"])
def test_reset_after_grows_with_each_request(client: Client, algorithm: str) -> None:
    limiter = client.limiter(f"reset-{algorithm}", algorithm=algorithm, limit=4, period=40)
    resets = [d.reset_after for d in decisions_of(limiter, "s", 4)]
    for used, reset in enumerate(resets, start=1):
        assert used * 10 - 0.5 < reset <= used * 10


def test_fixed_windows_are_aligned_to_multiples_of_the_period(client: Client) -> None:
    limiter = client.limiter("aligned", algorithm="fixed_window", limit=3, period=10)
    decision = limiter.hit("s")
    expected = 10 - (time.time() % 10)
    assert decision.reset_after == pytest.approx(expected, abs=0.2)
    assert limiter.hit("s").reset_after <= decision.reset_after


def test_sliding_window_weights_the_previous_window(client: Client) -> None:
    period = 0.5
    limiter = client.limiter("sliding", algorithm="sliding_window", limit=4, period=period)
    time.sleep(period - time.time() % period + 0.01)  # start of a window
    assert [d.allowed for d in decisions_of(limiter, "s", 5)] == [True] * 4 + [False]

    # 62.5% into the next window the previous one weighs 4 * 0.375 = 1.5 requests,
    # so 2 more fit (1.5 + 2 <= 4) and a third does not (1.5 + 3 > 4).
    time.sleep(period - time.time() % period + 0.625 * period)
    decisions = decisions_of(limiter, "s", 3)

    assert [d.allowed for d in decisions] == [True, True, False]
    assert [d.remaining for d in decisions[:2]] == [1, 0]
    # Admitted again once the previous window has faded enough: before this window ends.
    assert 0 < decisions[2].retry_after < period * 0.375 + 0.01


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_rejected_requests_change_nothing_in_redis(
    client: Client, redis_client: redis.Redis, algorithm: str
) -> None:
    limiter = client.limiter(f"noconsume-{algorithm}", algorithm=algorithm, limit=2, period=LONG)
    decisions_of(limiter, "s", 2)
    key = limiter.key_for("s")
    before = raw_state(redis_client, key)
    assert before

    assert not any(d.allowed for d in decisions_of(limiter, "s", 10))

    assert raw_state(redis_client, key) == before


def test_rejected_requests_do_not_delay_the_refill(client: Client) -> None:
    limiter = client.limiter("hammered", algorithm="token_bucket", limit=2, period=0.4)
    decisions_of(limiter, "s", 2)
    started = time.monotonic()
    first_rejection = limiter.hit("s")
    refilled = started + first_rejection.retry_after
    knocks = 0
    while time.monotonic() < refilled - 0.05:  # keep knocking while empty
        assert not limiter.hit("s").allowed
        knocks += 1
    time.sleep(max(0.0, refilled - time.monotonic()))
    assert knocks > 10
    assert limiter.hit("s").allowed


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_peek_consumes_nothing(client: Client, algorithm: str) -> None:
    limiter = client.limiter(f"peek-{algorithm}", algorithm=algorithm, limit=2, period=LONG)
    assert limiter.peek("s").remaining == 2
    assert limiter.peek("s").allowed
    assert limiter.hit("s").remaining == 1
    assert limiter.peek("s").remaining == 1
    limiter.hit("s")
    peeked = limiter.peek("s")
    assert not peeked.allowed and peeked.retry_after > 0
    assert limiter.hit("s").allowed is False


def test_cost_counts_several_requests_at_once(client: Client) -> None:
    limiter = client.limiter("cost", algorithm="fixed_window", limit=5, period=LONG)
    assert limiter.hit("s", cost=3).remaining == 2
    assert not limiter.hit("s", cost=3).allowed
    assert limiter.hit("s", cost=2).remaining == 0
    with pytest.raises(ValueError, match="cost"):
        limiter.hit("s", cost=0)


def test_bad_code_defaults_are_the_programmers_error(client: Client) -> None:
    with pytest.raises(PolicyError) as error:
        RateLimiter(client, "bad", algorithm="leaky", limit=0)
    assert set(error.value.errors) == {"algorithm", "limit"}
    with pytest.raises(PolicyError, match="burst"):
        RateLimiter(client, "bad2", algorithm="fixed_window", burst=3)


def test_period_accepts_timedelta_and_text(client: Client) -> None:
    from datetime import timedelta

    assert client.limiter("td", period=timedelta(minutes=2)).settings.period == 120.0
    assert client.limiter("text", period="1h30m").settings.period == 5400.0


# Concurrency

HAMMER = """
import json, sys
from controlplane.client import Client
url, prefix, algorithm, name, period = sys.argv[1:6]
client = Client(url, environment="production", key_prefix=prefix)
limiter = client.limiter(
    name, algorithm=algorithm, limit=50, period=float(period), on_redis_error="deny"
)
limiter.peek("warm-up")  # connect and load the script before the start signal
print("ready", flush=True)
sys.stdin.readline()
decisions = [limiter.hit("shared") for _ in range(20)]
print(json.dumps({
    "allowed": sum(d.allowed for d in decisions),
    "sources": sorted({d.source for d in decisions}),
}), flush=True)
client.close()
"""


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_eight_processes_admit_exactly_the_limit(settings: Any, algorithm: str) -> None:
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                HAMMER,
                settings.REDIS_URL,
                settings.REDIS_KEY_PREFIX,
                algorithm,
                f"hammer-{algorithm}",
                str(LONG),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
        for process in processes:  # start together
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        results = []
        for process in processes:
            out, _ = process.communicate(timeout=30)
            assert process.returncode == 0
            results.append(json.loads(out))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert sum(r["allowed"] for r in results) == 50  # of 160 attempts
    assert all(r["sources"] == ["redis"] for r in results)


FORKED = """
import os, sys
from controlplane.client import Client
client = Client(sys.argv[1], environment="production", key_prefix=sys.argv[2])
limiter = client.limiter("forked", limit=3, period=3600, on_redis_error="deny")
assert limiter.hit("s").remaining == 2
pid = os.fork()
if pid == 0:
    first, second, third = (limiter.hit("s") for _ in range(3))
    got = [(d.allowed, d.remaining, d.source) for d in (first, second, third)]
    ok = got == [(True, 1, "redis"), (True, 0, "redis"), (False, 0, "redis")]
    os._exit(0 if ok else 1)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_forked_child_shares_the_quota(settings: Any) -> None:
    process = subprocess.run(
        [sys.executable, "-c", FORKED, settings.REDIS_URL, settings.REDIS_KEY_PREFIX],
        timeout=30,
        check=False,
    )
    assert process.returncode == 0


# Round trips and keys


@pytest.fixture
def probe(disposable_redis: RedisServer) -> Iterator[redis.Redis]:
    """A connection to read the server's command statistics (connected once, up front)."""
    connection = redis.Redis.from_url(disposable_redis.url)
    connection.ping()
    yield connection
    connection.close()


def command_calls(probe: redis.Redis) -> dict[str, int]:
    stats = probe.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(data["calls"])
        for name, data in stats.items()
        if name != "cmdstat_info"
    }


# What the scripts call inside Redis; INFO commandstats counts those too.
SCRIPT_COMMANDS = {"time", "get", "set", "hmget", "hset", "hincrby", "pexpire"}


def client_commands(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Commands sent by clients between two snapshots (script internals left out)."""
    delta = {name: after[name] - before.get(name, 0) for name in after}
    assert delta.get("time", 0) == delta.get("evalsha", 0)  # one script run per EVALSHA
    return {name: count for name, count in delta.items() if count and name not in SCRIPT_COMMANDS}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_one_round_trip_per_check(
    probe: redis.Redis, client_factory: Callable[..., Client], algorithm: str
) -> None:
    client = client_factory()
    limiter = client.limiter("rtt", algorithm=algorithm, limit=10, period=LONG)
    limiter.hit("warm-up")  # opens the connection and loads the script
    before = command_calls(probe)

    decisions = decisions_of(limiter, "s", 15)

    assert client_commands(before, command_calls(probe)) == {"evalsha": 15}
    assert sum(d.allowed for d in decisions) == 10


async def test_async_checks_are_batched_into_one_pipeline(
    probe: redis.Redis, client_factory: Callable[..., Client]
) -> None:
    client = client_factory()
    limiter = client.limiter("abatch", limit=50, period=LONG)
    await limiter.ahit("warm-up")
    batcher = batcher_for(client.async_redis())
    batches = batcher.batches
    before = command_calls(probe)

    decisions = await asyncio.gather(*(limiter.ahit("shared") for _ in range(64)))

    assert batcher.batches - batches == 1  # 64 checks, one round trip
    assert client_commands(before, command_calls(probe)) == {"evalsha": 64}
    allowed = [d for d in decisions if d.allowed]
    assert len(allowed) == 50
    assert sorted(d.remaining for d in allowed) == list(range(50))
    assert all(d.retry_after > 0 for d in decisions if not d.allowed)
    await client.async_redis().aclose()


async def test_a_full_batch_is_sent_at_once(client: Client) -> None:
    limiter = client.limiter("abig", limit=1000, period=LONG)
    await limiter.ahit("warm-up")
    batcher = batcher_for(client.async_redis())
    batches = batcher.batches

    decisions = await asyncio.gather(*(limiter.ahit(f"user:{i % 7}") for i in range(600)))

    assert batcher.batches - batches == 3  # 256 + 256 + 88
    assert all(d.allowed and d.source == "redis" for d in decisions)
    await client.async_redis().aclose()


async def test_an_error_reply_fails_only_its_own_call(
    client: Client, redis_client: redis.Redis
) -> None:
    limiter = client.limiter("aerror", limit=5, period=LONG, on_redis_error="deny")
    redis_client.set(limiter.key_for("broken"), "not a bucket")  # WRONGTYPE for the script

    decisions = await asyncio.gather(limiter.ahit("a"), limiter.ahit("broken"), limiter.ahit("b"))

    assert [d.source for d in decisions] == ["redis", "deny", "redis"]
    assert (await limiter.ahit("a")).remaining == 3  # Redis is still used
    assert limiter.hit("broken").source == "deny"
    assert limiter.hit("b").source == "redis"
    await client.async_redis().aclose()


async def test_many_async_callers_admit_exactly_the_limit(client: Client) -> None:
    limiter = client.limiter("aworkers", algorithm="gcra", limit=50, period=LONG)

    async def worker() -> int:
        admitted = 0
        for _ in range(5):
            decision = await limiter.ahit("shared")
            assert decision.source == "redis"
            admitted += decision.allowed
        return admitted

    assert sum(await asyncio.gather(*(worker() for _ in range(64)))) == 50
    await client.async_redis().aclose()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("subject", ["user:42", "GET /orders/{id} as alice"])
def test_keys_share_the_base_keys_slot_and_expire(
    client: Client, redis_client: redis.Redis, algorithm: str, subject: str
) -> None:
    limiter = client.limiter(f"slot-{algorithm}", algorithm=algorithm, limit=3, period=60)
    limiter.hit(subject)
    base = client.keys.rate_limit(limiter.name, subject)

    keys = list(redis_client.scan_iter(match=base.replace("[", "\\[") + "*"))

    assert keys == [limiter.key_for(subject)]
    assert all(key_slot(key.encode()) == key_slot(base.encode()) for key in keys)
    assert all(0 < int(redis_client.pttl(key)) <= 121_000 for key in keys)


# Observe mode and counters


def test_observe_mode_lets_everything_through_and_records_would_reject(client: Client) -> None:
    limiter = client.limiter("shadow", limit=2, period=LONG, mode="observe")
    before = decision_count("shadow", "would_reject")

    decisions = decisions_of(limiter, "user:7", 5)

    assert all(d.allowed for d in decisions)
    assert [d.observed_rejection for d in decisions] == [False, False, True, True, True]
    assert decisions[-1].retry_after > 0 and decisions[-1].remaining == 0
    assert decision_count("shadow", "would_reject") - before == 3
    counters = limiter._collect()["rate_limit:shadow"]
    assert counters["allowed"] == 2
    assert counters["would_reject"] == 3
    assert counters["rejected"] == 0
    assert counters["top_rejected"] == {"user:7": 3}


def test_collector_counts_per_interval_and_lists_top_rejected_subjects(client: Client) -> None:
    limiter = client.limiter("counted", limit=1, period=LONG)
    for index in range(12):
        for _ in range(index + 2):  # one allowed, index + 1 rejected
            limiter.hit(f"user:{index}")

    counters = limiter._collect()["rate_limit:counted"]

    assert counters["allowed"] == 12
    assert counters["rejected"] == sum(range(1, 13))
    assert counters["top_rejected"] == {f"user:{i}": i + 1 for i in range(11, 1, -1)}
    assert limiter._collect()["rate_limit:counted"]["allowed"] == 0  # swapped out


def test_counters_reach_the_report_stream(cp_client: Client, redis_client: redis.Redis) -> None:
    limiter = cp_client.limiter("reported", limit=1, period=LONG)
    decisions_of(limiter, "user:1", 3)

    def reported() -> Any:
        for _, fields in redis_client.xrange(cp_client.keys.reports):
            if fields["type"] == "counters":
                policies = json.loads(fields["data"])["policies"]
                if "rate_limit:reported" in policies:
                    return policies["rate_limit:reported"]
        return None

    # The counters at 0 (would_reject, fallback) are left out (docs/protocol.md, 12.2).
    assert wait_for(reported) == {"allowed": 1, "rejected": 2, "top_rejected": {"user:1": 2}}


def test_unmanaged_limiter_is_reported_as_discovered(
    cp_client: Client, redis_client: redis.Redis
) -> None:
    cp_client.limiter("found", algorithm="gcra", limit=7, period=2)

    def discovered() -> Any:
        for _, fields in redis_client.xrange(cp_client.keys.reports):
            data = json.loads(fields["data"])
            if fields["type"] == "discovered" and data["policy"] == "rate_limit:found":
                return data["defaults"]
        return None

    defaults = wait_for(discovered)
    assert (defaults["algorithm"], defaults["limit"], defaults["period"]) == ("gcra", 7, 2.0)
    assert defaults["burst"] == 7


# Policies and overrides


def test_published_policy_change_applies_live(
    cp_client: Client, set_policy: Callable[..., Policy]
) -> None:
    limiter = cp_client.limiter("live", algorithm="fixed_window", limit=2, period=LONG)
    assert [d.allowed for d in decisions_of(limiter, "s", 3)] == [True, True, False]
    assert not limiter.settings.managed

    set_policy("rate_limit", "live", algorithm="fixed_window", limit=5, period=LONG)
    wait_for(lambda: limiter.settings.limit == 5)

    decisions = decisions_of(limiter, "s", 4)
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[0].limit == 5
    settings = limiter.settings
    assert settings.managed

    set_policy("rate_limit", "live", algorithm="fixed_window", limit=5, period=LONG, mode="observe")
    wait_for(lambda: limiter.settings.mode == "observe")
    assert limiter.hit("s").observed_rejection


def test_switching_the_algorithm_live_starts_from_a_clean_state(
    cp_client: Client, set_policy: Callable[..., Policy]
) -> None:
    set_policy("rate_limit", "switch", algorithm="fixed_window", limit=2, period=LONG)
    limiter = cp_client.limiter("switch")
    wait_for(lambda: limiter.settings.algorithm == "fixed_window")
    decisions_of(limiter, "s", 3)

    set_policy("rate_limit", "switch", algorithm="gcra", limit=2, period=LONG)
    wait_for(lambda: limiter.settings.algorithm == "gcra")

    assert [d.allowed for d in decisions_of(limiter, "s", 3)] == [True, True, False]


def test_block_all_override_rejects_everything_until_lifted(
    cp_client: Client, production: Environment
) -> None:
    limiter = cp_client.limiter("blocked", limit=100, period=30)
    assert limiter.hit("s").allowed

    publish_override(production, cp_client, "blocked", "block_all")
    wait_for(lambda: cp_client.state.override("rate_limit", "blocked") is not None)

    decision = limiter.hit("s")
    assert (decision.allowed, decision.source) == (False, "block_all")
    assert decision.retry_after == 30  # no expiry: one period
    assert not limiter.hit("other").allowed

    publish_override(production, cp_client, "blocked", None)
    wait_for(lambda: limiter.hit("s").allowed)


def test_block_all_with_an_expiry_retries_after_it(
    cp_client: Client, production: Environment
) -> None:
    limiter = cp_client.limiter("blocked-until", limit=100, period=3600, mode="observe")
    publish_override(
        production, cp_client, "blocked-until", "block_all", expires_at=time.time() + 60
    )
    wait_for(lambda: cp_client.state.override("rate_limit", "blocked-until") is not None)

    decision = limiter.hit("s")

    # An operator's block wins over observe mode.
    assert not decision.allowed
    assert 58 < decision.retry_after <= 60


def test_bypass_override_admits_everything_without_redis(
    cp_client: Client, production: Environment, redis_client: redis.Redis
) -> None:
    limiter = cp_client.limiter("bypassed", limit=1, period=LONG)
    publish_override(production, cp_client, "bypassed", "bypass")
    wait_for(lambda: cp_client.state.override("rate_limit", "bypassed") is not None)

    decisions = decisions_of(limiter, "s", 5)

    assert all(d.allowed and d.source == "bypass" and d.remaining == 1 for d in decisions)
    assert redis_client.exists(limiter.key_for("s")) == 0


# Redis failures


@pytest.fixture
def failing_client(
    disposable_redis: RedisServer, client_factory: Callable[..., Client]
) -> Iterator[Client]:
    yield client_factory()


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("allow", (True, 5, 0.0, "allow")),
        ("deny", (False, 0, 1.0, "deny")),
    ],
)
def test_on_redis_error_allow_and_deny(
    failing_client: Client, disposable_redis: RedisServer, action: str, expected: tuple[Any, ...]
) -> None:
    limiter = failing_client.limiter(f"down-{action}", limit=5, period=LONG, on_redis_error=action)
    assert limiter.hit("s").source == "redis"
    before = decision_count(limiter.name, "fallback")
    disposable_redis.stop()

    decisions = decisions_of(limiter, "s", 3)

    assert {(d.allowed, d.remaining, d.retry_after, d.source) for d in decisions} == {expected}
    assert decision_count(limiter.name, "fallback") - before == 3
    assert limiter._collect()[f"rate_limit:{limiter.name}"]["fallback"] == 3


def test_on_redis_error_local_limits_each_subject_in_process(
    failing_client: Client, disposable_redis: RedisServer
) -> None:
    limiter = failing_client.limiter("down-local", limit=3, period=LONG, on_redis_error="local")
    disposable_redis.stop()

    decisions = decisions_of(limiter, "a", 5)

    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert [d.remaining for d in decisions[:3]] == [2, 1, 0]
    assert {d.source for d in decisions} == {"local"}
    assert decisions[-1].retry_after > 0
    assert limiter.hit("b").allowed


def test_local_fallback_remembers_a_bounded_number_of_subjects(client: Client) -> None:
    settings = client.limiter("lru", limit=1, period=LONG).settings
    buckets = _LocalBuckets(max_subjects=3)
    for subject in ["a", "b", "c", "d", "e"]:
        assert buckets.hit(settings, subject, 1, False).allowed
    assert len(buckets) == 3
    assert not buckets.hit(settings, "e", 1, False).allowed
    assert buckets.hit(settings, "a", 1, False).allowed  # forgotten: a fresh bucket


def test_a_hung_redis_costs_at_most_the_client_timeout(
    disposable_redis: RedisServer, client_factory: Callable[..., Client]
) -> None:
    client = client_factory(timeout=0.2)
    limiter = client.limiter("hung", limit=3, period=LONG, on_redis_error="deny")
    assert limiter.hit("s").source == "redis"
    assert disposable_redis.process is not None
    os.kill(disposable_redis.process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        first = limiter.hit("s")
        first_took = time.monotonic() - started
        started = time.monotonic()
        second = limiter.hit("s")
        second_took = time.monotonic() - started
    finally:
        os.kill(disposable_redis.process.pid, signal.SIGCONT)
    assert (first.source, second.source) == ("deny", "deny")
    assert first_took < 1.0
    assert second_took < 0.05  # Redis is skipped for a moment after a failure


def test_checks_recover_after_a_redis_restart_that_lost_the_scripts(
    failing_client: Client, disposable_redis: RedisServer
) -> None:
    limiter = failing_client.limiter("restart", limit=3, period=LONG, on_redis_error="deny")
    assert limiter.hit("s").source == "redis"
    disposable_redis.stop()
    assert limiter.hit("s").source == "deny"
    disposable_redis.start()  # empty: no state, no scripts

    wait_for(lambda: limiter.hit("t").source == "redis")
    assert limiter.hit("s").remaining == 2  # the state was lost with the server


async def test_async_checks_fall_back_and_recover(
    failing_client: Client, disposable_redis: RedisServer
) -> None:
    limiter = failing_client.limiter("arestart", limit=3, period=LONG, on_redis_error="deny")
    assert (await limiter.ahit("s")).source == "redis"
    disposable_redis.stop()
    assert (await limiter.ahit("s")).source == "deny"
    disposable_redis.start()

    deadline = time.monotonic() + 10
    while (await limiter.ahit("t")).source != "redis":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert (await limiter.ahit("s")).remaining == 2
    await failing_client.async_redis().aclose()


# Decorator


def test_decorator_raises_rate_limit_exceeded_with_the_decision(client: Client) -> None:
    calls: list[int] = []

    limit_per_user: Callable[[Callable[[int], int]], Callable[[int], int]] = client.rate_limited(
        "deco", key=lambda user_id: f"user:{user_id}", limit=2, period=LONG
    )

    @limit_per_user
    def fetch(user_id: int) -> int:
        calls.append(user_id)
        return user_id * 10

    assert fetch(1) == 10 and fetch(1) == 10
    with pytest.raises(RateLimitExceeded) as error:
        fetch(1)
    assert error.value.name == "deco"
    assert not error.value.decision.allowed
    assert error.value.retry_after == error.value.decision.retry_after > 0
    assert fetch(2) == 20  # another subject
    assert calls == [1, 1, 2]
    assert fetch.__name__ == "fetch"


async def test_decorator_on_async_functions(client: Client) -> None:
    @client.limiter("adeco", limit=1, period=LONG).decorate()
    async def work() -> str:
        return "done"

    assert await work() == "done"
    with pytest.raises(RateLimitExceeded):
        await work()
    await client.async_redis().aclose()


def test_retry_after_is_rounded_up_to_whole_milliseconds(client: Client) -> None:
    limiter = client.limiter("rounding", algorithm="gcra", limit=3, period=1)
    decisions_of(limiter, "s", 3)
    rejected = limiter.hit("s")
    assert rejected.retry_after == math.ceil(rejected.retry_after * 1000) / 1000
    assert 0.3 < rejected.retry_after <= 0.334
