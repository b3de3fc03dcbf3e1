"""The alert evaluator: the fleet's breaker states and the alert rules, every interval.

Each evaluation of an environment reads its live snapshot (one Redis round
trip), then:

- for each breaker whose fleet-wide state (open while any live instance reports
  it open or half-open) differs from the stored one, changes the row with a
  conditional update and, only if that update won, emits ``breaker.opened`` or
  ``breaker.closed`` in the same transaction;
- for each enabled rule, and each target it watches, moves its ``AlertState``
  from pending to firing once the condition held for the rule's minutes, and
  back when it stops, emitting ``alert.firing`` and ``alert.resolved`` the same
  way.

Several replicas may run the evaluator at once: whichever update wins emits,
the others change nothing, so a transition is told once.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from django.conf import settings
from django.db import IntegrityError, close_old_connections, transaction

from controlplane.alerts.models import AlertRule, AlertState, FleetBreaker
from controlplane.live.history import LiveSnapshot, PolicyRates, read_snapshot
from controlplane.ops.metrics import DATABASE_ERRORS, REDIS_ERRORS
from controlplane.ops.outage import DATABASE_UNAVAILABLE, Outage
from controlplane.policies.models import Environment
from controlplane.redis_connection import get_redis
from controlplane.webhooks.events import (
    ALERT_FIRING,
    ALERT_RESOLVED,
    BREAKER_CLOSED,
    BREAKER_OPENED,
    emit,
)

logger = logging.getLogger(__name__)

MAX_INSTANCES_LISTED = 20  # instance ids a breaker event names; the counts are complete
INSTANCES_TARGET = "instances"  # the one target of an instances_behind rule
OPEN, CLOSED = FleetBreaker.State.OPEN.value, FleetBreaker.State.CLOSED.value


@dataclass(frozen=True)
class FleetState:
    """One breaker as the live instances report it right now."""

    name: str
    state: str
    instances_open: int = 0
    instances_reporting: int = 0
    instances: tuple[str, ...] = ()
    failure_rate: float | None = None


@dataclass(frozen=True)
class Condition:
    """A rule's condition holding for one target now: the figure, and since when if known."""

    target: str
    value: float
    summary: str  # "Breaker payments open for {duration} on 12 of 20 instances"
    held_since: datetime | None = None  # None: since the state's pending_since


@dataclass
class Evaluation:
    """What one evaluation of an environment changed: the events it emitted (type, payload).

    An event no webhook wants is not written to the outbox, but is listed here.
    """

    environment: str
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def of_type(self, type: str) -> list[dict[str, Any]]:
        return [payload for event_type, payload in self.events if event_type == type]


