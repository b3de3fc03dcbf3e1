"""The fleet's live state, as the ingest keeps it in Redis for every control-plane replica.

Counters are summed over instances per second into one hash per environment
and second (kept 16 minutes), rejected subjects per limiter and minute into a
sorted set, and each instance's breaker state into one hash. Any replica can
then render the overview from a handful of reads, whichever replica ingested
the reports.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import redis

from controlplane.protocol.keys import KeyLayout

HISTORY_SECONDS = 960  # 16 minutes: charts show the last 15
TOP_TTL_SECONDS = 1200
RATE_WINDOW = 5  # seconds averaged for the overview's rates
# A second's last reports (stamped when an instance flushes, just before the second
# ends) reach the ingest a little later: a second is read once this much has passed.
REPORT_GRACE = 0.5
INSTANCE_TIMEOUT = 30.0  # an instance without a heartbeat this long is gone
NUMERIC_COUNTERS = (
    "calls",
    "successes",
    "failures",
    "slow",
    "ignored",
    "rejected",
    "would_reject",
    "allowed",
    "fallback",
    "hits",
    "misses",
    "stale_hits",
    "local_hits",
    "errors",
)


def record_counters(
    pipe: Any, keys: KeyLayout, instance: str, at: float, policies: dict[str, Any]
) -> set[str]:
    """Queue the writes for one counters report; return the policy fields it touched."""
    second = int(at)
    hash_key = keys.live_second(second)
    touched: set[str] = set()
    for policy, counters in policies.items():
        if not isinstance(counters, dict):
            continue
        touched.add(policy)
        for counter in NUMERIC_COUNTERS:
            value = counters.get(counter)
            if isinstance(value, int | float) and not isinstance(value, bool) and value:
                pipe.hincrbyfloat(hash_key, f"{policy}|{counter}", value)
        kind, _, name = policy.partition(":")
        top = counters.get("top_rejected")
        if kind == "rate_limit" and isinstance(top, dict) and top:
            top_key = keys.live_top_rejected(name, second // 60)
            for subject, count in list(top.items())[:20]:
                if isinstance(count, int | float):
                    pipe.zincrby(top_key, count, str(subject))
            pipe.expire(top_key, TOP_TTL_SECONDS)
        state = counters.get("state")
        if kind == "breaker" and isinstance(state, str):
            pipe.hset(keys.live_breaker_states, f"{name}|{instance}", f"{state}|{at}")
    pipe.expire(hash_key, HISTORY_SECONDS)
    return touched


def record_breaker_state(
    pipe: Any, keys: KeyLayout, name: str, instance: str, state: str, at: float
) -> None:
    pipe.hset(keys.live_breaker_states, f"{name}|{instance}", f"{state}|{at}")


@dataclass
class PolicyRates:
    """Per-second averages over the last few seconds, summed over the fleet."""

    counters: dict[str, float] = field(default_factory=dict)

    def per_second(self, counter: str) -> float:
        return self.counters.get(counter, 0.0) / RATE_WINDOW

    @property
    def calls_per_second(self) -> float:
        return self.per_second("calls")

    def share(self, part: str, whole: str = "calls") -> float | None:
        total = self.counters.get(whole, 0.0)
        return None if not total else 100.0 * self.counters.get(part, 0.0) / total

    @property
    def failure_rate(self) -> float | None:
        return self.share("failures")

    @property
    def slow_rate(self) -> float | None:
        return self.share("slow")

    @property
    def hit_ratio(self) -> float | None:
        hits = sum(self.counters.get(c, 0.0) for c in ("hits", "local_hits", "stale_hits"))
        total = hits + self.counters.get("misses", 0.0)
        return None if not total else 100.0 * hits / total


@dataclass
class Instance:
    instance: str
    service: str
    host: str
    pid: int
    library_version: str
    revision: int
    connected: bool
    last_seen: float

    @property
    def age(self) -> float:
        return max(0.0, time.time() - self.last_seen)


@dataclass
class LiveSnapshot:
    """Everything the live pages show about one environment, read in one round trip."""

    rates: dict[str, PolicyRates]
    breaker_states: dict[str, dict[str, int]]  # breaker -> state -> instances
    instances: list[Instance]
    redis_ok: bool = True

    def rates_for(self, policy: str) -> PolicyRates:
        return self.rates.get(policy) or PolicyRates()


def _instances(raw: dict[str, str], now: float) -> list[Instance]:
    instances = []
    for instance_id, document in raw.items():
        try:
            data = json.loads(document)
            instance = Instance(
                instance=instance_id,
                service=str(data.get("service", "")),
                host=str(data.get("host", "")),
                pid=int(data.get("pid", 0)),
                library_version=str(data.get("library_version", "")),
                revision=int(data.get("revision", 0)),
                connected=bool(data.get("connected", False)),
                last_seen=float(data.get("at", 0)),
            )
        except (ValueError, TypeError, AttributeError):
            continue
        if now - instance.last_seen <= INSTANCE_TIMEOUT:
            instances.append(instance)
    return sorted(instances, key=lambda i: (i.service, i.instance))


COUNTERS_BY_KIND: dict[str, tuple[str, ...]] = {
    "breaker": ("calls", "failures", "slow", "rejected", "would_reject"),
    "rate_limit": ("allowed", "rejected", "would_reject", "fallback"),
    "cache": ("hits", "local_hits", "stale_hits", "misses"),
}


def read_snapshot(
    client: redis.Redis,
    keys: KeyLayout,
    now: float | None = None,
    policies: list[str] | None = None,
) -> LiveSnapshot:
    """Read the last complete seconds, breaker states and instances (one pipeline).

    With ``policies`` (``kind:name`` fields), only their counters are read (and
    their breakers' states counted), so refreshing a few rows costs about the
    same however many policies there are.
    """
    now = time.time() if now is None else now
    # The current second is still being reported; so, for REPORT_GRACE, is the last one:
    # read early, it would show lower figures, and rows would change back and forth.
    last = int(now - REPORT_GRACE) - 1
    wanted: list[str] | None = None
    if policies is not None:
        wanted = [
            f"{policy}|{counter}"
            for policy in policies
            for counter in COUNTERS_BY_KIND.get(policy.partition(":")[0], ())
        ]
    with client.pipeline(transaction=False) as pipe:
        for second in range(last - RATE_WINDOW + 1, last + 1):
            if wanted is None:
                pipe.hgetall(keys.live_second(second))
            elif wanted:
                pipe.hmget(keys.live_second(second), wanted)
        pipe.hgetall(keys.live_breaker_states)
        pipe.hgetall(keys.instances)
        replies = pipe.execute()
    states_raw, instances_raw = replies[-2], replies[-1]
    seconds: list[dict[str, Any]] = []
    for reply in replies[:-2]:
        if wanted is None:
            seconds.append(reply)
        else:
            seconds.append({f: v for f, v in zip(wanted, reply, strict=True) if v is not None})
    # Summed per field first, then split: a field is split once, not once per second.
    sums: dict[str, float] = {}
    for counters in seconds:
        for key, value in counters.items():
            sums[key] = sums.get(key, 0.0) + float(value)
    totals: dict[str, dict[str, float]] = defaultdict(dict)
    for key, total in sums.items():
        policy, _, counter = key.rpartition("|")
        totals[policy][counter] = total
    instances = _instances(instances_raw, now)
    alive = {i.instance for i in instances}
    breakers = None  # with ``policies``, only their breakers' states are counted
    if policies is not None:
        breakers = {p.partition(":")[2] for p in policies if p.startswith("breaker:")}
    breaker_states: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for key, value in states_raw.items():
        name, _, instance = key.partition("|")
        if instance in alive and (breakers is None or name in breakers):
            breaker_states[name][value.partition("|")[0]] += 1
    return LiveSnapshot(
        rates={policy: PolicyRates(dict(c)) for policy, c in totals.items()},
        breaker_states={name: dict(states) for name, states in breaker_states.items()},
        instances=instances,
    )


def read_history(
    client: redis.Redis, keys: KeyLayout, policy: str, counters: tuple[str, ...], seconds: int = 900
) -> dict[str, Any]:
    """Per-second values of ``counters`` for one policy over the last ``seconds``."""
    last = int(time.time()) - 1
    times = list(range(last - seconds + 1, last + 1))
    with client.pipeline(transaction=False) as pipe:
        for second in times:
            pipe.hmget(keys.live_second(second), [f"{policy}|{c}" for c in counters])
        rows = pipe.execute()
    series: dict[str, Any] = {"t": times}
    for index, counter in enumerate(counters):
        series[counter] = [float(row[index]) if row[index] else 0.0 for row in rows]
    return series


def top_rejected(
    client: redis.Redis, keys: KeyLayout, names: list[str], limit: int = 5
) -> dict[str, list[tuple[str, float]]]:
    """The subjects each limiter rejected most in this minute and the last (one round trip)."""
    if not names:
        return {}
    minute = int(time.time()) // 60
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            for m in (minute - 1, minute):
                pipe.zrevrange(keys.live_top_rejected(name, m), 0, limit - 1, withscores=True)
        replies = pipe.execute()
    result: dict[str, list[tuple[str, float]]] = {}
    for index, name in enumerate(names):
        merged: dict[str, float] = defaultdict(float)
        for reply in replies[2 * index : 2 * index + 2]:
            for subject, score in reply:
                merged[subject] += score
        result[name] = sorted(merged.items(), key=lambda item: -item[1])[:limit]
    return result


def breaker_instances(
    client: redis.Redis, keys: KeyLayout, name: str
) -> list[tuple[str, str, float]]:
    """``(instance, state, since)`` of every instance that reported breaker ``name``."""
    raw: dict[str, str] = client.hgetall(keys.live_breaker_states)  # type: ignore[assignment]
    found = []
    for key, value in raw.items():
        breaker, _, instance = key.partition("|")
        if breaker == name:
            state, _, at = value.partition("|")
            found.append((instance, state, float(at or 0)))
    return sorted(found)


SERIES: dict[str, tuple[str, ...]] = {
    "breaker": ("calls", "failures", "slow", "rejected"),
    "rate_limit": ("allowed", "rejected"),
    "cache": ("hits", "local_hits", "misses"),
}
