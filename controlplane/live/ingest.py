"""Ingest what clients report, once per report however many replicas run.

Each control-plane process reads the environments' report streams through one
consumer group, so every entry is processed by one replica: counters and
breaker states go to the live state in Redis (shared by all replicas),
transitions and discovered names to the database. Each batch then tells every
replica's open dashboards, through the channel layer, which policies changed.
Entries a dead replica left pending are claimed after a minute.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from django.db import close_old_connections

from controlplane.errors import DATABASE_UNAVAILABLE, Outage
from controlplane.live import state
from controlplane.live.models import BreakerEvent, DiscoveredName
from controlplane.live.push import notify
from controlplane.metrics import DATABASE_ERRORS, REPORTS_INGESTED
from controlplane.policies.models import Environment, Policy
from controlplane.protocol.connection import is_cluster
from controlplane.redis_connection import get_redis

logger = logging.getLogger(__name__)

GROUP = "controlplane"
REPORT_TYPES = ("heartbeat", "transition", "counters", "discovered")
BATCH = 500
CLAIM_IDLE_MS = 60_000
CLUSTER_POLL_INTERVAL = 0.05  # seconds between reads of idle streams on a Redis Cluster


def ensure_group(client: redis.Redis, stream: str) -> None:
    try:
        client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _at(data: dict[str, Any]) -> float:
    value = data.get("at")
    return float(value) if isinstance(value, int | float) else time.time()


@dataclass
class Changes:
    """What a batch of reports changed: ``state`` (transitions) is pushed sooner than figures."""

    figures: set[str] = field(default_factory=set)
    state: set[str] = field(default_factory=set)

    @property
    def all(self) -> set[str]:
        return self.figures | self.state


def process_entries(environment: Environment, entries: list[tuple[str, dict[str, str]]]) -> Changes:
    """Apply one environment's entries; return the policy fields (and ``@instances``) changed."""
    keys = environment.keys()
    client = get_redis()
    events: list[BreakerEvent] = []
    changes = Changes()
    discovered: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
    with client.pipeline(transaction=False) as pipe:
        for _entry_id, fields in entries:
            try:
                data = json.loads(fields.get("data", "{}"))
            except ValueError:
                logger.warning("Ignoring a report that is not JSON: %r", fields)
                continue
            if not isinstance(data, dict):
                continue
            kind = fields.get("type")
            instance = fields.get("instance", "")
            REPORTS_INGESTED.labels(kind if kind in REPORT_TYPES else "other").inc()
            if kind == "counters" and isinstance(data.get("policies"), dict):
                changes.figures |= state.record_counters(
                    pipe, keys, instance, _at(data), data["policies"]
                )
            elif kind == "transition":
                policy = str(data.get("policy", ""))
                policy_kind, _, name = policy.partition(":")
                to_state = str(data.get("to_state", ""))
                if policy_kind == "breaker" and name and to_state:
                    state.record_breaker_state(pipe, keys, name, instance, to_state, _at(data))
                    events.append(
                        BreakerEvent(
                            environment=environment,
                            name=name,
                            instance=instance,
                            service=fields.get("service", ""),
                            from_state=str(data.get("from_state", "")),
                            to_state=to_state,
                            reason=str(data.get("reason", ""))[:100],
                            failure_rate=_number(data.get("failure_rate")),
                            slow_call_rate=_number(data.get("slow_call_rate")),
                            at=datetime.fromtimestamp(_at(data), tz=UTC),
                        )
                    )
                    changes.state.add(policy)
            elif kind == "heartbeat":
                changes.figures.add("@instances")
            elif kind == "discovered":
                policy_kind, _, name = str(data.get("policy", "")).partition(":")
                defaults = data.get("defaults")
                if policy_kind and name and isinstance(defaults, dict):
                    discovered[(policy_kind, name)] = (defaults, fields.get("service", ""))
        pipe.execute()
    if events:
        BreakerEvent.objects.bulk_create(events)
    if discovered:
        _record_discovered(environment, discovered)
        changes.figures.add("@discovered")
    return changes


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _record_discovered(
    environment: Environment, found: dict[tuple[str, str], tuple[dict[str, Any], str]]
) -> None:
    managed = set(
        Policy.objects.filter(environment=environment, deleted=False).values_list("kind", "name")
    )
    now = datetime.now(UTC)
    for (kind, name), (defaults, service) in found.items():
        if (kind, name) in managed:
            continue
        DiscoveredName.objects.update_or_create(
            environment=environment,
            kind=kind,
            name=name,
            defaults={"defaults": defaults, "service": service, "last_seen": now},
        )


