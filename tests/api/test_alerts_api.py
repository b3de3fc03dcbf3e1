"""The alert rules API: an environment's admins add, list, switch and remove its rules,
with the same validation and audit as the pages; anyone who views the environment
reads its fleet-wide breaker states."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.utils import timezone

from controlplane.accounts.roles import Role
from controlplane.alerts.models import AlertRule, AlertState, FleetBreaker
from controlplane.audit.models import AuditEntry
from controlplane.policies.models import Environment
from tests.api.conftest import ApiClient

pytestmark = pytest.mark.django_db(transaction=True)

RULES = "/environments/production/alert-rules"


def test_an_admin_token_adds_lists_switches_and_removes_a_rule(
    api_as: Callable[..., ApiClient], production: Environment
) -> None:
    api = api_as(Role.ADMIN)
    body = {"name": "api hot", "kind": "limiter_rejecting", "target": "api", "minutes": 0.5}
    created = api.call("post", RULES, {**body, "percent": 20})
    assert created.status_code == 201, created.content
    rule = AlertRule.objects.get()
    assert created.json()["id"] == rule.pk
    assert created.json()["description"] == (
        "Rate limiter api rejecting more than 20 % for more than 0.5 min"
    )
    AlertState.objects.create(rule=rule, target="api", firing_since=timezone.now(), value=31.0)
    listed = api.call("get", RULES).json()
    assert [(r["name"], [(s["target"], s["value"]) for s in r["states"]]) for r in listed] == [
        ("api hot", [("api", 31.0)])
    ]
    off = api.call("put", f"{RULES}/{rule.pk}/enabled", {"enabled": False})
    assert off.status_code == 200 and off.json()["enabled"] is False
    assert off.json()["states"] == []  # switched off: it forgets where it stood
    assert api.call("delete", f"{RULES}/{rule.pk}").status_code == 204
    assert not AlertRule.objects.exists()
    assert api.call("delete", f"{RULES}/{rule.pk}").status_code == 404
    assert [
        e.action for e in AuditEntry.objects.filter(object_kind="alert_rule").order_by("id")
    ] == [
        "alert_rule.create",
        "alert_rule.disable",
        "alert_rule.delete",
    ]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"minutes": -1}, "minutes"),
        ({"minutes": "soon"}, "minutes"),
        ({"kind": "limiter_rejecting"}, "percent"),
        ({"percent": 10}, "percent"),
        ({"target": "no such name!"}, "target"),
        ({"kind": "instances_behind"}, "target"),
        ({"kind": "anything"}, "kind"),
    ],
)
def test_bad_fields_are_named_and_nothing_is_saved(
    api_as: Callable[..., ApiClient], production: Environment, fields: dict[str, object], field: str
) -> None:
    body = {"name": "payments", "kind": "breaker_open", "target": "payments", **fields}
    response = api_as(Role.ADMIN).call("post", RULES, body)
    assert response.status_code == 422
    assert field in response.json()["errors"]
    assert not AlertRule.objects.exists()


@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR, Role.EDITOR])
def test_tokens_below_admin_cannot_see_or_add_rules(
    api_as: Callable[..., ApiClient], production: Environment, role: Role
) -> None:
    api = api_as(role)
    assert api.call("get", RULES).status_code == 403
    assert api.call("post", RULES, {"name": "x", "kind": "breaker_open"}).status_code == 403
    assert not AlertRule.objects.exists()


def test_viewers_read_the_fleet_breaker_states(
    api_as: Callable[..., ApiClient], production: Environment
) -> None:
    FleetBreaker.objects.create(
        environment=production,
        name="payments",
        state="open",
        instances_open=3,
        instances_reporting=4,
    )
    listed = api_as(Role.VIEWER).call("get", "/environments/production/fleet-breakers").json()
    assert [(b["name"], b["state"], b["instances_open"]) for b in listed] == [
        ("payments", "open", 3)
    ]
    assert api_as(None).call("get", "/environments/production/fleet-breakers").status_code == 401