def duration(seconds: float) -> str:
    """A length of time as a sentence says it: "40 s", "6 min", "2.5 h"."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _at(now: float | None) -> tuple[float, datetime]:
    timestamp = time.time() if now is None else now
    return timestamp, datetime.fromtimestamp(timestamp, tz=UTC)


# Fleet-wide breaker state


def fleet_states(snapshot: LiveSnapshot) -> dict[str, FleetState]:
    """Each breaker the live instances report, open or closed fleet-wide."""
    found = {}
    for name, states in snapshot.breaker_states.items():
        open_ids = snapshot.open_instances.get(name, [])
        found[name] = FleetState(
            name,
            OPEN if open_ids else CLOSED,
            len(open_ids),
            sum(states.values()),
            tuple(open_ids[:MAX_INSTANCES_LISTED]),
            snapshot.rates_for(f"breaker:{name}").failure_rate,
        )
    return found


def breaker_payload(fleet: FleetState, since: datetime) -> dict[str, Any]:
    rate = fleet.failure_rate
    return {
        "name": fleet.name,
        "state": fleet.state,
        "instances_open": fleet.instances_open,
        "instances_reporting": fleet.instances_reporting,
        "instances": list(fleet.instances),
        "failure_rate": None if rate is None else round(rate, 1),
        "since": since.isoformat(),
    }


def apply_fleet(
    environment: Environment,
    current: dict[str, FleetState],
    stored: dict[str, FleetBreaker],
    now: datetime,
    evaluation: Evaluation,
) -> dict[str, FleetBreaker]:
    """Store each breaker's fleet state; emit an event for each change this call won.

    ``stored`` is what the caller read before; it may be stale (another replica
    ran in between): the conditional update then changes nothing and emits nothing.
    Returns the rows as they stand after this call (for the rules).
    """
    rows = dict(stored)
    for name in sorted(set(current) | set(stored)):
        fleet = current.get(name) or FleetState(name, CLOSED)  # no live instance reports it
        row = stored.get(name)
        if row is None:
            created = _create_fleet_breaker(environment, fleet, now, evaluation)
            if created is None:  # another evaluator stored it first: take its row
                created = FleetBreaker.objects.filter(environment=environment, name=name).first()
            if created is not None:
                rows[name] = created
        elif row.state != fleet.state:
            if _change_fleet_breaker(row, fleet, now, evaluation):
                row.state, row.since = fleet.state, now
            else:  # another evaluator changed it first: the rules go by the row as it is
                row.refresh_from_db()
        elif (row.instances_open, row.instances_reporting) != (
            fleet.instances_open,
            fleet.instances_reporting,
        ):
            FleetBreaker.objects.filter(pk=row.pk, state=row.state).update(
                instances_open=fleet.instances_open, instances_reporting=fleet.instances_reporting
            )
            row.instances_open, row.instances_reporting = (
                fleet.instances_open,
                fleet.instances_reporting,
            )
    return rows


def _create_fleet_breaker(
    environment: Environment, fleet: FleetState, now: datetime, evaluation: Evaluation
) -> FleetBreaker | None:
    """The first sight of a breaker: stored, and news only if it is open."""
    try:
        with transaction.atomic():
            row = FleetBreaker.objects.create(
                environment=environment,
                name=fleet.name,
                state=fleet.state,
                since=now,
                changed_at=now,
                instances_open=fleet.instances_open,
                instances_reporting=fleet.instances_reporting,
            )
            if fleet.state == OPEN:
                _emit(evaluation, BREAKER_OPENED, breaker_payload(fleet, now))
            return row
    except IntegrityError:
        return None  # another evaluator stored it first, and told whatever there was


def _change_fleet_breaker(
    row: FleetBreaker, fleet: FleetState, now: datetime, evaluation: Evaluation
) -> bool:
    with transaction.atomic():
        won = FleetBreaker.objects.filter(pk=row.pk, state=row.state).update(
            state=fleet.state,
            since=now,
            changed_at=now,
            instances_open=fleet.instances_open,
            instances_reporting=fleet.instances_reporting,
        )
        if won:
            type = BREAKER_OPENED if fleet.state == OPEN else BREAKER_CLOSED
            _emit(evaluation, type, breaker_payload(fleet, now))
    return bool(won)


def _emit(evaluation: Evaluation, type: str, payload: dict[str, Any]) -> None:
    emit(evaluation.environment, type, payload)
    evaluation.events.append((type, payload))
    logger.info("%s in %s: %s", type, evaluation.environment, payload.get("summary", payload))


# Alert rules


def conditions(
    rule: AlertRule,
    environment: Environment,
    snapshot: LiveSnapshot,
    fleet: dict[str, FleetBreaker],
    now: float,
) -> dict[str, Condition]:
    """The targets for which ``rule``'s condition holds now (ignoring how long)."""
    found: dict[str, Condition] = {}
    if rule.kind == AlertRule.Kind.BREAKER_OPEN:
        for name, row in fleet.items():
            if row.state == OPEN and (rule.any_target or name == rule.target):
                summary = (
                    f"Breaker {name} open for {{duration}} on {row.instances_open} of "
                    f"{row.instances_reporting} instances"
                )
                found[name] = Condition(name, row.instances_open, summary, row.since)
    elif rule.kind == AlertRule.Kind.LIMITER_REJECTING:
        threshold = rule.percent or 0.0
        for policy, rates in snapshot.rates.items():
            kind, _, name = policy.partition(":")
            if kind != "rate_limit" or not (rule.any_target or name == rule.target):
                continue
            share = _rejected_share(rates)
            if share is not None and share > threshold:
                summary = (
                    f"Rate limiter {name} rejecting {share:.0f} % of its calls for {{duration}}"
                )
                found[name] = Condition(name, round(share, 1), summary)
    elif rule.kind == AlertRule.Kind.INSTANCES_BEHIND:
        sync = snapshot.sync(environment.revision, now)
        if sync.behind:
            oldest = min(instance.revision for instance in sync.behind)
            summary = (
                f"{len(sync.behind)} of {sync.reporting} instances behind revision "
                f"{environment.revision} (the oldest on {oldest}) for {{duration}}"
            )
            found[INSTANCES_TARGET] = Condition(INSTANCES_TARGET, len(sync.behind), summary)
    return found


