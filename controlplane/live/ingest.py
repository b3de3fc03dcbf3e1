"""Ingest what clients report, once per report however many replicas run.

Each control-plane process reads the environments' report streams through one
consumer group, so every entry is processed by one replica: counters and
breaker states go to the live state in Redis (shared by all replicas),
transitions and discovered names to the database. Each batch then tells every
replica's open dashboards, through the channel layer, which policies changed.
Entries a dead replica left pending are claimed after a minute.

Entries are untrusted input: read undecoded, each is checked field by field
(``read_report``) before it touches Redis or the database. A malformed one is
counted, skipped and acknowledged with its batch, and one warning per kind of
problem says so every few minutes; the valid entries around it are applied.
Only an outage (Redis or the database unreachable) leaves a batch pending.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from django.conf import settings
from django.db import DatabaseError, close_old_connections, transaction

from controlplane.live import history
from controlplane.live.models import BreakerEvent, DiscoveredName
from controlplane.live.push import notify
from controlplane.live.retention import prune_history
from controlplane.ops.metrics import DATABASE_ERRORS, REPORTS_INGESTED
from controlplane.ops.outage import DATABASE_UNAVAILABLE, Outage
from controlplane.policies.models import Environment, Policy
from controlplane.protocol import reports
from controlplane.protocol.connection import is_cluster
from controlplane.protocol.keys import KeyLayout
from controlplane.protocol.reports import (
    Counters,
    Discovered,
    Fields,
    Heartbeat,
    MalformedReport,
    Report,
    Transition,
)
from controlplane.redis_connection import get_redis

logger = logging.getLogger(__name__)

GROUP = "controlplane"
BATCH = 2000  # entries per read: a backlog is read in large batches, which cost less each
CLAIM_IDLE_MS = 60_000
CONSUMER_FORGET_MS = 600_000  # a consumer idle this long, with nothing pending, is removed
TRIM_INTERVAL = 1.0  # seconds between two trimmings of a stream by one process
UNREAD_KEEP_MS = 3_600_000  # what the stream of an environment nobody ingests keeps
CLUSTER_POLL_INTERVAL = 0.05  # seconds between reads of idle streams on a Redis Cluster
FORGET_INTERVAL = 60.0  # seconds between two removals of long-gone instances
PRUNE_INTERVAL = 3600.0  # seconds between two prunings of the database's history


def ensure_group(client: redis.Redis, stream: str) -> None:
    try:
        client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def read_report(fields: Fields, now: float | None = None) -> Report | None:
    """``protocol.reports.read_report``, with a heartbeat's members checked too."""
    report = reports.read_report(fields, now)
    if isinstance(report, Heartbeat):
        try:
            history.heartbeat_instance(report.instance, report.data)
        except ValueError as exc:
            raise MalformedReport("data", f"is not a heartbeat: {exc}") from None
    return report


@dataclass
class Changes:
    """What a batch of reports changed: ``state`` (transitions) is pushed sooner than figures."""

    figures: set[str] = field(default_factory=set)
    state: set[str] = field(default_factory=set)

    @property
    def all(self) -> set[str]:
        return self.figures | self.state


