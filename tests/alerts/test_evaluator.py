"""The evaluator against a real Redis: fleet-wide breaker events and alert rules, each
change told once, however many evaluators run."""

from __future__ import annotations

import threading
import time

import pytest
import redis
from django.db import connection
from django.utils import timezone

from controlplane.accounts.actors import Actor
from controlplane.alerts.evaluator import (
    Evaluation,
    apply_fleet,
    conditions,
    duration,
    evaluate_environment,
    fleet_states,
    holds,
)
from controlplane.alerts.models import AlertRule, AlertState, FleetBreaker
from controlplane.live.history import read_snapshot
from controlplane.policies.actions import do_create_policy
from controlplane.policies.models import Environment
from controlplane.webhooks.events import (
    ALERT_FIRING,
    ALERT_RESOLVED,
    BREAKER_CLOSED,
    BREAKER_OPENED,
)
from controlplane.webhooks.models import Event
from tests.alerts.conftest import breaker_states, heartbeat, outbox_webhook, report

pytestmark = pytest.mark.django_db(transaction=True)


def _types(environment: Environment) -> list[str]:
    return list(Event.objects.filter(environment=environment.name).values_list("type", flat=True))


def test_a_breaker_seen_closed_is_stored_quietly_and_one_opening_is_told_once(
    production: Environment, redis_client: redis.Redis
) -> None:
    outbox_webhook(production)
    at = time.time() - 2
    breaker_states(redis_client, production, {"a": "closed", "b": "closed", "c": "closed"}, at)
    assert evaluate_environment(production).events == []
    row = FleetBreaker.objects.get()
    assert (row.name, row.state, row.instances_reporting) == ("payments", "closed", 3)

    breaker_states(redis_client, production, {"b": "open", "c": "half_open"}, at)
    opened = evaluate_environment(production)
    assert [type for type, _ in opened.events] == [BREAKER_OPENED]
    payload = opened.events[0][1]
    assert payload["name"] == "payments" and payload["state"] == "open"
    assert (payload["instances_open"], payload["instances_reporting"]) == (2, 3)
    assert payload["instances"] == ["b", "c"]  # half-open is not closed: still open
    assert payload["failure_rate"] == 16.0  # 8 failures of 50 calls in the window
    assert payload["since"]
    assert evaluate_environment(production).events == []  # still open: nothing new
    assert _types(production) == [BREAKER_OPENED]

    breaker_states(redis_client, production, {"b": "closed", "c": "closed"}, at)
    closed = evaluate_environment(production)
    assert [(type, p["state"], p["instances_open"]) for type, p in closed.events] == [
        (BREAKER_CLOSED, "closed", 0)
    ]
    assert evaluate_environment(production).events == []
    assert _types(production) == [BREAKER_OPENED, BREAKER_CLOSED]
    assert FleetBreaker.objects.get().state == "closed"


def test_a_breaker_first_seen_open_is_news(
    production: Environment, redis_client: redis.Redis
) -> None:
    breaker_states(redis_client, production, {"a": "open", "b": "closed"}, time.time() - 2)
    evaluation = evaluate_environment(production)
    assert evaluation.of_type(BREAKER_OPENED)[0]["instances"] == ["a"]
    assert FleetBreaker.objects.get().state == "open"


def test_only_live_instances_count_and_a_fleet_that_went_silent_is_closed(
    production: Environment, redis_client: redis.Redis
) -> None:
    at = time.time() - 2
    breaker_states(redis_client, production, {"a": "open", "b": "closed"}, at)
    assert evaluate_environment(production).of_type(BREAKER_OPENED)
    # a's last heartbeat is now older than its timeout (5 s + 2.5 s): gone, not counted
    heartbeat(redis_client, production, "a", at=time.time() - 60)
    closed = evaluate_environment(production)
    assert [
        (p["instances_open"], p["instances_reporting"]) for p in closed.of_type(BREAKER_CLOSED)
    ] == [(0, 1)]
    heartbeat(redis_client, production, "b", at=time.time() - 60)
    assert evaluate_environment(production).events == []  # nobody reports: closed, as it was


def test_two_evaluators_on_the_same_state_emit_one_event(
    production: Environment, redis_client: redis.Redis
) -> None:
    """Both read the stored state before either writes (two replicas at once): the
    conditional update lets one of them change it and emit, the other does nothing."""
    outbox_webhook(production)
    at = time.time() - 2
    breaker_states(redis_client, production, {"a": "closed"}, at)
    evaluate_environment(production)
    breaker_states(redis_client, production, {"a": "open"}, at)
    snapshot = read_snapshot(redis_client, production.keys())
    current = fleet_states(snapshot)
    stale_first = {row.name: row for row in FleetBreaker.objects.filter(environment=production)}
    stale_second = {row.name: row for row in FleetBreaker.objects.filter(environment=production)}
    now = timezone.now()
    first, second = Evaluation("production"), Evaluation("production")
    apply_fleet(production, current, stale_first, now, first)
    apply_fleet(production, current, stale_second, now, second)
    assert [type for type, _ in first.events] == [BREAKER_OPENED]
    assert second.events == []
    assert _types(production) == [BREAKER_OPENED]