def _rejected_share(rates: PolicyRates) -> float | None:
    """The share of a limiter's decisions that were rejections over the live window, in %."""
    allowed, rejected = rates.counters.get("allowed", 0.0), rates.counters.get("rejected", 0.0)
    total = allowed + rejected
    return None if not total else 100.0 * rejected / total


RESOLVED_SENTENCES = {
    AlertRule.Kind.BREAKER_OPEN: "Breaker {target} is closed again",
    AlertRule.Kind.LIMITER_REJECTING: "Rate limiter {target} rejects under {percent:g} % again",
    AlertRule.Kind.INSTANCES_BEHIND: "No instance is behind the published revision any more",
}


def alert_payload(
    rule: AlertRule, target: str, summary: str, since: datetime, value: float | None
) -> dict[str, Any]:
    return {
        "rule": rule.pk,
        "rule_name": rule.name,
        "kind": rule.kind,
        "target": target,
        "summary": summary,
        "since": since.isoformat(),
        "value": value,
    }


def apply_rules(
    environment: Environment,
    snapshot: LiveSnapshot,
    fleet: dict[str, FleetBreaker],
    now: float,
    evaluation: Evaluation,
    rules: list[AlertRule],
    known: list[AlertState],
) -> None:
    """Move each enabled rule's states on: pending, firing (once), resolved (once).

    ``rules`` and their ``known`` states were read before the live state.
    """
    states = {(state.rule_id, state.target): state for state in known}
    at = datetime.fromtimestamp(now, tz=UTC)
    for rule in rules:
        holding = conditions(rule, environment, snapshot, fleet, now)
        for target, condition in holding.items():
            holds(rule, condition, states.get((rule.pk, target)), at, evaluation)
        for (rule_id, target), state in states.items():
            if rule_id == rule.pk and target not in holding:
                stopped(rule, state, at, evaluation)


def holds(
    rule: AlertRule,
    condition: Condition,
    state: AlertState | None,
    now: datetime,
    evaluation: Evaluation,
) -> None:
    if state is None:
        try:
            with transaction.atomic():
                state = AlertState.objects.create(
                    rule=rule, target=condition.target, pending_since=now, value=condition.value
                )
        except IntegrityError:
            state = AlertState.objects.filter(rule=rule, target=condition.target).first()
            if state is None:
                return
    if state.firing_since is not None:
        return  # fired already: once
    if state.pending_since is None:
        AlertState.objects.filter(
            pk=state.pk, pending_since__isnull=True, firing_since__isnull=True
        ).update(pending_since=now)
        state.pending_since = now
    held_since = condition.held_since or state.pending_since
    held = (now - held_since).total_seconds()
    if held < rule.minutes * 60:
        return
    summary = condition.summary.format(duration=duration(held))
    with transaction.atomic():
        won = AlertState.objects.filter(pk=state.pk, firing_since__isnull=True).update(
            firing_since=now, resolved_at=None, value=condition.value, summary=summary[:300]
        )
        if won:
            payload = alert_payload(rule, condition.target, summary, held_since, condition.value)
            _emit(evaluation, ALERT_FIRING, payload)


