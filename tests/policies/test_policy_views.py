from __future__ import annotations

import pytest
import redis
from django.contrib.auth.models import User
from django.test import Client

from controlplane.accounts.actors import Actor
from controlplane.audit.models import AuditEntry
from controlplane.policies.actions import do_create_policy, do_update_policy
from controlplane.policies.models import Environment, Policy
from controlplane.protocol.documents import PolicyDocument

pytestmark = pytest.mark.django_db(transaction=True)

EDIT = "/e/production/rate_limit/api/edit/"


@pytest.fixture
def api(production: Environment, system: Actor) -> Policy:
    return do_create_policy(
        production, "rate_limit", "api", {"limit": 100, "period": 60}, system, "initial"
    )


def _form(policy: Policy, **changes: str) -> dict[str, str]:
    data = {
        "algorithm": "token_bucket",
        "limit": "100",
        "period": "60",
        "burst": "100",
        "key": "user",
        "custom_key": "",
        "on_redis_error": "local",
        "mode": "enforce",
        "expected_version": str(policy.version),
    }
    data.update(changes)
    return data


def test_preview_shows_the_diff_and_saves_nothing(
    client: Client, editor: User, api: Policy
) -> None:
    client.force_login(editor)
    response = client.post(EDIT, _form(api, limit="250"))
    html = response.content.decode()
    assert response.status_code == 200
    assert "What will change" in html
    assert '<tr data-field="limit"><th>Limit</th><td class="old">100 requests</td>' in html
    assert '<td class="new">250 requests</td>' in html
    api.refresh_from_db()
    assert api.version == 1


def test_save_publishes_and_audits_with_the_reason(
    client: Client, editor: User, api: Policy, redis_client: redis.Redis
) -> None:
    client.force_login(editor)
    response = client.post(EDIT, _form(api, limit="250", action="save", reason="black friday"))
    assert response.status_code == 302
    api.refresh_from_db()
    assert (api.version, api.spec["limit"]) == (2, 250)
    stored = PolicyDocument.decode(redis_client.hget(api.environment.keys().policies, api.field))
    assert stored.spec["limit"] == 250
    entry = AuditEntry.objects.get(action="policy.update")
    assert (entry.actor_name, entry.reason, entry.changes) == (
        "erin",
        "black friday",
        {"limit": [100, 250]},
    )


def test_error_is_shown_next_to_its_field_and_nothing_changes(
    client: Client, editor: User, api: Policy
) -> None:
    client.force_login(editor)
    response = client.post(EDIT, _form(api, period="soon", action="save"))
    html = response.content.decode()
    assert response.status_code == 422
    assert '<p class="error" data-error-for="period">' in html
    api.refresh_from_db()
    assert api.version == 1


def test_htmx_validation_returns_only_the_form(client: Client, editor: User, api: Policy) -> None:
    client.force_login(editor)
    response = client.post(EDIT, _form(api, limit="0"), headers={"HX-Request": "true"})
    html = response.content.decode()
    assert html.lstrip().startswith('<form method="post" id="policy-form"')
    assert 'data-error-for="limit"' in html
    assert "HX-Request" in response["Vary"]


def test_second_editor_with_a_stale_form_is_refused_and_shown_the_first_change(
    client: Client, editor: User, api: Policy, system: Actor
) -> None:
    client.force_login(editor)
    stale_form = _form(api, limit="300", action="save")
    do_update_policy(api, {"limit": 120}, Actor.system("bob"), "first one in")

    response = client.post(EDIT, stale_form)

    html = response.content.decode()
    assert response.status_code == 409
    assert "bob saved version 2" in html
    theirs = html[html.index('data-conflict="theirs"') : html.index('data-conflict="yours"')]
    # Both changed the limit: base, theirs and yours side by side, yours kept.
    assert '<td class="base">100 requests</td>' in theirs
    assert '<td class="theirs changed">120 requests</td>' in theirs
    assert "Conflict: both changed it, yours is kept" in theirs
    # Their work is kept: what saving it now would do is said against bob's version.
    yours = html[html.index('data-conflict="yours"') :]
    assert (
        '<td class="old">120 requests</td><td class="arrow">→</td><td class="new">300 requests</td>'
        in yours
    )
    assert 'name="limit" value="300"' in html
    assert 'name="expected_version" value="2"' in html
    api.refresh_from_db()
    assert (api.version, api.spec["limit"]) == (2, 120)

    # Saved again, knowingly: on top of bob's version.
    again = client.post(EDIT, {**stale_form, "expected_version": "2", "reason": "300 after all"})
    assert again.status_code == 302
    api.refresh_from_db()
    assert (api.version, api.spec["limit"]) == (3, 300)


def test_create_a_policy_through_the_form(
    client: Client, editor: User, production: Environment
) -> None:
    client.force_login(editor)
    response = client.post(
        "/e/production/cache/new/",
        {
            "name": "prices",
            "ttl": "30s",
            "stale_ttl": "0",
            "local_size": "0",
            "generation": "0",
            "enabled": "on",
            "action": "save",
        },
    )
    assert response.status_code == 302
    policy = Policy.objects.get(name="prices")
    assert (policy.spec["ttl"], policy.spec["enabled"]) == (30.0, True)


