"""Hostile input to the API: every answer is a 4xx naming the field, and nothing changes."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from controlplane.accounts.actors import Actor
from controlplane.accounts.roles import Role
from controlplane.audit.models import AuditEntry
from controlplane.policies.actions import do_create_policy
from controlplane.policies.models import Environment, Override, Policy
from controlplane.policies.overrides import current_override, do_set_override
from tests.api.conftest import ApiClient
from tests.properties import nested

pytestmark = pytest.mark.django_db(transaction=True)

BASE = "/environments/production/policies"


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("get", "/environments/%00/policies", "environment"),
        ("get", "/environments/production/policies/config/%00", "name"),
        ("get", "/environments/production/policies/config/a%00b/history", "name"),
        ("get", "/environments/%00/overrides", "environment"),
        ("delete", "/environments/production/overrides/breaker/%00?reason=x", "name"),
        ("delete", "/environments/production/policies/config/" + "n" * 101, "name"),
    ],
)
def test_path_parameter_outside_the_name_rule_is_refused_naming_it(
    api_as: Callable[..., ApiClient], production: Environment, method: str, path: str, field: str
) -> None:
    response = api_as(Role.ADMIN).call(method, path)
    assert response.status_code == 422, response.content
    assert list(response.json()["errors"]) == [field]


def test_config_value_nested_past_the_limit_is_refused_and_export_keeps_working(
    api_as: Callable[..., ApiClient], client: Client, editor: Any, production: Environment
) -> None:
    api = api_as(Role.EDITOR)
    for depth in (33, 100):
        response = api.call(
            "post",
            BASE,
            {
                "kind": "config",
                "name": "deep",
                "spec": {"value_type": "json", "value": nested(depth)},
            },
        )
        assert response.status_code == 422, response.content
        assert "nests deeper than 32 levels" in response.json()["errors"]["value"][0]
    assert not Policy.objects.exists()
    kept = api.call(
        "post",
        BASE,
        {"kind": "config", "name": "deep", "spec": {"value_type": "json", "value": nested(32)}},
    )
    assert kept.status_code == 201
    client.force_login(editor)
    for fmt in ("yaml", "json"):
        exported = client.get(f"/e/production/export.{fmt}")
        assert exported.status_code == 200
        # What was stored can be exported, and the export imports again unchanged.
        preview = client.post("/e/production/import/", {"text": exported.content.decode()})
        assert "The environment already matches the document." in preview.content.decode()


def test_body_nested_beyond_any_limit_is_refused_naming_the_body(
    api_as: Callable[..., ApiClient], production: Environment
) -> None:
    body = '{"kind": "config", "name": "x", "spec": {"value": ' + "[" * 5000 + "]" * 5000 + "}}"
    response = api_as(Role.EDITOR).client.post(
        "/api/v1" + BASE,
        body,
        content_type="application/json",
        headers=api_as(Role.EDITOR).headers,
    )
    assert response.status_code == 422
    assert "nests deeper than" in response.json()["errors"]["body"][0]
    assert not Policy.objects.exists()


def test_overlong_reason_is_refused_naming_it(
    api_as: Callable[..., ApiClient], production: Environment
) -> None:
    api = api_as(Role.OPERATOR)
    response = api.call(
        "post",
        "/environments/production/overrides",
        {"kind": "breaker", "name": "payments", "state": "forced_open", "reason": "x" * 1001},
    )
    assert response.status_code == 422
    assert list(response.json()["errors"]) == ["reason"]
    editor = api_as(Role.EDITOR)
    response = editor.call(
        "post", BASE, {"kind": "breaker", "name": "payments", "reason": "x" * 1001}
    )
    assert response.status_code == 422
    assert list(response.json()["errors"]) == ["reason"]
    assert not Policy.objects.exists() and not Override.objects.exists()


def test_lifting_an_override_needs_a_reason(
    api_as: Callable[..., ApiClient], production: Environment
) -> None:
    do_set_override(production, "breaker", "payments", "forced_open", Actor.system("olga"), "x")
    api = api_as(Role.OPERATOR)
    for query in ("", "?reason="):
        response = api.call("delete", "/environments/production/overrides/breaker/payments" + query)
        assert response.status_code == 422
        assert list(response.json()["errors"]) == ["reason"]
    assert current_override(production, "breaker", "payments") is not None
    lifted = api.call("delete", "/environments/production/overrides/breaker/payments?reason=ok")
    assert lifted.status_code == 204
    assert AuditEntry.objects.filter(action="override.clear", reason="ok").exists()


def test_versions_beyond_any_database_integer_are_refused(
    api_as: Callable[..., ApiClient], production: Environment
) -> None:
    do_create_policy(production, "breaker", "payments", {}, Actor.system("tests"))
    api = api_as(Role.EDITOR)
    path = BASE + "/breaker/payments"
    huge = 10**30
    for method, url, body in [
        ("post", path + "/rollback", {"version": huge}),
        ("patch", path, {"spec": {}, "expected_version": huge}),
        ("delete", path + f"?expected_version={huge}", None),
    ]:
        response = api.call(method, url, body)
        assert response.status_code == 422, (url, response.content)
    assert json.loads(api.call("get", path).content)["version"] == 1