class Ingestor(threading.Thread):
    """Background thread of each control-plane process: read, apply, acknowledge, announce."""

    def __init__(self, block_ms: int = 1000) -> None:
        super().__init__(name="controlplane-ingest", daemon=True)
        self.block_ms = block_ms
        self.consumer = f"{socket.gethostname()}:{os.getpid()}"
        self._stop_event = threading.Event()
        self.processed = 0

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)

    def run(self) -> None:
        environments: dict[str, Environment] = {}
        next_refresh = 0.0
        next_claim = 0.0
        database = Outage(
            logger,
            DATABASE_ERRORS.labels("ingest"),
            "Ingest cannot reach the database",
            "The database answers again; ingest is running",
        )
        while not self._stop_event.is_set():
            close_old_connections()
            try:
                if time.monotonic() >= next_refresh:
                    environments = {e.keys().reports: e for e in Environment.objects.all()}
                    for stream in environments:
                        ensure_group(get_redis(), stream)
                    next_refresh = time.monotonic() + 10
                if not environments:
                    self._stop_event.wait(1)
                    continue
                if time.monotonic() >= next_claim:
                    self._claim_abandoned(environments)
                    next_claim = time.monotonic() + 30
                self._read_once(environments)
                database.answered()
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):  # Redis lost the stream and its group
                    next_refresh = 0.0
                else:
                    logger.warning("Ingest failed (%s); will retry", exc)
                self._stop_event.wait(0.5)
            except redis.RedisError as exc:
                logger.debug("Ingest cannot reach Redis (%s); will retry", exc)
                next_refresh = 0.0
                self._stop_event.wait(1)
            except DATABASE_UNAVAILABLE as exc:  # entries stay pending until it answers
                database.failed(exc)
                self._stop_event.wait(1)
            except Exception:
                logger.exception("Ingest failed; will retry")
                self._stop_event.wait(1)
        close_old_connections()

    def _read_once(self, environments: dict[str, Environment]) -> None:
        client = get_redis()
        replies: Any
        if is_cluster(client) and len(environments) > 1:
            # One XREADGROUP reads streams of one hash slot only, and each
            # environment has its own: read each without blocking, then pause.
            replies = []
            for stream in environments:
                replies += client.xreadgroup(GROUP, self.consumer, {stream: ">"}, count=BATCH) or []
            if not any(entries for _, entries in replies):
                self._stop_event.wait(CLUSTER_POLL_INTERVAL)
        else:
            replies = client.xreadgroup(
                GROUP,
                self.consumer,
                dict.fromkeys(environments, ">"),
                count=BATCH,
                block=self.block_ms,
            )
        for stream, entries in replies or []:
            self._handle(client, environments[stream], stream, entries)

    def _handle(
        self,
        client: redis.Redis,
        environment: Environment,
        stream: str,
        entries: list[tuple[str, dict[str, str]]],
    ) -> None:
        if not entries:
            return
        changes = process_entries(environment, entries)
        client.xack(stream, GROUP, *[entry_id for entry_id, _ in entries])
        self.processed += len(entries)
        notify(environment.name, changes.state, urgent=True)
        notify(environment.name, changes.figures - changes.state, urgent=False)

    def _claim_abandoned(self, environments: dict[str, Environment]) -> None:
        client = get_redis()
        for stream, environment in environments.items():
            reply: Any = client.xautoclaim(
                stream, GROUP, self.consumer, min_idle_time=CLAIM_IDLE_MS, count=BATCH
            )
            entries = [e for e in reply[1] if e and e[1] is not None]
            self._handle(client, environment, stream, entries)


_ingestor: Ingestor | None = None
_lock = threading.Lock()


def start_ingestor() -> Ingestor:
    global _ingestor
    with _lock:
        if _ingestor is None or not _ingestor.is_alive():
            _ingestor = Ingestor()
            _ingestor.start()
        return _ingestor