def test_two_evaluators_seeing_a_new_open_breaker_store_it_and_emit_once(
    production: Environment, redis_client: redis.Redis
) -> None:
    outbox_webhook(production)
    breaker_states(redis_client, production, {"a": "open"}, time.time() - 2)
    current = fleet_states(read_snapshot(redis_client, production.keys()))
    first, second = Evaluation("production"), Evaluation("production")
    now = timezone.now()
    apply_fleet(production, current, {}, now, first)
    apply_fleet(production, current, {}, now, second)  # its create loses to the first's
    assert len(first.events) == 1 and second.events == []
    assert FleetBreaker.objects.count() == 1 and _types(production) == [BREAKER_OPENED]


def _rule(environment: Environment, kind: str, **fields: object) -> AlertRule:
    return AlertRule.objects.create(environment=environment, name=kind, kind=kind, **fields)


def test_a_breaker_rule_fires_once_after_its_minutes_and_resolves_once(
    production: Environment, redis_client: redis.Redis
) -> None:
    outbox_webhook(production)
    rule = _rule(production, "breaker_open", target="payments", minutes=0.05)  # 3 s
    start = time.time()
    breaker_states(redis_client, production, {"a": "open", "b": "closed"}, start - 2)
    assert evaluate_environment(production, now=start).of_type(ALERT_FIRING) == []
    assert evaluate_environment(production, now=start + 2).of_type(ALERT_FIRING) == []
    firing = evaluate_environment(production, now=start + 3.5).of_type(ALERT_FIRING)
    assert len(firing) == 1
    payload = firing[0]
    assert (payload["rule"], payload["rule_name"], payload["kind"], payload["target"]) == (
        rule.pk,
        "breaker_open",
        "breaker_open",
        "payments",
    )
    assert payload["summary"] == "Breaker payments open for 4 s on 1 of 2 instances"
    assert payload["value"] == 1
    assert evaluate_environment(production, now=start + 4).of_type(ALERT_FIRING) == []
    state = AlertState.objects.get()
    assert state.firing_since is not None and state.summary == payload["summary"]

    breaker_states(redis_client, production, {"a": "closed"}, start - 1)
    resolved = evaluate_environment(production, now=start + 5).of_type(ALERT_RESOLVED)
    assert [p["summary"] for p in resolved] == [
        "Breaker payments is closed again (the alert fired for 2 s)"
    ]
    assert evaluate_environment(production, now=start + 6).events == []
    assert _types(production) == [BREAKER_OPENED, ALERT_FIRING, BREAKER_CLOSED, ALERT_RESOLVED]
    after = AlertState.objects.get()
    assert after.firing_since is None and after.resolved_at is not None


def test_a_rule_with_no_minutes_fires_at_the_first_true_evaluation_for_any_breaker(
    production: Environment, redis_client: redis.Redis
) -> None:
    _rule(production, "breaker_open", target="*", minutes=0)
    at = time.time() - 2
    breaker_states(redis_client, production, {"a": "open"}, at)
    report(production, "a", {"breaker:ledger": {"calls": 1, "state": "open"}}, at)
    firing = evaluate_environment(production).of_type(ALERT_FIRING)
    assert sorted(p["target"] for p in firing) == ["ledger", "payments"]


def test_two_evaluators_on_one_firing_state_fire_once(
    production: Environment, redis_client: redis.Redis
) -> None:
    """The second evaluator read the state while it was pending, before the first fired
    it: its conditional update finds it firing and changes (and emits) nothing."""
    outbox_webhook(production)
    rule = _rule(production, "breaker_open", minutes=0)
    breaker_states(redis_client, production, {"a": "open"}, time.time() - 2)
    AlertState.objects.create(rule=rule, target="payments", pending_since=timezone.now())
    stale = AlertState.objects.get()
    snapshot = read_snapshot(redis_client, production.keys())

    assert len(evaluate_environment(production).of_type(ALERT_FIRING)) == 1  # the first
    fleet = {row.name: row for row in FleetBreaker.objects.all()}
    condition = conditions(rule, production, snapshot, fleet, time.time())["payments"]
    second = Evaluation("production")
    holds(rule, condition, stale, timezone.now(), second)
    assert second.events == []
    assert _types(production) == [BREAKER_OPENED, ALERT_FIRING]