def process_entries(
    environment: Environment,
    entries: Sequence[tuple[Any, Fields]],
    skipped: history.SkippedEntries | None = None,
) -> Changes:
    """Apply one environment's entries; return the policy fields (and ``@instances``) changed.

    Malformed entries are skipped and reported to ``skipped`` (by default, one
    warning per kind of problem in this batch). Raises only when Redis or the
    database cannot be reached: the batch is then to be read again.
    """
    skipped = skipped or history.SkippedEntries(logger, "report entries")
    keys = environment.keys()
    now = time.time()
    events: list[BreakerEvent] = []
    changes = Changes()
    discovered: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
    writes = history.LiveWrites()
    for entry_id, fields in entries:
        try:
            report = read_report(fields, now)
        except MalformedReport as exc:
            REPORTS_INGESTED.labels("malformed").inc()
            skipped.skip(exc.field, f"{exc} (entry {_id(entry_id)} of {environment.name})")
            continue
        REPORTS_INGESTED.labels(_type_label(report)).inc()
        if isinstance(report, Counters):
            changes.figures |= history.record_counters(
                writes, report.instance, report.at, report.policies
            )
        elif isinstance(report, Transition):
            # Counted in the minute's states even if it lasts a second.
            writes.breaker_state(report.name, report.instance, report.to_state, report.at)
            events.append(
                BreakerEvent(
                    environment=environment,
                    name=report.name,
                    instance=report.instance,
                    service=report.service,
                    from_state=report.from_state,
                    to_state=report.to_state,
                    reason=report.reason,
                    failure_rate=report.failure_rate,
                    slow_call_rate=report.slow_call_rate,
                    at=datetime.fromtimestamp(report.at, tz=UTC),
                )
            )
            changes.state.add(f"breaker:{report.name}")
        elif isinstance(report, Heartbeat):
            changes.figures.add("@instances")
        elif isinstance(report, Discovered):
            discovered[(report.kind, report.name)] = (report.defaults, report.service)
    with get_redis().pipeline(transaction=False) as pipe:
        writes.write(pipe, keys)
        # A command Redis refuses (a live key of the wrong type, say) costs that write;
        # an unreachable Redis still raises, and the batch is read again.
        for result in pipe.execute(raise_on_error=False):
            if isinstance(result, redis.ResponseError):
                skipped.skip("live state", f"Redis refused a write of the live state: {result}")
    if events:
        _store_events(events, skipped)
    if discovered:
        _record_discovered(environment, discovered, skipped)
        changes.figures.add("@discovered")
    return changes


def _id(entry_id: Any) -> str:
    return entry_id.decode("ascii", "replace") if isinstance(entry_id, bytes) else str(entry_id)


def _type_label(report: Report | None) -> str:
    if isinstance(report, Heartbeat):
        return "heartbeat"
    if isinstance(report, Transition):
        return "transition"
    if isinstance(report, Counters):
        return "counters"
    if isinstance(report, Discovered):
        return "discovered"
    return "other"


def _store_events(events: list[BreakerEvent], skipped: history.SkippedEntries) -> None:
    """Insert the events at once; if the database refuses one, each on its own."""
    try:
        with transaction.atomic():
            BreakerEvent.objects.bulk_create(events)
        return
    except DATABASE_UNAVAILABLE:
        raise
    except (DatabaseError, ValueError):
        pass
    for event in events:
        event.pk = None  # in case the failed insert had numbered it
        _save_alone(event.save, skipped, f"breaker event {event.name} from {event.instance[:40]}")


def _save_alone(save: Callable[[], object], skipped: history.SkippedEntries, what: str) -> None:
    """Run ``save`` in a savepoint of its own: a row the database refuses costs that row."""
    try:
        with transaction.atomic():
            save()
    except DATABASE_UNAVAILABLE:
        raise
    except (DatabaseError, ValueError) as exc:  # psycopg refuses a NUL with ValueError
        skipped.skip("database", f"the database refused {what}: {exc}")


def _record_discovered(
    environment: Environment,
    found: dict[tuple[str, str], tuple[dict[str, Any], str]],
    skipped: history.SkippedEntries,
) -> None:
    managed = set(
        Policy.objects.filter(environment=environment, deleted=False).values_list("kind", "name")
    )
    now = datetime.now(UTC)
    for (kind, name), (defaults, service) in found.items():
        if (kind, name) not in managed:
            save = functools.partial(
                DiscoveredName.objects.update_or_create,
                environment=environment,
                kind=kind,
                name=name,
                defaults={"defaults": defaults, "service": service, "last_seen": now},
            )
            _save_alone(save, skipped, f"discovered {kind}:{name}")


Entries = list[tuple[str, dict[bytes, bytes]]]


def read_group(
    client: redis.Redis, consumer: str, streams: list[str], block_ms: int | None = None
) -> list[tuple[str, Entries]]:
    """New entries of ``streams`` for ``consumer``, undecoded: a field that is not UTF-8
    must cost its entry, not the batch it came in."""
    args: list[Any] = ["XREADGROUP", "GROUP", GROUP, consumer, "COUNT", BATCH]
    if block_ms is not None:
        args += ["BLOCK", block_ms]
    args += ["STREAMS", *streams, *[">"] * len(streams)]
    reply: Any = history.undecoded(client, *args)
    return [(_id(stream), _entries(entries)) for stream, entries in reply or []]


