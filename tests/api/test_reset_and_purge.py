"""Breaker reset and cache purge through the API: the live page's buttons, audited alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from django.contrib.auth.models import User
from django.test import Client

from controlplane.accounts.actors import Actor
from controlplane.accounts.roles import Role
from controlplane.audit.models import AuditEntry
from controlplane.policies.actions import do_create_policy
from controlplane.policies.models import Environment, Policy
from controlplane.policies.overrides import current_override, do_set_override
from controlplane.protocol import scripts
from controlplane.protocol.breaker_state import BreakerState
from controlplane.protocol.documents import OverrideDocument, PolicyDocument
from tests.api.conftest import ApiClient
from tests.conftest import use_redis

pytestmark = pytest.mark.django_db(transaction=True)

BASE = "/environments/production/policies"
RESET = BASE + "/breaker/payments/reset"
PURGE = BASE + "/cache/prices/purge"


@pytest.fixture
def payments(production: Environment, system: Actor) -> Policy:
    return do_create_policy(production, "breaker", "payments", {}, system)


@pytest.fixture
def prices(production: Environment, system: Actor) -> Policy:
    return do_create_policy(production, "cache", "prices", {"ttl": 30}, system)


def _open_in_redis(client: redis.Redis, environment: Environment, name: str) -> BreakerState:
    """Trip the shared state as an instance does: the real transition script."""
    keys = environment.keys()
    accepted, raw, _ = scripts.run(
        client,
        scripts.load("breaker_transition"),
        [keys.breakers, keys.breaker_probes(name)],
        [name, "closed", "open", 0, 60, "i-1", "failure_rate", "75", "", keys.breaker_events],
    )
    assert accepted == 1
    return BreakerState.decode(raw)


def _shared(client: redis.Redis, environment: Environment, name: str) -> BreakerState:
    return BreakerState.decode(client.hget(environment.keys().breakers, name))


def _audited(**filters: Any) -> list[tuple[Any, ...]]:
    return list(
        AuditEntry.objects.filter(**filters)
        .order_by("id")
        .values_list(
            "action",
            "environment",
            "object_kind",
            "object_name",
            "reason",
            "changes",
            "actor_name",
            "actor_token",
        )
    )


def test_reset_closes_an_open_and_overridden_breaker_for_the_fleet(
    api_as: Callable[..., ApiClient],
    production: Environment,
    payments: Policy,
    redis_client: redis.Redis,
    system: Actor,
) -> None:
    opened = _open_in_redis(redis_client, production, "payments")
    do_set_override(production, "breaker", "payments", "forced_open", system, "db failover")

    response = api_as(Role.OPERATOR).call("post", RESET, {"reason": "upstream recovered"})

    assert response.status_code == 200, response.content
    assert response.json() == {
        "environment": "production",
        "name": "payments",
        "state": "closed",
        "lifted_override": "forced_open",
    }
    shared = _shared(redis_client, production, "payments")
    assert (shared.state, shared.reason, shared.instance) == ("closed", "reset", "controlplane")
    assert shared.epoch > opened.epoch
    assert current_override(production, "breaker", "payments") is None
    lifted = redis_client.hget(production.keys().overrides, "breaker:payments")
    assert OverrideDocument.decode(lifted).state is None
    token = ("token:operator-active", "operator-active")
    # One action, one audit row: the lift the reset includes is in it.
    assert _audited(action__in=["override.clear", "override.reset"]) == [
        ("override.reset", "production", "breaker", "payments", "upstream recovered",
         {"state": ["forced_open", None]}, *token),
    ]  # fmt: skip


def test_reset_without_an_override_lifts_nothing(
    api_as: Callable[..., ApiClient],
    production: Environment,
    payments: Policy,
    redis_client: redis.Redis,
) -> None:
    _open_in_redis(redis_client, production, "payments")
    response = api_as(Role.OPERATOR).call("post", RESET, {"reason": "try again"})
    assert response.json()["lifted_override"] is None
    assert _shared(redis_client, production, "payments").state == "closed"
    assert [a for a, *_ in _audited(action__startswith="override.")] == ["override.reset"]


def test_purge_raises_the_generation_and_is_audited_as_a_purge(
    api_as: Callable[..., ApiClient],
    production: Environment,
    prices: Policy,
    redis_client: redis.Redis,
) -> None:
    response = api_as(Role.OPERATOR).call("post", PURGE, {"reason": "bad prices"})

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["version"], body["spec"]["generation"]) == (2, 1)
    stored = redis_client.hget(production.keys().policies, "cache:prices")
    assert PolicyDocument.decode(stored).spec["generation"] == 1
    assert prices.versions.get(version=2).reason == "Purge: bad prices"
    assert _audited(action="policy.purge") == [
        ("policy.purge", "production", "cache", "prices", "Purge: bad prices",
         {"generation": [0, 1]}, "token:operator-active", "operator-active"),
    ]  # fmt: skip
    assert not AuditEntry.objects.filter(action="policy.update").exists()


@pytest.mark.parametrize(("action", "kind"), [("reset", "breaker"), ("purge", "cache")])
def test_the_api_audits_what_the_live_page_audits(
    api_as: Callable[..., ApiClient],
    operator: User,
    production: Environment,
    system: Actor,
    action: str,
    kind: str,
) -> None:
    for name in ("by-page", "by-api"):
        do_create_policy(production, kind, name, {}, system)
        if kind == "breaker":
            do_set_override(production, kind, name, "disabled", system, "maintenance")
    mark = AuditEntry.objects.order_by("id").values_list("id", flat=True).last()
    page = Client()
    page.force_login(operator)
    page.post(
        "/e/production/override/",
        {"policy": f"{kind}:by-page", "action": action, "reason": "incident 7"},
    )
    response = api_as(Role.OPERATOR).call(
        "post", f"{BASE}/{kind}/by-api/{action}", {"reason": "incident 7"}
    )
    assert response.status_code == 200, response.content

    def what(name: str) -> list[tuple[Any, ...]]:  # all but the object's name and the actor
        return [(e[:3] + e[4:6]) for e in _audited(id__gt=mark, object_name=name)]

    expected = {"reset": ["override.reset"], "purge": ["policy.purge"]}
    assert [e[0] for e in what("by-page")] == expected[action]
    assert what("by-api") == what("by-page")
    actors = {e[-2:] for e in _audited(id__gt=mark, object_name__startswith="by-")}
    assert actors == {("olga", ""), ("token:operator-active", "operator-active")}


def test_a_viewer_cannot_reset_or_purge_and_nothing_changes(
    api_as: Callable[..., ApiClient],
    production: Environment,
    payments: Policy,
    prices: Policy,
    redis_client: redis.Redis,
) -> None:
    opened = _open_in_redis(redis_client, production, "payments")
    viewer = api_as(Role.VIEWER)
    entries = AuditEntry.objects.count()
    for path in (RESET, PURGE):
        refused = viewer.call("post", path, {"reason": "let me"})
        assert refused.status_code == 403
        assert refused.json()["detail"] == "This needs the operator role; the token has viewer."
    assert _shared(redis_client, production, "payments") == opened
    prices.refresh_from_db()
    assert (prices.version, prices.spec["generation"]) == (1, 0)
    assert AuditEntry.objects.count() == entries


@pytest.mark.parametrize(
    ("path", "detail"),
    [
        (BASE + "/breaker/nope/reset", "No breaker policy named 'nope' in production."),
        (BASE + "/cache/nope/purge", "No cache policy named 'nope' in production."),
        (BASE + "/cache/payments/purge", "No cache policy named 'payments' in production."),
        (BASE + "/breaker/prices/reset", "No breaker policy named 'prices' in production."),
        (
            "/environments/staging/policies/breaker/payments/reset",
            "No breaker policy named 'payments' in staging.",
        ),
    ],
)
def test_an_unknown_breaker_or_cache_is_404_naming_it(
    api_as: Callable[..., ApiClient],
    production: Environment,
    payments: Policy,
    prices: Policy,
    path: str,
    detail: str,
) -> None:
    response = api_as(Role.OPERATOR).call("post", path, {"reason": "why not"})
    assert response.status_code == 404
    assert response.json()["detail"].startswith(detail)
    assert not AuditEntry.objects.filter(action__in=["override.reset", "policy.purge"]).exists()


@pytest.mark.parametrize("path", [RESET, PURGE])
@pytest.mark.parametrize("body", [{}, {"reason": ""}, {"reason": "   "}, {"reason": "x" * 1001}])
def test_the_reason_is_required_and_bounded_naming_it(
    api_as: Callable[..., ApiClient],
    production: Environment,
    payments: Policy,
    prices: Policy,
    path: str,
    body: dict[str, str],
) -> None:
    response = api_as(Role.OPERATOR).call("post", path, body)
    assert response.status_code == 422
    assert list(response.json()["errors"]) == ["reason"]
    assert not AuditEntry.objects.filter(action__in=["override.reset", "policy.purge"]).exists()


def test_a_reset_while_redis_is_down_is_503_and_changes_nothing(
    api_as: Callable[..., ApiClient],
    production: Environment,
    payments: Policy,
    redis_client: redis.Redis,
    system: Actor,
    settings: Any,
) -> None:
    do_set_override(production, "breaker", "payments", "forced_open", system, "db failover")
    operator = api_as(Role.OPERATOR)
    entries = AuditEntry.objects.count()
    use_redis(settings, "redis://127.0.0.1:1")  # nothing listens there: refused at once

    response = operator.call("post", RESET, {"reason": "upstream recovered"})

    assert response.status_code == 503
    assert response.json()["detail"].startswith("Redis cannot be reached")
    override = current_override(production, "breaker", "payments")
    assert override is not None and override.state == "forced_open"
    assert AuditEntry.objects.count() == entries
    stored = redis_client.hget(production.keys().overrides, "breaker:payments")
    assert OverrideDocument.decode(stored).state == "forced_open"
    assert redis_client.hget(production.keys().breakers, "payments") is None


def test_the_openapi_schema_shows_reset_and_purge(api_as: Callable[..., ApiClient]) -> None:
    schema = api_as(Role.VIEWER).call("get", "/openapi.json").json()
    prefix = "/api/v1/environments/{environment}/policies"
    reset = schema["paths"][prefix + "/breaker/{name}/reset"]["post"]
    purge = schema["paths"][prefix + "/cache/{name}/purge"]["post"]
    for operation in (reset, purge):
        assert operation["summary"] and "audited as" in operation["description"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/ReasonIn"}
        assert {"200", "401", "403", "404", "422"} <= set(operation["responses"])
    assert "503" in reset["responses"] and "503" not in purge["responses"]
    assert "example" in purge["responses"]["200"]["content"]["application/json"]
    components = schema["components"]["schemas"]
    assert components["ResetOut"]["examples"][0]["state"] == "closed"
    assert components["ReasonIn"]["required"] == ["reason"]
