"""A policy's tags and owner team: validated, stored, edited in the form, audited, never
published to services."""

from __future__ import annotations

import pytest
import redis
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from controlplane.accounts.actors import Actor
from controlplane.audit.models import AuditEntry
from controlplane.policies.actions import do_create_policy, do_update_policy
from controlplane.policies.forms import PolicyForm
from controlplane.policies.models import (
    MAX_TAGS,
    Environment,
    Policy,
    PolicyVersion,
    check_tags,
    check_team,
)
from controlplane.protocol.documents import PolicyDocument
from controlplane.protocol.schema import PolicyError
from tests.policies.conftest import edit_form_data, form_data

pytestmark = pytest.mark.django_db(transaction=True)

EDIT = "/e/production/breaker/payments/edit/"


@pytest.fixture
def payments(production: Environment, system: Actor) -> Policy:
    return do_create_policy(
        production, "breaker", "payments", {}, system, tags=["payments"], team="Checkout"
    )


def test_tags_are_sorted_lower_case_slugs_without_repeats() -> None:
    assert check_tags(["tier-1", "Payments", "payments"]) == ["payments", "tier-1"]
    assert check_tags("tier-1, payments  eu") == ["eu", "payments", "tier-1"]
    assert check_tags([]) == []


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        (["tier 1"], "is not a tag"),
        (["-edge"], "is not a tag"),
        (["pay_ments"], "is not a tag"),
        (["x" * 51], "is not a tag"),
        ([f"t{i}" for i in range(MAX_TAGS + 1)], f"at most {MAX_TAGS} tags"),
        (5, "Enter a list of tags"),
        ([1, 2], "Enter a list of tags"),
    ],
)
def test_bad_tags_are_refused_naming_the_field(tags: object, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        check_tags(tags)
    assert list(caught.value.errors) == ["tags"]
    assert message in " ".join(caught.value.errors["tags"])


def test_a_team_is_one_line_within_its_bound() -> None:
    assert check_team("  Checkout  ") == "Checkout"
    for bad in ("a" * 101, "two\nlines", "nul\x00", 7):
        with pytest.raises(PolicyError) as caught:
            check_team(bad)
        assert list(caught.value.errors) == ["team"]


def test_created_with_tags_and_team_audited(payments: Policy) -> None:
    payments.refresh_from_db()
    assert (payments.tags, payments.team) == (["payments"], "Checkout")
    entry = AuditEntry.objects.get(action="policy.create", object_name="payments")
    assert entry.changes["tags"] == [[], ["payments"]]
    assert entry.changes["team"] == ["", "Checkout"]


def test_changing_only_tags_is_audited_but_is_no_new_version_and_not_published(
    payments: Policy, system: Actor, redis_client: redis.Redis
) -> None:
    published = redis_client.hget(payments.environment.keys().policies, payments.field)
    revision = Environment.objects.get().revision

    do_update_policy(payments, {}, system, "ownership", tags=["payments", "tier-1"], team="Pay")

    payments.refresh_from_db()
    assert (payments.tags, payments.team, payments.version) == (["payments", "tier-1"], "Pay", 1)
    assert PolicyVersion.objects.filter(policy=payments).count() == 1
    assert Environment.objects.get().revision == revision
    assert redis_client.hget(payments.environment.keys().policies, payments.field) == published
    assert published is not None
    assert "tags" not in (PolicyDocument.decode(published).spec or {})
    entry = AuditEntry.objects.filter(action="policy.update").get()
    assert entry.reason == "ownership"
    assert entry.changes == {
        "tags": [["payments"], ["payments", "tier-1"]],
        "team": ["Checkout", "Pay"],
    }


def test_an_update_without_tags_keeps_them(payments: Policy, system: Actor) -> None:
    do_update_policy(payments, {"open_for": 5}, system)
    payments.refresh_from_db()
    assert (payments.tags, payments.team, payments.version) == (["payments"], "Checkout", 2)


def test_bad_tags_change_nothing_even_with_a_good_spec_change(
    payments: Policy, system: Actor
) -> None:
    with pytest.raises(PolicyError) as caught:
        do_update_policy(payments, {"open_for": 5}, system, tags=["Not OK!"])
    assert "tags" in caught.value.errors
    payments.refresh_from_db()
    assert (payments.tags, payments.spec["open_for"], payments.version) == (["payments"], 60, 1)
    assert not AuditEntry.objects.filter(action="policy.update").exists()


def test_the_edit_form_shows_saves_and_previews_tags_and_team(
    client: Client, editor: User, payments: Policy
) -> None:
    client.force_login(editor)
    page = client.get(EDIT).content.decode()
    assert 'name="tags" value="payments"' in page and 'name="team" value="Checkout"' in page

    preview = client.post(EDIT, edit_form_data(payments, tags="payments, EU", team="Payments team"))
    assert preview.status_code == 200
    html = preview.content.decode()
    assert 'data-field="tags"' in html and "eu, payments" in html
    assert 'data-field="team"' in html
    payments.refresh_from_db()
    assert payments.tags == ["payments"]  # a preview saves nothing

    saved = client.post(EDIT, edit_form_data(payments, tags="payments, EU", action="save"))
    assert saved.status_code == 302
    payments.refresh_from_db()
    assert payments.tags == ["eu", "payments"]


def test_the_form_refuses_bad_tags_naming_the_field(
    client: Client, editor: User, payments: Policy
) -> None:
    client.force_login(editor)
    response = client.post(EDIT, edit_form_data(payments, tags="ok, not ok!", action="save"))
    assert response.status_code == 422
    assert 'data-error-for="tags"' in response.content.decode()
    payments.refresh_from_db()
    assert payments.tags == ["payments"]


def test_a_new_policy_takes_tags_and_team_from_theedit_form_data(
    client: Client, editor: User, production: Environment
) -> None:
    client.force_login(editor)
    data = form_data(
        PolicyForm("cache"), name="prices", tags="catalogue", team="Shop", action="save"
    )
    response = client.post("/e/production/cache/new/", data)
    assert response.status_code == 302
    created = Policy.objects.get(name="prices")
    assert (created.tags, created.team) == (["catalogue"], "Shop")


def test_the_policy_page_shows_tags_and_team_linking_to_the_filtered_list(
    client: Client, viewer: User, payments: Policy
) -> None:
    client.force_login(viewer)
    html = client.get("/e/production/breaker/payments/").content.decode()
    listed = reverse("dashboard")
    assert f'<a class="tag" href="{listed}?tag=payments">payments</a>' in html
    assert f'<a href="{listed}?team=Checkout">Checkout</a>' in html


def test_a_change_of_tags_announces_the_row_once_committed(
    production: Environment,
    payments: Policy,
    system: Actor,
    announced: list[tuple[str, str, bool]],
) -> None:
    do_update_policy(payments, {}, system, tags=["tier-1"])  # tags only: not published
    do_update_policy(payments, {}, system, tags=["tier-1"])  # no change: nothing to say
    assert announced == [("production", "breaker:payments", True)]  # after its commit