def claim_abandoned(client: redis.Redis, consumer: str, stream: str) -> Entries:
    """Entries of ``stream`` left pending by a dead consumer for ``CLAIM_IDLE_MS``, undecoded.

    Entries trimmed from the stream while pending are acknowledged here: Redis 7
    drops them from the pending list itself, Redis 6.2 returns them without
    fields, for ever, ahead of any entry that could still be processed.
    """
    reply: Any = history.undecoded(
        client, "XAUTOCLAIM", stream, GROUP, consumer, CLAIM_IDLE_MS, "0-0", "COUNT", BATCH
    )
    entries = _entries(reply[1])
    if len(entries) < len(reply[1] or []):
        _acknowledge_trimmed(client, consumer, stream)
    return entries


def _acknowledge_trimmed(client: redis.Redis, consumer: str, stream: str) -> None:
    """Acknowledge the entries ``consumer`` holds that the stream no longer has."""
    held: Any = client.xpending_range(stream, GROUP, "-", "+", BATCH, consumername=consumer)
    ids = [_id(entry["message_id"]) for entry in held]
    with client.pipeline(transaction=False) as pipe:
        for entry_id in ids:
            pipe.xrange(stream, entry_id, entry_id)
        found = pipe.execute()
    trimmed = [entry_id for entry_id, entry in zip(ids, found, strict=True) if not entry]
    if trimmed:
        client.xack(stream, GROUP, *trimmed)


def trim_processed(client: redis.Redis, stream: str) -> None:
    """Drop the entries of ``stream`` that the group has read and acknowledged.

    The stream then holds what is still to be read or pending (the backlog), not
    the last ``STREAM_MAXLEN`` entries: at a few hundred instances those are
    100 MB of Redis that nobody reads again.

    The last delivered id is read before the pending entries: an entry another
    replica reads in between is pending by then, and kept (read the other way
    round, it could be trimmed before its replica acknowledged it, and a crash of
    that replica would then lose it).
    """
    groups: Any = client.xinfo_groups(stream)
    delivered = next((_id(g["last-delivered-id"]) for g in groups if _id(g["name"]) == GROUP), None)
    if delivered is None:
        return
    summary: Any = client.xpending(stream, GROUP)
    if summary["pending"]:
        oldest = _id(summary["min"])
    else:
        milliseconds, _, sequence = delivered.partition("-")
        oldest = f"{milliseconds}-{int(sequence or 0) + 1}"
    client.xtrim(stream, minid=oldest, approximate=False)


def forget_consumers(client: redis.Redis, stream: str, keep: str) -> int:
    """Remove the group's consumers idle for ``CONSUMER_FORGET_MS`` with nothing pending.

    Each process reads as a consumer of its own (``<hostname>:<pid>``): without
    this, every restart would leave one in the group for good. A live one is never
    idle that long (it blocks a second at most); one removed by mistake comes back
    with its next read. Returns how many were removed.
    """
    removed = 0
    consumers: Any = client.xinfo_consumers(stream, GROUP)
    for consumer in consumers:
        name = _id(consumer["name"])
        if name != keep and not consumer["pending"] and consumer["idle"] > CONSUMER_FORGET_MS:
            client.xgroup_delconsumer(stream, GROUP, name)
            removed += 1
    return removed


def _entries(raw: Any) -> Entries:
    # An entry trimmed from the stream while pending comes back without fields (Redis 7),
    # or as nothing at all (Redis 6.2).
    return [
        (_id(entry[0]), entry[1])
        for entry in raw or []
        if entry is not None and entry[1] is not None
    ]