def test_a_limiter_rule_waits_its_minutes_again_after_a_false_evaluation(
    production: Environment, redis_client: redis.Redis
) -> None:
    outbox_webhook(production)
    _rule(production, "limiter_rejecting", target="api", minutes=0.05, percent=50)  # 3 s
    heartbeat(redis_client, production, "a")
    start = time.time()

    def rejecting(at: float, rejected: int = 8) -> None:
        report(
            production,
            "a",
            {"rate_limit:api": {"allowed": 10 - rejected, "rejected": rejected}},
            at,
        )

    rejecting(start)
    assert evaluate_environment(production, now=start + 1.5).events == []  # pending
    assert AlertState.objects.get().pending_since is not None
    # Nothing rejected in the window at start + 12: false, so the wait starts over.
    assert evaluate_environment(production, now=start + 12).events == []
    assert AlertState.objects.get().pending_since is None
    rejecting(start + 13)
    assert evaluate_environment(production, now=start + 14.5).events == []
    rejecting(start + 15)
    assert evaluate_environment(production, now=start + 16.5).events == []  # 2 s held: not yet
    rejecting(start + 17)
    firing = evaluate_environment(production, now=start + 18.5).of_type(ALERT_FIRING)
    assert [(p["target"], p["value"]) for p in firing] == [("api", 80.0)]
    assert firing[0]["summary"] == "Rate limiter api rejecting 80 % of its calls for 4 s"
    rejecting(start + 19, rejected=2)  # 20 %: under the rule's 50 %
    # The window (5 s) still holds two seconds at 80 %: 18 of 30 decisions, 60 %
    assert evaluate_environment(production, now=start + 20.5).events == []
    rejecting(start + 21, rejected=2)
    rejecting(start + 23, rejected=2)
    resolved = evaluate_environment(production, now=start + 24.5).of_type(ALERT_RESOLVED)
    assert [p["target"] for p in resolved] == ["api"]
    assert _types(production) == [ALERT_FIRING, ALERT_RESOLVED]


def test_an_instances_rule_fires_while_an_instance_stays_behind(
    production: Environment, redis_client: redis.Redis, system: Actor
) -> None:
    _rule(production, "instances_behind", minutes=0)
    do_create_policy(production, "breaker", "payments", {}, system)  # revision 1, published now
    production.refresh_from_db()
    later = time.time() + 20  # past the instances' heartbeat timeout (7.5 s) after the publish
    heartbeat(redis_client, production, "old", revision=0, at=later)
    heartbeat(redis_client, production, "new", revision=production.revision, at=later)
    firing = evaluate_environment(production, now=later).of_type(ALERT_FIRING)
    assert [(p["target"], p["value"]) for p in firing] == [("instances", 1)]
    assert firing[0]["summary"].startswith(
        f"1 of 2 instances behind revision {production.revision}"
    )
    heartbeat(redis_client, production, "old", revision=production.revision, at=later + 1)
    resolved = evaluate_environment(production, now=later + 1).of_type(ALERT_RESOLVED)
    assert [p["summary"] for p in resolved] == [
        "No instance is behind the published revision any more (the alert fired for 1 s)"
    ]


def test_a_switched_off_rule_is_not_evaluated(
    production: Environment, redis_client: redis.Redis
) -> None:
    _rule(production, "breaker_open", minutes=0, enabled=False)
    breaker_states(redis_client, production, {"a": "open"}, time.time() - 2)
    assert evaluate_environment(production).of_type(ALERT_FIRING) == []
    assert not AlertState.objects.exists()


def test_durations_read_as_a_sentence_says_them() -> None:
    assert [duration(s) for s in (0.4, 40, 360, 9000)] == ["0 s", "40 s", "6 min", "2.5 h"]


def test_evaluators_racing_in_threads_tell_each_transition_once(
    production: Environment, redis_client: redis.Redis
) -> None:
    """Four evaluators started together, as four replicas would run: one event each way."""
    outbox_webhook(production)
    _rule(production, "breaker_open", minutes=0)
    at = time.time() - 2
    breaker_states(redis_client, production, {"a": "closed", "b": "closed"}, at)
    evaluate_environment(production)

    def race() -> list[str]:
        barrier = threading.Barrier(4)
        found: list[str] = []

        def evaluate() -> None:
            try:
                barrier.wait(timeout=10)
                evaluation = evaluate_environment(Environment.objects.get(name="production"))
                found.extend(type for type, _ in evaluation.events)
            finally:
                connection.close()

        threads = [threading.Thread(target=evaluate) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        return sorted(found)

    breaker_states(redis_client, production, {"a": "open"}, at)
    assert race() == [ALERT_FIRING, BREAKER_OPENED]
    breaker_states(redis_client, production, {"a": "closed"}, at)
    assert race() == [ALERT_RESOLVED, BREAKER_CLOSED]
    assert sorted(_types(production)) == sorted(
        [BREAKER_OPENED, ALERT_FIRING, BREAKER_CLOSED, ALERT_RESOLVED]
    )
