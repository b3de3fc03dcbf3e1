"""An environment's rules for changes, set by admins on its settings page."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from hypothesis import given
from hypothesis import strategies as st

from controlplane.accounts.actors import Actor
from controlplane.audit.models import AuditEntry
from controlplane.policies.actions import do_create_policy
from controlplane.policies.environment_actions import do_update_environment
from controlplane.policies.models import Environment, Policy
from controlplane.protocol.schema import PolicyError
from tests.test_form_fuzz import FUZZ, assert_no_5xx, hostile

pytestmark = pytest.mark.django_db(transaction=True)

RULES = {
    "description": "Customer traffic",
    "require_reason": "on",
    "approvals_required": "2",
    "approver_role": "admin",
    "reason": "SOC 2",
}


def _fresh(environment: Environment) -> Environment:
    return Environment.objects.get(pk=environment.pk)


def test_an_admin_sets_the_rules_and_they_are_audited(
    client: Client, admin: User, production: Environment
) -> None:
    client.force_login(admin)

    response = client.post("/e/production/settings/", RULES)

    assert response.status_code == 302 and response["Location"] == "/e/production/settings/"
    saved = _fresh(production)
    assert (saved.require_reason, saved.approvals_required, saved.approver_role) == (
        True,
        2,
        "admin",
    )
    entry = AuditEntry.objects.get(action="environment.update")
    assert (entry.actor_name, entry.environment, entry.reason) == ("adam", "production", "SOC 2")
    assert entry.changes == {
        "description": ["", "Customer traffic"],
        "require_reason": [False, True],
        "approvals_required": [0, 2],
        "approver_role": ["editor", "admin"],
    }
    summary = "Changes need 2 approvals (by an admin); a reason is required."
    assert summary in client.get("/e/production/settings/").content.decode()
    assert summary in client.get("/policies/").content.decode()


def test_saving_the_same_rules_records_nothing(
    client: Client, admin: User, production: Environment
) -> None:
    client.force_login(admin)
    same = {"description": "", "approvals_required": "0", "approver_role": "editor"}
    assert client.post("/e/production/settings/", same).status_code == 302
    assert not AuditEntry.objects.filter(action="environment.update").exists()


def test_a_required_reason_refuses_a_policy_change_without_one(
    production: Environment, system: Actor
) -> None:
    do_update_environment(production, system, require_reason=True)

    with pytest.raises(PolicyError) as refused:
        do_create_policy(_fresh(production), "cache", "sessions", {"ttl": 60}, system)

    assert list(refused.value.errors) == ["reason"]
    assert not Policy.objects.exists()
    do_create_policy(_fresh(production), "cache", "sessions", {"ttl": 60}, system, "new cache")
    assert Policy.objects.count() == 1


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"approvals_required": 11}, "approvals_required"),
        ({"approvals_required": -1}, "approvals_required"),
        ({"approvals_required": True}, "approvals_required"),
        ({"approver_role": "viewer"}, "approver_role"),
        ({"require_reason": "yes"}, "require_reason"),
        ({"description": "x" * 301}, "description"),
        ({"revision": 99}, "revision"),
    ],
)
def test_a_bad_rule_is_refused_naming_its_field(
    production: Environment, system: Actor, changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(PolicyError) as refused:
        do_update_environment(production, system, **changes)
    assert list(refused.value.errors) == [field]
    assert not AuditEntry.objects.filter(action="environment.update").exists()


def test_the_page_shows_a_bad_value_beside_its_field(
    client: Client, admin: User, production: Environment
) -> None:
    client.force_login(admin)
    response = client.post("/e/production/settings/", {**RULES, "approvals_required": "11"})
    assert response.status_code == 422
    assert 'data-error-for="approvals_required"' in response.content.decode()
    assert _fresh(production).approvals_required == 0


@pytest.mark.parametrize("method", ["get", "post"])
def test_only_admins_open_the_settings(
    client: Client, editor: User, production: Environment, method: str
) -> None:
    client.force_login(editor)
    assert getattr(client, method)("/e/production/settings/", RULES).status_code == 403
    assert not _fresh(production).require_reason


def test_the_settings_link_is_offered_to_admins_only(
    client: Client, admin: User, editor: User, production: Environment
) -> None:
    client.force_login(editor)
    assert "/e/production/settings/" not in client.get("/policies/").content.decode()
    client.force_login(admin)
    assert "/e/production/settings/" in client.get("/policies/").content.decode()


def test_the_settings_form_answers_no_5xx_whatever_is_posted(
    client: Client, admin: User, production: Environment
) -> None:
    client.raise_request_exception = False
    client.force_login(admin)

    @FUZZ
    @given(
        st.fixed_dictionaries(
            {},
            optional={
                "description": hostile,
                "require_reason": hostile,
                "approvals_required": st.one_of(st.integers(-2, 12).map(str), hostile),
                "approver_role": st.one_of(st.sampled_from(["editor", "admin"]), hostile),
                "reason": hostile,
            },
        )
    )
    def post(data: dict[str, Any]) -> None:
        assert_no_5xx(client, "post", "/e/production/settings/", data)

    post()