def test_create_refuses_a_bad_name(client: Client, editor: User, production: Environment) -> None:
    client.force_login(editor)
    response = client.post(
        "/e/production/cache/new/",
        {
            "name": "bad name",
            "ttl": "30",
            "stale_ttl": "0",
            "local_size": "0",
            "generation": "0",
            "action": "save",
        },
    )
    assert response.status_code == 422
    assert 'data-error-for="name"' in response.content.decode()
    assert not Policy.objects.filter(kind="cache").exists()


def test_secret_config_value_is_never_shown_after_saving(
    client: Client, editor: User, production: Environment, system: Actor
) -> None:
    do_create_policy(
        production, "config", "api.key", {"value": "s3cr3t-value", "secret": True}, system
    )
    client.force_login(editor)
    for url in (
        "/e/production/config/api.key/",
        "/e/production/config/api.key/edit/",
        "/e/production/config/api.key/compare/?a=1&b=1",
        "/audit/",
        "/audit/export.json",
    ):
        response = client.get(url)
        assert response.status_code == 200, url  # an error page would hide nothing
        body = b"".join(response.streaming_content) if url.endswith(".json") else response.content
        assert b"s3cr3t-value" not in body, url


def test_leaving_a_secret_blank_keeps_it(
    client: Client, editor: User, production: Environment, system: Actor
) -> None:
    policy = do_create_policy(
        production, "config", "api.key", {"value": "s3cr3t", "secret": True}, system
    )
    client.force_login(editor)
    response = client.post(
        "/e/production/config/api.key/edit/",
        {
            "value_type": "string",
            "value": "",
            "description": "rotated note",
            "secret": "on",
            "expected_version": "1",
            "action": "save",
        },
    )
    assert response.status_code == 302
    policy.refresh_from_db()
    assert (policy.spec["value"], policy.spec["description"]) == ("s3cr3t", "rotated note")


def test_history_compare_and_restore(
    client: Client, editor: User, api: Policy, system: Actor
) -> None:
    do_update_policy(api, {"limit": 200}, system, "bump")
    do_update_policy(api, {"limit": 300}, system, "bump again")
    client.force_login(editor)

    detail = client.get("/e/production/rate_limit/api/").content.decode()
    assert detail.count('<tr data-version="') == 3
    compare = client.get("/e/production/rate_limit/api/compare/?a=1&b=3").content.decode()
    assert '<td class="old">100 requests</td>' in compare
    assert '<td class="new">300 requests</td>' in compare

    assert 'href="/e/production/rate_limit/api/versions/1/restore/">Restore v1' in compare


RESTORE = "/e/production/rate_limit/api/versions/1/restore/"


def test_restore_shows_what_it_changes_and_needs_a_reason_and_a_confirm(
    client: Client, editor: User, api: Policy, system: Actor
) -> None:
    do_update_policy(api, {"limit": 300}, system, "bump")
    client.force_login(editor)

    # One click shows what restoring would do, against what is live now; nothing changes.
    page = client.get(RESTORE)
    html = page.content.decode()
    assert page.status_code == 200
    assert (
        '<td class="old">300 requests</td>' in html and '<td class="new">100 requests</td>' in html
    )
    assert 'name="base_version" value="2"' in html
    assert "Restore v1 in production" in html

    # Without a reason: refused naming it, nothing restored.
    refused = client.post(RESTORE, {"base_version": "2", "reason": " "})
    assert refused.status_code == 422
    assert 'data-error="reason"' in refused.content.decode()
    api.refresh_from_db()
    assert (api.version, api.spec["limit"]) == (2, 300)

    response = client.post(RESTORE, {"base_version": "2", "reason": "300 overloads the API"})
    assert response.status_code == 302
    api.refresh_from_db()
    assert (api.version, api.spec["limit"]) == (3, 100)
    restored = api.versions.get(version=3)
    assert (restored.action, restored.reason) == ("rollback", "300 overloads the API")
    entry = AuditEntry.objects.get(action="policy.rollback")
    assert entry.reason == "300 overloads the API"


def test_a_restore_reviewed_against_an_older_version_changes_nothing(
    client: Client, editor: User, api: Policy, system: Actor
) -> None:
    do_update_policy(api, {"limit": 300}, system, "bump")
    client.force_login(editor)
    client.get(RESTORE)  # reviewed against v2
    do_update_policy(api, {"limit": 400}, system, "a colleague's change meanwhile")

    response = client.post(RESTORE, {"base_version": "2", "reason": "back to 100"})

    assert response.status_code == 409
    html = response.content.decode()
    assert "saved v3 meanwhile: nothing was changed" in html
    assert '<td class="old">400 requests</td>' in html  # the difference against v3 now
    assert 'name="base_version" value="3"' in html
    api.refresh_from_db()
    assert (api.version, api.spec["limit"]) == (3, 400)
    assert not AuditEntry.objects.filter(action="policy.rollback").exists()


