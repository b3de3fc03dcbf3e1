from __future__ import annotations

import json
import time

import pytest
import redis
from django.contrib.auth.models import User
from django.test import Client

from controlplane.accounts.actors import Actor
from controlplane.audit.models import AuditEntry
from controlplane.live.actions import current_override
from controlplane.live.ingest import process_entries
from controlplane.live.models import DiscoveredName
from controlplane.policies.actions import do_create_policy
from controlplane.policies.models import Environment, Policy
from controlplane.protocol.documents import OverrideDocument

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def policies(production: Environment, system: Actor) -> None:
    do_create_policy(production, "breaker", "payments", {}, system)
    do_create_policy(production, "rate_limit", "api", {}, system)
    do_create_policy(production, "cache", "prices", {"ttl": 30}, system)


def test_overview_shows_live_figures(
    client: Client, viewer: User, production: Environment, policies: None, redis_client: redis.Redis
) -> None:
    heartbeat = {
        "service": "shop",
        "host": "h",
        "pid": 1,
        "library_version": "0.1.0",
        "revision": production.revision,
        "connected": True,
        "at": time.time(),
    }
    redis_client.hset(production.keys().instances, "i1", json.dumps(heartbeat))
    process_entries(
        production,
        [
            (
                "1-0",
                {
                    "type": "counters",
                    "instance": "i1",
                    "data": json.dumps(
                        {
                            "at": time.time() - 2,
                            "policies": {
                                "breaker:payments": {"calls": 10, "failures": 10, "state": "open"},
                                "rate_limit:api": {
                                    "allowed": 5,
                                    "rejected": 5,
                                    "top_rejected": {"user:9": 5},
                                },
                            },
                        }
                    ),
                },
            )
        ],
    )
    client.force_login(viewer)

    html = client.get("/e/production/live/").content.decode()

    assert 'data-breaker="payments" data-state="open"' in html
    assert "100.0%" in html  # failure rate
    assert "<code>user:9</code>" in html
    assert 'data-in-sync="1"' in html
    assert 'ws-connect="/ws/live/production/"' in html
    assert "override-form" not in html and "data-act" not in html  # viewers see no controls


def test_operator_trips_a_breaker_with_a_reason_and_expiry(
    client: Client,
    operator: User,
    production: Environment,
    policies: None,
    redis_client: redis.Redis,
) -> None:
    client.force_login(operator)
    response = client.post(
        "/e/production/override/",
        {
            "kind": "breaker",
            "name": "payments",
            "action": "trip",
            "reason": "upstream on fire",
            "expires_in_minutes": "10",
        },
    )
    assert response.status_code == 302
    override = current_override(production, "breaker", "payments")
    assert override is not None and override.state == "forced_open"
    assert override.expires_at is not None
    stored = OverrideDocument.decode(
        redis_client.hget(production.keys().overrides, "breaker:payments")
    )
    assert (stored.state, stored.reason) == ("forced_open", "upstream on fire")
    html = client.get("/e/production/live/").content.decode()
    assert "forced open by olga" in html
    assert Policy.objects.get(name="payments").version == 1


def test_override_without_a_reason_changes_nothing(
    client: Client, operator: User, production: Environment, policies: None
) -> None:
    client.force_login(operator)
    response = client.post(
        "/e/production/override/",
        {"kind": "breaker", "name": "payments", "action": "trip", "reason": ""},
        follow=True,
    )
    assert "Nothing was changed" in response.content.decode()
    assert current_override(production, "breaker", "payments") is None


def test_reset_lifts_the_override_and_closes_the_breaker_fleet_wide(
    client: Client,
    operator: User,
    production: Environment,
    policies: None,
    redis_client: redis.Redis,
) -> None:
    client.force_login(operator)
    client.post(
        "/e/production/override/",
        {"kind": "breaker", "name": "payments", "action": "trip", "reason": "x"},
    )
    client.post(
        "/e/production/override/",
        {"kind": "breaker", "name": "payments", "action": "reset", "reason": "recovered"},
    )
    assert current_override(production, "breaker", "payments") is None
    shared = json.loads(redis_client.hget(production.keys().breakers, "payments"))
    assert (shared["state"], shared["reason"], shared["instance"]) == (
        "closed",
        "reset",
        "controlplane",
    )
    assert AuditEntry.objects.filter(action="override.reset", reason="recovered").exists()


