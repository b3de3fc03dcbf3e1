"""The alert rule pages: an environment's admins list, add, switch and remove its rules;
nobody else changes anything, bad input names its field and saves nothing; firing
alerts show at the top of the home page to those who may view their environment."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from controlplane.accounts.actors import Actor
from controlplane.accounts.roles import Role
from controlplane.alerts.models import AlertRule, AlertState
from controlplane.audit.models import AuditEntry
from controlplane.policies.models import Environment
from tests.conftest import make_user
from tests.scoping import grant, scoped_cast

pytestmark = pytest.mark.django_db(transaction=True)

PAGE = "/e/production/alerts/"


def _add(client: Client, page: str = PAGE, **fields: object) -> Any:
    data = {"name": "payments down", "kind": "breaker_open", "target": "payments", "minutes": "5"}
    return client.post(page, {**data, **fields})


def test_an_admin_adds_a_rule_and_sees_it_listed_with_its_state(
    client: Client, admin: User, production: Environment
) -> None:
    client.force_login(admin)
    response = _add(client)
    assert response.status_code == 200
    rule = AlertRule.objects.get()
    assert (rule.environment, rule.name, rule.kind, rule.target, rule.minutes, rule.percent) == (
        production,
        "payments down",
        "breaker_open",
        "payments",
        5.0,
        None,
    )
    entry = AuditEntry.objects.get(action="alert_rule.create")
    assert (entry.actor_name, entry.environment, entry.object_name) == (
        "adam",
        "production",
        "payments down",
    )
    page = client.get(PAGE).content.decode()
    assert 'data-rule="payments down"' in page
    assert "Breaker payments open fleet-wide for more than 5 min" in page
    assert "quiet" in page

    limiter = _add(
        client, name="api", kind="limiter_rejecting", target="", minutes="0.5", percent="25"
    )
    assert limiter.status_code == 200
    assert AlertRule.objects.get(name="api").describe() == (
        "Rate limiter any rejecting more than 25 % for more than 0.5 min"
    )
    AlertState.objects.create(rule=rule, target="payments", firing_since=timezone.now())
    assert "firing</span> payments" in client.get(PAGE).content.decode()


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"minutes": "-1"}, "minutes"),
        ({"minutes": "nan"}, "minutes"),
        ({"minutes": "twenty"}, "minutes"),
        ({"minutes": "100000"}, "minutes"),
        ({"kind": "breaker_flapping"}, "kind"),
        ({"target": "pay ments!"}, "target"),
        ({"kind": "instances_behind", "target": "payments"}, "target"),
        ({"kind": "limiter_rejecting", "target": "api"}, "percent"),  # no percentage
        ({"kind": "limiter_rejecting", "percent": "100"}, "percent"),
        ({"percent": "30"}, "percent"),  # only limiter rules take one
        ({"name": ""}, "name"),
    ],
)
def test_bad_input_names_its_field_and_saves_nothing(
    client: Client, admin: User, production: Environment, fields: dict[str, str], field: str
) -> None:
    client.force_login(admin)
    response = _add(client, **fields)
    assert response.status_code == 422
    assert f'data-error-for="{field}"' in response.content.decode()
    assert not AlertRule.objects.exists()
    assert not AuditEntry.objects.filter(action__startswith="alert_rule").exists()


def test_a_second_rule_of_the_same_name_is_refused(
    client: Client, admin: User, production: Environment
) -> None:
    client.force_login(admin)
    _add(client)
    response = _add(client, target="ledger")
    assert response.status_code == 422
    assert 'data-error-for="name"' in response.content.decode()
    assert list(AlertRule.objects.values_list("target", flat=True)) == ["payments"]


@pytest.mark.parametrize("who", ["viewer", "operator", "editor"])
def test_only_admins_see_or_change_the_rules(
    client: Client, production: Environment, who: str, request: pytest.FixtureRequest
) -> None:
    client.force_login(request.getfixturevalue(who))
    assert client.get(PAGE).status_code == 403
    assert _add(client).status_code == 403
    assert not AlertRule.objects.exists()


def test_an_admin_of_staging_cannot_add_a_rule_in_production(
    client: Client, production: Environment, system: Actor
) -> None:
    cast = scoped_cast(system)
    stan = make_user("stan", Role.VIEWER)
    grant(stan, cast.staging, Role.ADMIN)
    client.force_login(stan)
    assert _add(client).status_code == 403
    assert client.get(PAGE).status_code == 403
    assert not AlertRule.objects.exists()
    assert _add(client, "/e/staging/alerts/").status_code == 200
    assert AlertRule.objects.get().environment == cast.staging
    assert client.get("/e/nowhere/alerts/").status_code == 403  # 403 before 404: names hidden


def test_switching_a_rule_off_forgets_its_state_and_removing_it_is_confirmed(
    client: Client, admin: User, production: Environment
) -> None:
    client.force_login(admin)
    _add(client)
    rule = AlertRule.objects.get()
    AlertState.objects.create(rule=rule, target="payments", firing_since=timezone.now())
    enabled = f"{PAGE}{rule.pk}/enabled/"
    assert client.post(enabled, {"enabled": "maybe"}).status_code == 302
    assert AlertRule.objects.get().enabled and AlertState.objects.exists()
    assert client.post(enabled, {"enabled": "off"}).status_code == 302
    assert not AlertRule.objects.get().enabled and not AlertState.objects.exists()
    assert client.post(enabled, {"enabled": "off"}).status_code == 302  # already off
    assert client.post(enabled, {"enabled": "on"}).status_code == 302
    audited = AuditEntry.objects.filter(object_kind="alert_rule").order_by("id")
    assert [entry.action for entry in audited] == [
        "alert_rule.create",
        "alert_rule.disable",
        "alert_rule.enable",
    ]

    remove = f"{PAGE}{rule.pk}/remove/"
    confirm = client.get(remove)
    assert confirm.status_code == 200 and "Remove the alert rule payments down?" in (
        confirm.content.decode()
    )
    assert AlertRule.objects.exists()
    assert client.post(remove).status_code == 302
    assert not AlertRule.objects.exists()
    assert AuditEntry.objects.filter(action="alert_rule.delete").count() == 1
    assert client.post(remove).status_code == 404


def test_a_rule_of_production_cannot_be_reached_through_staging(
    client: Client, admin: User, production: Environment, system: Actor
) -> None:
    scoped_cast(system)
    client.force_login(admin)
    _add(client)
    rule = AlertRule.objects.get()
    assert client.post(f"/e/staging/alerts/{rule.pk}/remove/").status_code == 404
    assert (
        client.post(f"/e/staging/alerts/{rule.pk}/enabled/", {"enabled": "off"}).status_code == 404
    )
    assert AlertRule.objects.get().enabled


def test_firing_alerts_show_on_the_home_page_to_those_who_may_view_them(
    client: Client, viewer: User, production: Environment, system: Actor
) -> None:
    cast = scoped_cast(system)
    rule = AlertRule.objects.create(
        environment=production, name="payments down", kind="breaker_open", minutes=0
    )
    AlertState.objects.create(
        rule=rule,
        target="payments",
        firing_since=timezone.now(),
        summary="Breaker payments open for 6 min on 12 of 20 instances",
    )
    limiter = AlertRule.objects.create(
        environment=production, name="api", kind="limiter_rejecting", minutes=0, percent=5
    )
    AlertState.objects.create(rule=limiter, target="api", pending_since=timezone.now())
    client.force_login(viewer)
    page = client.get("/").content.decode()
    assert 'id="firing-alerts"' in page
    assert 'href="/e/production/live/#live-breaker-payments"' in page
    assert "Breaker payments open for 6 min on 12 of 20 instances" in page
    assert 'data-alert="production/api"' not in page  # pending is not firing

    client.force_login(cast.sam)  # a viewer of staging only
    assert 'id="firing-alerts"' not in client.get("/").content.decode()