@pytest.mark.parametrize("version", ["2", "9"])
def test_only_an_earlier_version_can_be_restored(
    client: Client, editor: User, api: Policy, system: Actor, version: str
) -> None:
    do_update_policy(api, {"limit": 300}, system, "bump")  # v2 is what is live
    client.force_login(editor)
    path = f"/e/production/rate_limit/api/versions/{version}/restore/"
    assert client.get(path).status_code == 404
    assert client.post(path, {"base_version": "2", "reason": "x"}).status_code == 404


DELETE = "/e/production/rate_limit/api/delete/"


def test_delete_shows_what_it_drops_needs_a_reason_and_keeps_history(
    client: Client, editor: User, api: Policy
) -> None:
    client.force_login(editor)
    page = client.get(DELETE).content.decode()
    assert '<tr data-field="limit"><th>Limit</th><td class="old">100 requests</td>' in page
    assert "falls back to the defaults in its code" in page
    assert 'name="base_version" value="1"' in page

    refused = client.post(DELETE, {"base_version": "1"})
    assert refused.status_code == 422 and 'data-error="reason"' in refused.content.decode()
    api.refresh_from_db()
    assert not api.deleted

    response = client.post(DELETE, {"base_version": "1", "reason": "unused"})
    assert response.status_code == 302 and response["Location"] == "/policies/"
    deleted = Policy.objects.get(pk=api.pk)
    assert deleted.deleted and deleted.versions.count() == 2
    assert AuditEntry.objects.get(action="policy.delete").reason == "unused"


def test_a_delete_reviewed_against_an_older_version_changes_nothing(
    client: Client, editor: User, api: Policy, system: Actor
) -> None:
    client.force_login(editor)
    do_update_policy(api, {"limit": 400}, system, "a colleague's change meanwhile")
    response = client.post(DELETE, {"base_version": "1", "reason": "unused"})
    assert response.status_code == 409
    assert "saved v2 meanwhile: nothing was changed" in response.content.decode()
    api.refresh_from_db()
    assert not api.deleted


@pytest.mark.parametrize("value", ["[" * 5000 + "]" * 5000, "[" * 33 + "]" * 33])
def test_form_refuses_a_json_value_over_the_depth_limit_naming_it(
    client: Client, editor: User, production: Environment, value: str
) -> None:
    client.force_login(editor)
    response = client.post(
        "/e/production/config/new/",
        {"name": "deep", "value_type": "json", "value": value, "action": "save"},
    )
    assert response.status_code == 422
    html = response.content.decode()
    assert 'data-error-for="value"' in html and "nests deeper than 32 levels" in html
    assert not Policy.objects.filter(kind="config").exists()


def test_form_refuses_an_overlong_reason_naming_it(
    client: Client, editor: User, api: Policy
) -> None:
    client.force_login(editor)
    response = client.post(EDIT, {**_form(api, limit="7"), "reason": "x" * 1001, "action": "save"})
    assert response.status_code == 422
    assert 'data-error-for="reason"' in response.content.decode()
    api.refresh_from_db()
    assert api.spec["limit"] == 100


def test_delete_and_restore_refuse_an_overlong_reason(
    client: Client, editor: User, api: Policy, system: Actor
) -> None:
    do_update_policy(api, {"limit": 300}, system, "bump")
    client.force_login(editor)
    for path in (DELETE, RESTORE):
        response = client.post(path, {"base_version": "2", "reason": "x" * 1001})
        assert response.status_code == 422
        assert "Use at most 1000 characters" in response.content.decode()
    api.refresh_from_db()
    assert (api.version, api.deleted) == (2, False)
    assert not AuditEntry.objects.filter(action__in=["policy.delete", "policy.rollback"]).exists()


@pytest.mark.parametrize(
    "path",
    [
        "/e/production/rate_limit/api/compare/?a=1&b=" + "9" * 30,
        "/e/production/rate_limit/api/versions/" + "9" * 30 + "/restore/",
    ],
)
def test_versions_beyond_any_database_integer_are_not_found(
    client: Client, editor: User, api: Policy, path: str
) -> None:
    client.force_login(editor)
    method = client.post if path.endswith("restore/") else client.get
    assert method(path).status_code == 404


def test_environment_with_an_overlong_description_is_refused_naming_it(
    client: Client, admin: User, db: None
) -> None:
    client.force_login(admin)
    response = client.post(
        "/environments/new/", {"name": "staging", "description": "d" * 301}, follow=True
    )
    assert "Nothing was created. description: Use at most 300 characters" in (
        response.content.decode()
    )
    assert not Environment.objects.exists()
    client.post("/environments/new/", {"name": "staging", "description": "d" * 300})
    assert Environment.objects.get().description == "d" * 300
