from __future__ import annotations

from collections.abc import Callable
from typing import get_args

import pytest
import redis

from controlplane.accounts.actors import Actor
from controlplane.accounts.roles import Role
from controlplane.api.schemas import Kind, OverrideKind
from controlplane.audit.models import AuditEntry
from controlplane.policies.actions import do_create_policy
from controlplane.policies.models import Environment, Policy
from controlplane.protocol.documents import OVERRIDE_STATES, PolicyDocument
from controlplane.protocol.schema import KINDS
from tests.api.conftest import ApiClient

pytestmark = pytest.mark.django_db(transaction=True)

BASE = "/environments/production/policies"


def test_create_read_update_history_rollback_delete(
    api_as: Callable[..., ApiClient], production: Environment, redis_client: redis.Redis
) -> None:
    api = api_as(Role.EDITOR)
    created = api.call(
        "post", BASE, {"kind": "rate_limit", "name": "api", "spec": {"limit": 10}, "reason": "go"}
    )
    assert created.status_code == 201, created.content
    assert created.json()["spec"]["limit"] == 10

    updated = api.call(
        "patch", BASE + "/rate_limit/api", {"spec": {"limit": 20}, "expected_version": 1}
    )
    assert updated.json()["version"] == 2
    stored = redis_client.hget(production.keys().policies, "rate_limit:api")
    assert PolicyDocument.decode(stored).spec["limit"] == 20

    history = api.call("get", BASE + "/rate_limit/api/history").json()
    assert [(v["version"], v["action"], v["author"]) for v in history] == [
        (2, "update", "token:editor-active"),
        (1, "create", "token:editor-active"),
    ]
    rolled = api.call("post", BASE + "/rate_limit/api/rollback", {"version": 1})
    assert (rolled.json()["version"], rolled.json()["spec"]["limit"]) == (3, 10)

    assert api.call("delete", BASE + "/rate_limit/api?reason=done").status_code == 204
    assert api.call("get", BASE + "/rate_limit/api").status_code == 404
    entry = AuditEntry.objects.get(action="policy.delete")
    assert (entry.actor_name, entry.actor_token, entry.reason) == (
        "token:editor-active",
        "editor-active",
        "done",
    )


def test_bad_field_answers_json_naming_it_and_changes_nothing(
    api_as: Callable[..., ApiClient], production: Environment
) -> None:
    api = api_as(Role.EDITOR)
    response = api.call(
        "post", BASE, {"kind": "breaker", "name": "payments", "spec": {"open_for": "soon"}}
    )
    assert response.status_code == 422
    assert list(response.json()["errors"]) == ["open_for"]
    assert not Policy.objects.exists()


def test_malformed_body_answers_json_naming_the_field(
    api_as: Callable[..., ApiClient], production: Environment
) -> None:
    response = api_as(Role.EDITOR).call("post", BASE, {"kind": "bulkhead", "name": "x"})
    assert response.status_code == 422
    assert "kind" in response.json()["errors"]


def test_stale_expected_version_is_refused_with_the_current_version(
    api_as: Callable[..., ApiClient], production: Environment, system: Actor
) -> None:
    policy = do_create_policy(production, "cache", "prices", {"ttl": 5}, system)
    api = api_as(Role.EDITOR)
    api.call("patch", BASE + "/cache/prices", {"spec": {"ttl": 6}, "expected_version": 1})
    response = api.call(
        "patch", BASE + "/cache/prices", {"spec": {"ttl": 7}, "expected_version": 1}
    )
    assert response.status_code == 409
    assert response.json()["current"]["version"] == 2
    policy.refresh_from_db()
    assert policy.spec["ttl"] == 6


def test_secret_values_are_masked(
    api_as: Callable[..., ApiClient], production: Environment, system: Actor
) -> None:
    do_create_policy(
        production, "config", "db.password", {"value": "pw-123", "secret": True}, system
    )
    api = api_as(Role.ADMIN)
    for path in (
        BASE,
        BASE + "/config/db.password",
        BASE + "/config/db.password/history",
        "/audit",
    ):
        response = api.call("get", path)
        assert response.status_code == 200, path  # an error would hide nothing
        assert "pw-123" not in response.content.decode(), path


def test_audit_filters(
    api_as: Callable[..., ApiClient], production: Environment, system: Actor
) -> None:
    do_create_policy(production, "cache", "prices", {}, system)
    do_create_policy(production, "breaker", "payments", {}, system)
    entries = api_as(Role.VIEWER).call("get", "/audit?kind=cache").json()
    assert [(e["action"], e["object"]) for e in entries] == [("policy.create", "prices")]
    bad = api_as(Role.VIEWER).call("get", "/audit?limit=0")
    assert bad.status_code == 422 and list(bad.json()["errors"]) == ["limit"]


def test_openapi_schema_is_served(api_as: Callable[..., ApiClient]) -> None:
    schema = api_as(Role.VIEWER).call("get", "/openapi.json").json()
    assert schema["info"]["title"] == "Resilience control plane API"
    assert "/api/v1/environments/{environment}/policies/{kind}/{name}/rollback" in schema["paths"]


def test_overrides_set_list_and_lift(
    api_as: Callable[..., ApiClient], production: Environment, redis_client: redis.Redis
) -> None:
    api = api_as(Role.OPERATOR)
    created = api.call(
        "post",
        "/environments/production/overrides",
        {
            "kind": "breaker",
            "name": "payments",
            "state": "forced_open",
            "reason": "db failover",
            "expires_in_seconds": 600,
        },
    )
    assert created.status_code == 201, created.content
    assert created.json()["expires_at"] is not None
    listed = api.call("get", "/environments/production/overrides").json()
    assert [(o["name"], o["state"], o["actor"]) for o in listed] == [
        ("payments", "forced_open", "token:operator-active")
    ]
    assert (
        api.call(
            "delete", "/environments/production/overrides/breaker/payments?reason=ok"
        ).status_code
        == 204
    )
    assert api.call("get", "/environments/production/overrides").json() == []
    lifted_again = api.call(
        "delete", "/environments/production/overrides/breaker/payments?reason=ok"
    )
    assert lifted_again.status_code == 404
    actions = list(
        AuditEntry.objects.filter(object_name="payments").values_list("action", flat=True)
    )
    assert sorted(actions) == ["override.clear", "override.set"]


def test_override_without_reason_is_refused_naming_it(
    api_as: Callable[..., ApiClient], production: Environment
) -> None:
    response = api_as(Role.OPERATOR).call(
        "post",
        "/environments/production/overrides",
        {"kind": "breaker", "name": "payments", "state": "forced_open", "reason": ""},
    )
    assert response.status_code == 422
    assert "reason" in response.json()["errors"]


def test_the_api_kinds_are_the_protocols() -> None:
    assert get_args(Kind) == KINDS
    assert set(get_args(OverrideKind)) == set(OVERRIDE_STATES)
