"""The reconciler tells webhooks of the drift it repaired (``drift.found``), once."""

from __future__ import annotations

import pytest
import redis

from controlplane.accounts.actors import Actor
from controlplane.embedded_redis import RedisServer
from controlplane.policies.actions import do_create_policy
from controlplane.policies.models import Environment
from controlplane.policies.reconcile import Drift, reconcile_all, reconcile_environment
from controlplane.webhooks.models import Delivery, Event, Webhook
from controlplane.webhooks.payloads import summary

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def hook(production: Environment) -> Webhook:
    return Webhook.objects.create(
        environment="production", name="ops", url="http://127.0.0.1:9/hook", events=["drift.*"]
    )


def _drift_events() -> list[Event]:
    return list(Event.objects.filter(type="drift.found").order_by("created_at"))


def test_a_repaired_drift_is_one_event_and_a_clean_pass_none(
    hook: Webhook, production: Environment, system: Actor, redis_client: redis.Redis
) -> None:
    do_create_policy(production, "breaker", "payments", {}, system)
    do_create_policy(production, "rate_limit", "api", {"limit": 5}, system)
    redis_client.hdel(production.keys().policies, "breaker:payments")

    reconcile_all()

    [event] = _drift_events()
    assert event.environment == "production"
    assert event.payload["missing"] == ["breaker:payments"]
    assert event.payload["stale"] == event.payload["corrupt"] == event.payload["extra"] == []
    assert event.payload["database_revision"] == 2
    assert event.payload["redis_revision"] == 2
    assert event.payload["error"] == ""
    assert "missing: breaker:payments" in event.payload["summary"]
    assert "repaired drift in production" in summary(event)
    assert Delivery.objects.get(event=event).webhook == hook

    reconcile_all()  # in sync now

    assert len(_drift_events()) == 1


def test_the_same_drift_found_twice_is_reported_once(
    hook: Webhook, production: Environment, system: Actor, redis_client: redis.Redis
) -> None:
    # Two replicas comparing at once find the same drift: each repairs, one reports.
    do_create_policy(production, "breaker", "payments", {}, system)
    redis_client.hdel(production.keys().policies, "breaker:payments")
    assert reconcile_environment(production).missing == ["breaker:payments"]
    redis_client.hdel(production.keys().policies, "breaker:payments")

    assert reconcile_environment(production).missing == ["breaker:payments"]

    assert len(_drift_events()) == 1
    redis_client.delete(production.keys().meta)  # another drift: reported
    reconcile_environment(production)
    assert [e.payload["redis_revision"] for e in _drift_events()] == [1, None]


def test_comparing_without_repair_reports_nothing(
    hook: Webhook, production: Environment, system: Actor, redis_client: redis.Redis
) -> None:
    do_create_policy(production, "breaker", "payments", {}, system)
    redis_client.hdel(production.keys().policies, "breaker:payments")

    assert not reconcile_environment(production, repair=False).clean

    assert _drift_events() == []


def test_redis_down_is_an_outage_not_drift(
    disposable_redis: RedisServer, hook: Webhook, production: Environment, system: Actor
) -> None:
    do_create_policy(production, "breaker", "payments", {}, system)
    disposable_redis.stop()

    with pytest.raises(redis.ConnectionError):
        reconcile_all()

    assert _drift_events() == []


def test_no_webhook_wanting_drift_writes_no_event(
    production: Environment, system: Actor, redis_client: redis.Redis
) -> None:
    Webhook.objects.create(
        environment="production", name="chat", url="http://127.0.0.1:9/", events=["policy.*"]
    )
    do_create_policy(production, "breaker", "payments", {}, system)
    redis_client.hdel(production.keys().policies, "breaker:payments")

    assert reconcile_environment(production).missing == ["breaker:payments"]

    assert _drift_events() == []


def test_the_event_lists_at_most_fifty_names_of_each_problem() -> None:
    names = [f"breaker:b{i:03}" for i in range(120)]
    drift = Drift("production", 7, None, missing=names, extra=names[:3])

    payload = drift.event_payload()

    assert payload["missing"] == names[:50]
    assert payload["extra"] == names[:3]
    assert "breaker:b119" in payload["summary"]  # the summary names them all
