"""/metrics carries each policy's version and each override in force, for Grafana's marks."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from controlplane.accounts.actors import Actor
from controlplane.policies.actions import (
    do_create_environment,
    do_create_policy,
    do_delete_policy,
    do_update_policy,
)
from controlplane.policies.metrics import PolicyCollector
from controlplane.policies.models import Environment, Override
from controlplane.policies.overrides import do_clear_override, do_set_override

pytestmark = pytest.mark.django_db(transaction=True)


def _samples(client: Client, metric: str) -> dict[tuple[str, ...], float]:
    """``{(environment, kind, name[, state]): value}`` of one metric in /metrics."""
    response = client.get("/metrics")
    assert response.status_code == 200
    found: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            if sample.name == metric:
                labels = sample.labels
                key = (labels["environment"], labels["kind"], labels["name"])
                found[key + ((labels["state"],) if "state" in labels else ())] = sample.value
    return found


def test_a_save_raises_the_version_and_a_delete_removes_it(
    client: Client, production: Environment, system: Actor
) -> None:
    staging = do_create_environment("staging", system)
    policy = do_create_policy(production, "rate_limit", "api", {"limit": 10}, system)
    do_create_policy(staging, "breaker", "payments", {}, system)
    versions = _samples(client, "controlplane_policy_version")
    assert versions == {
        ("production", "rate_limit", "api"): 1,
        ("staging", "breaker", "payments"): 1,
    }

    do_update_policy(policy, {"limit": 20}, system, "more room")

    assert _samples(client, "controlplane_policy_version")[("production", "rate_limit", "api")] == 2
    policy.refresh_from_db()
    do_delete_policy(policy, system, "gone")
    assert _samples(client, "controlplane_policy_version") == {
        ("staging", "breaker", "payments"): 1
    }


def test_an_override_is_one_while_in_force_and_absent_once_lifted_or_expired(
    client: Client, production: Environment, system: Actor
) -> None:
    do_create_policy(production, "breaker", "payments", {}, system)
    do_create_policy(production, "breaker", "search", {}, system)
    assert _samples(client, "controlplane_override_active") == {}

    do_set_override(production, "breaker", "payments", "forced_open", system, "incident")
    do_set_override(production, "breaker", "search", "forced_closed", system, "noisy")

    assert _samples(client, "controlplane_override_active") == {
        ("production", "breaker", "payments", "forced_open"): 1,
        ("production", "breaker", "search", "forced_closed"): 1,
    }
    do_clear_override(production, "breaker", "payments", system, "over")
    Override.objects.filter(name="search").update(expires_at=timezone.now() - timedelta(seconds=1))
    assert _samples(client, "controlplane_override_active") == {}


def test_the_collector_reads_the_database_in_two_queries_whatever_the_count(
    production: Environment, system: Actor
) -> None:
    for index in range(5):
        do_create_policy(production, "breaker", f"b{index}", {}, system)
        do_set_override(production, "breaker", f"b{index}", "forced_open", system, "drill")

    with CaptureQueriesContext(connection) as queries:
        families = {family.name: family for family in PolicyCollector().collect()}

    assert len(queries) == 2
    assert len(families["controlplane_policy_version"].samples) == 5
    assert len(families["controlplane_override_active"].samples) == 5
