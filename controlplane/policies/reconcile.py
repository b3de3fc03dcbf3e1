"""Keep Redis equal to the database, whatever happened to Redis.

Redis may restart empty, be flushed, or miss a publish made while it was
down. The reconciler compares each environment's published revision with the
database every ``RECONCILE_INTERVAL`` seconds (one GET), compares every
document every ``RECONCILE_FULL_INTERVAL`` seconds, and re-publishes what is
missing, stale or corrupt. Several control-plane replicas may all run it: a
write never replaces a newer revision, and a repair is a compare-and-set.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
from django.conf import settings
from django.db import close_old_connections, transaction

from controlplane.ops.metrics import DATABASE_ERRORS, DRIFT_FOUND, RECONCILE_RUNS, REDIS_ERRORS
from controlplane.ops.outage import DATABASE_UNAVAILABLE, Outage
from controlplane.policies.models import Environment
from controlplane.policies.overrides import expire_overrides, newest_overrides, override_document
from controlplane.policies.publish import policy_document, raise_meta_revision, write_document
from controlplane.policies.requests import apply_due_requests
from controlplane.protocol.connection import check_primary
from controlplane.protocol.documents import SECTION_OVERRIDES, SECTION_POLICIES
from controlplane.protocol.store import (
    Stored,
    meta_revision,
    read_meta_revisions,
    read_policy_store,
)
from controlplane.redis_connection import get_redis
from controlplane.webhooks.events import DRIFT_FOUND as DRIFT_FOUND_EVENT
from controlplane.webhooks.events import emit

logger = logging.getLogger(__name__)

PROBLEMS = ("missing", "stale", "corrupt", "extra")
DRIFT_EVENT_NAMES = 50  # names listed per problem in a drift.found event
DRIFT_EVENT_QUIET = 600  # seconds during which the same drift is not reported again


@dataclass
class Drift:
    """What Redis lacks or holds wrongly for one environment."""

    environment: str
    database_revision: int
    redis_revision: int | None  # None: no metadata in Redis at all
    missing: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    error: str = ""  # the environment could not be compared at all

    @property
    def clean(self) -> bool:
        return (
            not self.error
            and self.redis_revision == self.database_revision
            and not self.missing
            and not self.stale
            and not self.corrupt
            and not self.extra
        )

    def describe(self) -> str:
        if self.error:
            return f"{self.environment}: could not be compared ({self.error})"
        if self.clean:
            return f"{self.environment}: in sync at revision {self.database_revision}"
        published = "nothing" if self.redis_revision is None else str(self.redis_revision)
        parts = [
            f"{self.environment}: database at revision {self.database_revision}, "
            f"Redis at {published}"
        ]
        for label in ("missing", "stale", "corrupt", "extra"):
            names = getattr(self, label)
            if names:
                parts.append(f"  {label}: {', '.join(names)}")
        return "\n".join(parts)

    def fingerprint(self) -> str:
        """A digest of what was found: replicas that find the same drift find the same one."""
        found = [self.environment, self.database_revision, self.redis_revision]
        found += [sorted(getattr(self, problem)) for problem in PROBLEMS]
        return hashlib.sha256(json.dumps(found).encode()).hexdigest()[:32]

    def event_payload(self) -> dict[str, Any]:
        """The data of the ``drift.found`` event; each list of names cut to 50."""
        payload: dict[str, Any] = {
            "summary": self.describe(),
            "database_revision": self.database_revision,
            "redis_revision": self.redis_revision,
        }
        for problem in PROBLEMS:
            payload[problem] = getattr(self, problem)[:DRIFT_EVENT_NAMES]
        payload["error"] = self.error
        return payload


def published_revision(environment: Environment) -> int | None:
    """The revision Redis says it holds for ``environment`` (None: nothing, -1: malformed)."""
    return read_meta_revisions(get_redis(), [environment.keys()])[0]


def expected_documents(environment: Environment) -> dict[str, dict[str, tuple[int, str]]]:
    """What Redis must hold for ``environment``: ``{section: {field: (revision, document)}}``.

    Oldest revision first, so a repair rewrites documents in the order they were made.
    """
    policies = {
        p.field: (p.revision, policy_document(p).encode())
        for p in environment.policies.order_by("revision")
    }
    overrides = {
        o.field: (o.revision, override_document(o).encode()) for o in newest_overrides(environment)
    }
    return {SECTION_POLICIES: policies, SECTION_OVERRIDES: overrides}


def reconcile_environment(environment: Environment, *, repair: bool = True) -> Drift:
    """Compare every document of ``environment`` in Redis with the database.

    Redis is read before the database: a legitimate publish always follows its
    commit, so anything in Redis newer than the database read is not legitimate
    and is replaced. With ``repair``, the drift found is fixed, and the
    environment's published revision is raised only once every document is in
    place, so a reader that sees the final revision sees a complete repair.

    What Redis holds is untrusted: a value that is not a document of its field
    (not UTF-8, not JSON, another document's, a key of another type) is corrupt
    and repaired like any other drift, never raised.
    """
    keys = environment.keys()
    client = get_redis()
    store = read_policy_store(client, keys)
    environment.refresh_from_db(fields=["revision"])
    drift = Drift(environment.name, environment.revision, meta_revision(store.meta))
    if "meta" in store.problems:
        drift.redis_revision = -1
    if repair:
        # A key of another type than the protocol's: start it again from the database.
        wrong = [getattr(keys, name) for name in store.problems]
        if wrong:
            client.delete(*wrong)
    in_redis: dict[str, Mapping[str, Stored[Any]]] = {
        SECTION_POLICIES: store.policies,
        SECTION_OVERRIDES: store.overrides,
    }
    for section, expected in expected_documents(environment).items():
        held = in_redis[section] if section not in store.problems else {}
        label = "" if section == SECTION_POLICIES else "override "
        if section in store.problems:
            drift.corrupt.append(f"{label}{section} key ({store.problems[section]})")
        for name, (revision, encoded) in expected.items():
            current = held.get(name)
            if current is not None and current.raw == encoded.encode():
                continue
            if current is None:
                drift.missing.append(label + name)
            elif current.document is None:
                drift.corrupt.append(label + name)
            else:
                drift.stale.append(label + name)
            if not repair:
                continue
            if current is None or (
                current.document is not None and current.document.revision < revision
            ):
                write_document(keys, section, name, encoded, revision, raise_meta=False)
            else:
                write_document(
                    keys, section, name, encoded, revision, replacing=current.raw, raise_meta=False
                )
        extra = sorted(set(held) - set(expected))
        drift.extra.extend(label + held[name].shown_field for name in extra)
        if repair and extra:
            fields: list[Any] = [held[name].key for name in extra]  # bytes, exactly as stored
            client.hdel(getattr(keys, section), *fields)
    if repair:
        if drift.redis_revision is not None and (
            drift.redis_revision > environment.revision or drift.redis_revision < 0
        ):
            # The database went back in time (a restore), or the meta key is garbage
            # (which could read as any revision to the publish script): the database
            # is the truth.
            client.delete(keys.meta)
        raise_meta_revision(keys, environment.revision)
    for problem in ("missing", "stale", "corrupt", "extra"):
        count = len(getattr(drift, problem))
        if count:
            DRIFT_FOUND.labels(problem).inc(count)
    RECONCILE_RUNS.labels("full").inc()
    if not drift.clean:
        logger.warning("Reconciled drift. %s", drift.describe())
        if repair:
            report_drift(drift)
    return drift


def report_drift(drift: Drift) -> None:
    """Emit ``drift.found`` for a repaired drift, once across replicas.

    Replicas that run the reconciler at the same time may each find (and repair)
    the same drift. The first to set a Redis key named after the environment and
    the drift's fingerprint (``SET NX``, for ``DRIFT_EVENT_QUIET`` seconds) emits
    the event; the others do not. The key is removed again if the event cannot be
    written, so a later pass may report it. If Redis fails to answer right after
    the repair, the event is emitted anyway: a receiver de-duplicates by meaning
    more easily than it learns of a drift it was never told of.
    """
    marker = (
        f"{{{settings.REDIS_KEY_PREFIX}:{drift.environment}}}:drift-reported:{drift.fingerprint()}"
    )
    client = get_redis()
    try:
        first = bool(client.set(marker, "1", nx=True, px=DRIFT_EVENT_QUIET * 1000))
    except redis.RedisError as exc:
        logger.warning("Cannot tell whether another replica reported this drift (%s)", exc)
        first = True
    if not first:
        return
    try:
        with transaction.atomic():
            emit(drift.environment, DRIFT_FOUND_EVENT, drift.event_payload())
    except Exception:
        with contextlib.suppress(redis.RedisError):
            client.delete(marker)
        raise


def reconcile_all(*, repair: bool = True) -> list[Drift]:
    """Reconcile every environment; one environment's failure never ends the pass.

    Redis and database outages are raised (after the pass) for the caller's
    outage handling; any other error is logged once per environment and pass.
    """
    drifts: list[Drift] = []
    outage: Exception | None = None
    for environment in Environment.objects.all():
        try:
            drifts.append(reconcile_environment(environment, repair=repair))
        except (redis.ConnectionError, redis.TimeoutError, *DATABASE_UNAVAILABLE) as exc:
            outage = exc
            break  # the next environment would wait on the same dead dependency
        except Exception as exc:
            logger.error(
                "Could not reconcile %s (%s: %s); going on with the other environments",
                environment.name,
                type(exc).__name__,
                exc,
                exc_info=logger.isEnabledFor(logging.DEBUG),
            )
            # Reported as drift, so that policy_drift fails rather than say nothing.
            error = f"{type(exc).__name__}: {exc}"
            drifts.append(Drift(environment.name, environment.revision, None, error=error))
    if outage is not None:
        raise outage
    return drifts


def quick_check() -> list[Environment]:
    """Return the environments whose revision in Redis differs from the database."""
    environments = list(Environment.objects.all())
    if not environments:
        return []
    revisions = read_meta_revisions(get_redis(), [env.keys() for env in environments])
    RECONCILE_RUNS.labels("quick").inc()
    return [
        env
        for env, revision in zip(environments, revisions, strict=True)
        if revision != env.revision
    ]


class Reconciler(threading.Thread):
    last_success: float = 0.0  # monotonic time of the last run that reached Redis

    """Background thread: a quick check every interval, a full comparison less often."""

    def __init__(self, interval: float | None = None, full_interval: float | None = None) -> None:
        super().__init__(name="controlplane-reconciler", daemon=True)
        self.interval = interval if interval is not None else settings.RECONCILE_INTERVAL
        self.full_interval = (
            full_interval if full_interval is not None else settings.RECONCILE_FULL_INTERVAL
        )
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)

    def run(self) -> None:
        next_full = 0.0  # a full comparison at start-up
        redis_outage = Outage(
            logger,
            REDIS_ERRORS.labels("reconcile"),
            "Reconciler cannot reach Redis",
            "Redis answers again; the reconciler is catching up",
        )
        database_outage = Outage(
            logger,
            DATABASE_ERRORS.labels("reconcile"),
            "Reconciler cannot reach the database",
            "The database answers again; the reconciler is running",
        )
        while not self._stop_event.is_set():
            close_old_connections()
            try:
                if check_primary(get_redis()):
                    # A Sentinel failover: the new primary may lack the last writes
                    # the old one took (replication is asynchronous); compare it all.
                    logger.warning("The Redis primary moved (Sentinel failover); reconciling")
                    next_full = 0.0
                expire_overrides()
                apply_due_requests()
                if time.monotonic() >= next_full:
                    reconcile_all()
                    next_full = time.monotonic() + self.full_interval
                else:
                    for environment in quick_check():
                        reconcile_environment(environment)
                self.last_success = time.monotonic()
                redis_outage.answered()
                database_outage.answered()
            except redis.RedisError as exc:
                redis_outage.failed(exc)
                next_full = 0.0  # whatever Redis lost while down, compare it all
            except DATABASE_UNAVAILABLE as exc:
                database_outage.failed(exc)
            except Exception:
                logger.exception("Reconciler run failed; will retry")
            self._stop_event.wait(self.interval)
        close_old_connections()


_reconciler: Reconciler | None = None
_reconciler_lock = threading.Lock()


def start_reconciler() -> Reconciler:
    """Start this process's background reconciler once."""
    global _reconciler
    with _reconciler_lock:
        if _reconciler is None or not _reconciler.is_alive():
            _reconciler = Reconciler()
            _reconciler.start()
        return _reconciler


def reconciler_health() -> bool:
    """Whether this process's reconciler (if it runs one) is alive and caught up.

    Behind means no successful comparison for five intervals, or an environment
    whose revision in Redis still differs from the database.
    """
    if not settings.RECONCILER_ENABLED:
        return not quick_check()
    reconciler = _reconciler
    if reconciler is None or not reconciler.is_alive():
        return False
    age = time.monotonic() - reconciler.last_success
    return age <= max(5 * reconciler.interval, 5.0) and not quick_check()