def stopped(rule: AlertRule, state: AlertState, now: datetime, evaluation: Evaluation) -> None:
    if state.firing_since is None:
        if state.pending_since is not None:  # a false evaluation resets the wait
            AlertState.objects.filter(pk=state.pk, firing_since__isnull=True).update(
                pending_since=None
            )
        return
    fired = (now - state.firing_since).total_seconds()
    sentence = RESOLVED_SENTENCES[AlertRule.Kind(rule.kind)].format(
        target=state.target, percent=rule.percent or 0.0
    )
    summary = f"{sentence} (the alert fired for {duration(fired)})"
    with transaction.atomic():
        won = AlertState.objects.filter(pk=state.pk, firing_since=state.firing_since).update(
            firing_since=None, pending_since=None, resolved_at=now
        )
        if won:
            payload = alert_payload(rule, state.target, summary, state.firing_since, None)
            payload["resolved_at"] = now.isoformat()
            _emit(evaluation, ALERT_RESOLVED, payload)


def clear_states(rule: AlertRule) -> None:
    """Forget where ``rule`` stands (it was switched off): it waits afresh when back on."""
    AlertState.objects.filter(rule=rule).delete()


# The evaluation and its worker


def evaluate_environment(environment: Environment, now: float | None = None) -> Evaluation:
    """Read ``environment``'s live snapshot once; store and tell what changed.

    ``now`` (unix seconds) fixes the clock (tests). Raises when Redis or the
    database cannot be reached.
    """
    # What is stored is read before the live state: a change stored by another
    # evaluator since then makes this one's conditional update fail (nothing told
    # twice); one stored before was decided on live state older than what is read
    # next, so this evaluation never undoes it with staler news.
    stored = {row.name: row for row in FleetBreaker.objects.filter(environment=environment)}
    rules = list(AlertRule.objects.filter(environment=environment, enabled=True))
    states = list(AlertState.objects.filter(rule__in=rules)) if rules else []
    timestamp, at = _at(now)
    snapshot = read_snapshot(get_redis(), environment.keys(), now=timestamp)
    evaluation = Evaluation(environment.name)
    fleet = apply_fleet(environment, fleet_states(snapshot), stored, at, evaluation)
    apply_rules(environment, snapshot, fleet, timestamp, evaluation, rules, states)
    return evaluation


def evaluate_all(now: float | None = None) -> list[Evaluation]:
    """Evaluate every environment; one that fails for its data is logged and skipped."""
    evaluations = []
    for environment in Environment.objects.order_by("name"):
        try:
            evaluations.append(evaluate_environment(environment, now))
        except (redis.RedisError, *DATABASE_UNAVAILABLE):
            raise  # an outage: the worker says so once
        except Exception:
            logger.exception("Alert evaluation of %s failed; skipped this round", environment)
    return evaluations


class AlertEvaluator(threading.Thread):
    """Background thread: ``evaluate_all`` every ``ALERTS_INTERVAL`` seconds."""

    last_success: float = 0.0  # monotonic time of the last round that completed

    def __init__(self, interval: float | None = None) -> None:
        super().__init__(name="controlplane-alerts", daemon=True)
        self.interval = interval if interval is not None else settings.ALERTS_INTERVAL
        self._stop_event = threading.Event()
        self.rounds = 0

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)

    def run(self) -> None:
        redis_outage = Outage(
            logger,
            REDIS_ERRORS.labels("alerts"),
            "The alert evaluator cannot reach Redis",
            "Redis answers again; the alert evaluator is running",
        )
        database_outage = Outage(
            logger,
            DATABASE_ERRORS.labels("alerts"),
            "The alert evaluator cannot reach the database",
            "The database answers again; the alert evaluator is running",
        )
        while not self._stop_event.is_set():
            close_old_connections()
            try:
                evaluate_all()
                self.rounds += 1
                self.last_success = time.monotonic()
                redis_outage.answered()
                database_outage.answered()
            except redis.RedisError as exc:
                redis_outage.failed(exc)
            except DATABASE_UNAVAILABLE as exc:
                database_outage.failed(exc)
            except Exception:
                logger.exception("Alert evaluation failed; will retry")
            self._stop_event.wait(self.interval)
        close_old_connections()


_evaluator: AlertEvaluator | None = None
_evaluator_lock = threading.Lock()


def start_alert_evaluator() -> AlertEvaluator:
    """Start this process's alert evaluator once."""
    global _evaluator
    with _evaluator_lock:
        if _evaluator is None or not _evaluator.is_alive():
            _evaluator = AlertEvaluator()
            _evaluator.start()
        return _evaluator