def forget_gone(environments: Iterable[Environment]) -> history.Forgotten:
    """Remove long-gone instances and their breaker states from each environment's live
    state (``history.forget_gone``); every replica may do it: each removal is checked."""
    total = history.Forgotten()
    layouts = [environment.keys() for environment in environments]
    own = KeyLayout(settings.CONTROLPLANE_SELF_ENVIRONMENT, settings.REDIS_KEY_PREFIX)
    if own.reports not in {keys.reports for keys in layouts}:
        # The control plane's own client (the login limiter) reports to an environment
        # that may have no row: nobody reads its stream, so only its last hour is kept.
        layouts.append(own)
        client = get_redis()
        oldest = int(time.time() * 1000) - UNREAD_KEEP_MS
        client.xtrim(own.reports, minid=oldest, approximate=False)
    for keys in layouts:
        forgotten = history.forget_gone(get_redis(), keys)
        total.instances += forgotten.instances
        total.breaker_states += forgotten.breaker_states
    if total.instances or total.breaker_states:
        logger.info(
            "Forgot %d instances gone for over %.0f s and %d breaker states of instances gone",
            total.instances,
            settings.INSTANCES_FORGET_AFTER,
            total.breaker_states,
        )
    return total


class Ingestor(threading.Thread):
    """Background thread of each control-plane process: read, apply, acknowledge, announce."""

    def __init__(self, block_ms: int = 1000) -> None:
        super().__init__(name="controlplane-ingest", daemon=True)
        self.block_ms = block_ms
        self.consumer = f"{socket.gethostname()}:{os.getpid()}"
        self._stop_event = threading.Event()
        self.processed = 0
        self.skipped = history.SkippedEntries(logger, "report entries")
        self._trimmed: dict[str, float] = {}  # stream -> when this process last trimmed it

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)

    def run(self) -> None:
        environments: dict[str, Environment] = {}
        next_refresh = 0.0
        next_claim = 0.0
        next_forget = time.monotonic() + FORGET_INTERVAL
        next_prune = time.monotonic() + 60  # not in the rush of a start
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
                if time.monotonic() >= next_forget:
                    forget_gone(environments.values())
                    next_forget = time.monotonic() + FORGET_INTERVAL
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + PRUNE_INTERVAL
                    pruned = prune_history()
                    if pruned.any:
                        logger.info("Pruned the history: %s", pruned)
                self.read_once(environments)
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

    def read_once(self, environments: dict[str, Environment]) -> None:
        """One pass of the loop: read new entries of ``environments`` (by stream), apply
        them, acknowledge them. Raises only if Redis or the database cannot be reached."""
        client = get_redis()
        replies: list[tuple[str, Entries]]
        if is_cluster(client) and len(environments) > 1:
            # One XREADGROUP reads streams of one hash slot only, and each
            # environment has its own: read each without blocking, then pause.
            replies = []
            for stream in environments:
                replies += read_group(client, self.consumer, [stream])
            if not any(entries for _, entries in replies):
                self._stop_event.wait(CLUSTER_POLL_INTERVAL)
        else:
            replies = read_group(client, self.consumer, list(environments), self.block_ms)
        for stream, entries in replies:
            self._handle(client, environments[stream], stream, entries)

    def _handle(
        self, client: redis.Redis, environment: Environment, stream: str, entries: Entries
    ) -> None:
        if not entries:
            return
        changes = process_entries(environment, entries, self.skipped)
        client.xack(stream, GROUP, *[entry_id for entry_id, _ in entries])
        self.processed += len(entries)
        if time.monotonic() >= self._trimmed.get(stream, 0.0) + TRIM_INTERVAL:
            self._trimmed[stream] = time.monotonic()
            trim_processed(client, stream)
        notify(environment.name, changes.state, urgent=True)
        notify(environment.name, changes.figures - changes.state, urgent=False)

    def _claim_abandoned(self, environments: dict[str, Environment]) -> None:
        client = get_redis()
        for stream, environment in environments.items():
            entries = claim_abandoned(client, self.consumer, stream)
            self._handle(client, environment, stream, entries)
            forget_consumers(client, stream, keep=self.consumer)


_ingestor: Ingestor | None = None
_lock = threading.Lock()


def start_ingestor() -> Ingestor:
    global _ingestor
    with _lock:
        if _ingestor is None or not _ingestor.is_alive():
            _ingestor = Ingestor()
            _ingestor.start()
        return _ingestor
