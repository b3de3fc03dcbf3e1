"""The alert evaluator as a worker: it runs rounds on its own, survives Redis going
away with one warning, and tells what changed meanwhile once Redis is back."""

from __future__ import annotations

import logging
import time

import pytest

from controlplane.alerts.evaluator import AlertEvaluator
from controlplane.alerts.models import FleetBreaker
from controlplane.embedded_redis import RedisServer
from controlplane.ops.metrics import REDIS_ERRORS
from controlplane.policies.models import Environment
from controlplane.redis_connection import get_redis
from controlplane.webhooks.models import Event
from tests.alerts.conftest import breaker_states, outbox_webhook
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_evaluator_survives_a_redis_outage_and_then_tells_the_opening(
    production: Environment, disposable_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    outbox_webhook(production)
    breaker_states(get_redis(), production, {"a": "closed"}, time.time() - 2)
    evaluator = AlertEvaluator(interval=0.05)
    caplog.set_level(logging.INFO, logger="controlplane.alerts")
    evaluator.start()
    try:
        wait_for(lambda: FleetBreaker.objects.filter(state="closed").exists())
        disposable_redis.stop()
        rounds_failing = evaluator.rounds
        failures = REDIS_ERRORS.labels("alerts")._value.get()
        # Several failed rounds, each counted, one warning for them all (checked below)
        wait_for(lambda: REDIS_ERRORS.labels("alerts")._value.get() >= failures + 3)
        assert "The alert evaluator cannot reach Redis" in caplog.text
        disposable_redis.start()
        breaker_states(get_redis(), production, {"a": "open"}, time.time() - 2)
        wait_for(lambda: Event.objects.filter(type="breaker.opened").exists())
        assert evaluator.is_alive() and evaluator.rounds > rounds_failing
        assert "Redis answers again; the alert evaluator is running" in caplog.text
    finally:
        evaluator.stop()
    warnings = [r for r in caplog.records if r.getMessage().startswith("The alert evaluator")]
    assert len(warnings) == 1
    assert FleetBreaker.objects.get().state == "open"
    assert Event.objects.filter(type="breaker.opened").count() == 1