def test_limiter_block_and_cache_purge(
    client: Client, operator: User, production: Environment, policies: None
) -> None:
    client.force_login(operator)
    client.post(
        "/e/production/override/",
        {"kind": "rate_limit", "name": "api", "action": "block_all", "reason": "abuse"},
    )
    client.post(
        "/e/production/override/",
        {"kind": "cache", "name": "prices", "action": "purge", "reason": "bad prices"},
    )
    override = current_override(production, "rate_limit", "api")
    assert override is not None and override.state == "block_all"
    prices = Policy.objects.get(name="prices")
    assert prices.spec["generation"] == 1
    assert prices.versions.get(version=2).reason == "Purge: bad prices"


def test_viewer_cannot_override(
    client: Client, viewer: User, production: Environment, policies: None
) -> None:
    client.force_login(viewer)
    response = client.post(
        "/e/production/override/",
        {"kind": "breaker", "name": "payments", "action": "trip", "reason": "x"},
    )
    assert response.status_code == 403
    assert current_override(production, "breaker", "payments") is None


def test_adopt_creates_a_policy_from_code_defaults(
    client: Client, editor: User, production: Environment
) -> None:
    found = DiscoveredName.objects.create(
        environment=production,
        kind="breaker",
        name="search",
        defaults={"failure_rate_threshold": 30, "open_for": 15},
        last_seen="2026-11-27T00:00:00Z",
    )
    client.force_login(editor)
    assert "search" in client.get("/e/production/discovered/").content.decode()
    response = client.post(f"/e/production/discovered/{found.pk}/adopt/")
    assert response.status_code == 302
    policy = Policy.objects.get(name="search")
    assert (policy.spec["failure_rate_threshold"], policy.spec["open_for"]) == (30.0, 15.0)
    assert (
        'data-discovered="breaker:search"'
        not in client.get("/e/production/discovered/").content.decode()
    )
    assert AuditEntry.objects.get(action="policy.adopt", object_name="search").actor_name == "erin"


def test_instances_page_flags_instances_behind(
    client: Client,
    viewer: User,
    production: Environment,
    policies: None,
    redis_client: redis.Redis,
) -> None:
    for name, revision in (("fresh", production.revision), ("stale", 1)):
        redis_client.hset(
            production.keys().instances,
            name,
            json.dumps(
                {
                    "service": "shop",
                    "host": "h",
                    "pid": 2,
                    "library_version": "0.1.0",
                    "revision": revision,
                    "connected": True,
                    "at": time.time(),
                }
            ),
        )
    client.force_login(viewer)
    html = client.get("/e/production/instances/").content.decode()
    assert 'data-instance="fresh"' in html and 'data-instance="stale"' in html
    assert html.count("data-behind") == 1


def test_policy_page_shows_live_state_per_instance_and_series(
    client: Client,
    viewer: User,
    production: Environment,
    policies: None,
    redis_client: redis.Redis,
) -> None:
    for instance, state in (("i1", "open"), ("i2", "closed")):
        redis_client.hset(
            production.keys().instances,
            instance,
            json.dumps(
                {
                    "service": "shop",
                    "host": "h",
                    "pid": 1,
                    "library_version": "0.1.0",
                    "revision": production.revision,
                    "connected": True,
                    "at": time.time(),
                }
            ),
        )
        process_entries(
            production,
            [
                (
                    "1-0",
                    {
                        "type": "counters",
                        "instance": instance,
                        "data": json.dumps(
                            {
                                "at": time.time() - 2,
                                "policies": {
                                    "breaker:payments": {"calls": 4, "failures": 2, "state": state}
                                },
                            }
                        ),
                    },
                )
            ],
        )
    client.force_login(viewer)

    html = client.get("/e/production/breaker/payments/").content.decode()

    assert 'id="policy-live"' in html
    assert html.count("data-instance-state=") == 2
    assert "1 open, 1 closed" in html or "1 closed, 1 open" in html
    assert 'ws-connect="/ws/live/production/?policy=breaker%3Apayments"' in html
    series = client.get("/e/production/breaker/payments/series.json?seconds=10").json()
    assert len(series["t"]) == 10 and sum(series["calls"]) == 8 and sum(series["failures"]) == 4
