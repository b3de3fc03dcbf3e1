"""Change requests in the pages: guarded saves propose, the queue, the request, its review."""

from __future__ import annotations

import io
from datetime import timedelta
from typing import Any

import pytest
import redis
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from controlplane.accounts.actors import Actor
from controlplane.accounts.models import RoleGrant
from controlplane.accounts.roles import Role
from controlplane.live.models import DiscoveredName
from controlplane.policies.actions import do_create_environment, do_create_policy, do_update_policy
from controlplane.policies.models import ChangeRequest, Environment, Policy
from controlplane.policies.request_views import parse_apply_at
from controlplane.policies.requests import Proposal, open_request
from controlplane.protocol.documents import PolicyDocument
from controlplane.protocol.schema import PolicyError, validate_spec
from tests.conftest import make_user
from tests.policies.conftest import edit_form_data

pytestmark = pytest.mark.django_db(transaction=True)

EDIT = "/e/production/rate_limit/api/edit/"
Status = ChangeRequest.Status


def _published_limit(client: redis.Redis, policy: Policy) -> int:
    raw = client.hget(policy.environment.keys().policies, policy.field)
    assert raw is not None
    return int(PolicyDocument.decode(raw).spec["limit"])


def _propose(client: Client, policy: Policy, limit: str = "250") -> ChangeRequest:
    response = client.post(
        EDIT, edit_form_data(policy, limit=limit, action="save", reason="sale traffic"), follow=True
    )
    assert response.status_code == 200
    return ChangeRequest.objects.get()


def _messages(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_a_guarded_form_says_saving_proposes_a_request(
    client: Client, editor: User, api: Policy
) -> None:
    client.force_login(editor)
    response = client.post(EDIT, edit_form_data(api, limit="250"))  # the preview
    html = response.content.decode()
    assert (
        "Changes in production need 1 approval by an editor: saving proposes a change request"
        in html
    )
    assert ">Propose change</button>" in html


def test_an_unguarded_form_saves_as_before(
    client: Client, editor: User, production: Environment, system: Actor
) -> None:
    api = do_create_policy(production, "rate_limit", "api", {"limit": 100}, system)
    client.force_login(editor)
    html = client.post(EDIT, edit_form_data(api, limit="250")).content.decode()
    assert "data-guarded-notice" not in html
    assert ">Save</button>" in html


def test_a_guarded_edit_opens_a_request_and_changes_nothing(
    client: Client, editor: User, api: Policy, redis_client: redis.Redis
) -> None:
    client.force_login(editor)
    response = client.post(
        EDIT, edit_form_data(api, limit="250", action="save", reason="sale traffic")
    )
    opened = ChangeRequest.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/requests/{opened.pk}/"
    page = client.get(response["Location"])
    assert f"Your change waits for 1 approval: change request #{opened.pk}." in _messages(page)
    assert (opened.author, opened.reason, opened.status) == (editor, "sale traffic", Status.OPEN)
    api.refresh_from_db()
    assert (api.version, api.spec["limit"]) == (1, 100)
    assert _published_limit(redis_client, api) == 100


def test_a_guarded_edit_needs_a_reason(client: Client, editor: User, api: Policy) -> None:
    client.force_login(editor)
    response = client.post(EDIT, edit_form_data(api, limit="250", action="save", reason=""))
    assert response.status_code == 422
    assert 'data-error-for="reason"' in response.content.decode()
    assert not ChangeRequest.objects.exists()


def test_a_guarded_create_opens_a_request(
    client: Client, editor: User, guarded: Environment
) -> None:
    client.force_login(editor)
    data = {
        **edit_form_data(
            Policy(kind="rate_limit", spec=validate_spec("rate_limit", {"limit": 100})),
            action="save",
            reason="new endpoint",
        ),
        "name": "search",
    }
    data.pop("expected_version")
    response = client.post("/e/production/rate_limit/new/", data)
    opened = ChangeRequest.objects.get()
    assert response["Location"] == f"/requests/{opened.pk}/"
    assert [(i.op, i.name) for i in opened.items.all()] == [("create", "search")]
    assert not Policy.objects.filter(name="search").exists()


def test_queue_and_detail_show_the_request(
    client: Client, editor: User, bob: User, api: Policy
) -> None:
    client.force_login(editor)
    opened = _propose(client, api)
    client.force_login(bob)
    queue = client.get("/requests/").content.decode()
    assert f'<tr data-request="{opened.pk}" data-status="open">' in queue
    assert "Change rate limiter api" in queue
    assert "<td data-approvals>0/1</td>" in queue
    detail = client.get(f"/requests/{opened.pk}/").content.decode()
    assert '<tr data-field="limit"><th>Limit</th><td class="old">100 requests</td>' in detail
    assert '<td class="new">250 requests</td>' in detail
    assert "sale traffic" in detail
    assert 'name="action" value="approve"' in detail


def test_queue_lists_pending_before_closed_and_filters(
    client: Client, editor: User, api: Policy, system: Actor
) -> None:
    first = open_request(api.environment, [Proposal("delete", "rate_limit", "api")], system, "a")
    second = open_request(api.environment, [Proposal("delete", "rate_limit", "api")], system, "b")
    first.status = Status.WITHDRAWN
    first.save()
    client.force_login(editor)
    html = client.get("/requests/").content.decode()
    assert html.index(f'data-request="{second.pk}"') < html.index(f'data-request="{first.pk}"')
    only_withdrawn = client.get("/requests/?status=withdrawn").content.decode()
    assert f'data-request="{first.pk}"' in only_withdrawn
    assert f'data-request="{second.pk}"' not in only_withdrawn
    elsewhere = client.get("/requests/?environment=staging").content.decode()
    assert 'data-request="' in elsewhere  # an environment not viewable filters nothing out


def test_approval_by_another_editor_applies(
    client: Client, editor: User, bob: User, api: Policy, redis_client: redis.Redis
) -> None:
    client.force_login(editor)
    opened = _propose(client, api)
    client.force_login(bob)
    response = client.post(
        f"/requests/{opened.pk}/act/", {"action": "approve", "comment": "looks right"}, follow=True
    )
    assert f"Approved: change request #{opened.pk} is applied." in _messages(response)
    assert "looks right" in response.content.decode()
    api.refresh_from_db()
    assert (api.version, api.spec["limit"]) == (2, 250)
    assert _published_limit(redis_client, api) == 250
    assert api.versions.get(version=2).author_name == "erin"


def test_the_author_cannot_approve(client: Client, editor: User, api: Policy) -> None:
    client.force_login(editor)
    opened = _propose(client, api)
    detail = client.get(f"/requests/{opened.pk}/").content.decode()
    assert "You cannot approve your own change request" in detail
    response = client.post(f"/requests/{opened.pk}/act/", {"action": "approve"}, follow=True)
    assert _messages(response) == [
        "Review: Nobody reviews their own change request. Nothing was changed."
    ]
    opened.refresh_from_db()
    api.refresh_from_db()
    assert (opened.status, opened.reviews.count(), api.version) == (Status.OPEN, 0, 1)


def test_a_viewer_with_editor_rights_elsewhere_cannot_review(
    client: Client, api: Policy, editor: User, system: Actor
) -> None:
    staging = do_create_environment("staging", system)
    viewer = make_user("vic", Role.VIEWER)
    RoleGrant.objects.create(user=viewer, environment=staging, role=Role.EDITOR)
    client.force_login(editor)
    opened = _propose(client, api)
    client.force_login(viewer)
    assert 'value="approve"' not in client.get(f"/requests/{opened.pk}/").content.decode()
    assert client.post(f"/requests/{opened.pk}/act/", {"action": "approve"}).status_code == 403


def test_reject_needs_a_comment(client: Client, editor: User, bob: User, api: Policy) -> None:
    client.force_login(editor)
    opened = _propose(client, api)
    client.force_login(bob)
    response = client.post(f"/requests/{opened.pk}/act/", {"action": "reject"}, follow=True)
    assert _messages(response) == [
        "Comment: Say why it is rejected: its author reads it. Nothing was changed."
    ]
    opened.refresh_from_db()
    assert opened.status == Status.OPEN
    client.post(f"/requests/{opened.pk}/act/", {"action": "reject", "comment": "too high"})
    opened.refresh_from_db()
    api.refresh_from_db()
    assert (opened.status, opened.closed_by_name, api.version) == (Status.REJECTED, "bob", 1)


def test_the_author_withdraws(client: Client, editor: User, bob: User, api: Policy) -> None:
    client.force_login(editor)
    opened = _propose(client, api)
    client.force_login(bob)
    client.post(f"/requests/{opened.pk}/act/", {"action": "withdraw"})
    opened.refresh_from_db()
    assert opened.status == Status.OPEN  # not theirs
    client.force_login(editor)
    response = client.post(
        f"/requests/{opened.pk}/act/", {"action": "withdraw", "comment": "not now"}, follow=True
    )
    assert f"Withdrew change request #{opened.pk}: nothing of it applies." in _messages(response)
    opened.refresh_from_db()
    assert opened.status == Status.WITHDRAWN


def test_the_author_plans_it_for_a_time_in_their_zone(
    client: Client, editor: User, bob: User, api: Policy
) -> None:
    client.force_login(editor)
    opened = _propose(client, api)
    local = (timezone.now() + timedelta(days=1)).astimezone(
        timezone.get_fixed_timezone(120)
    )  # a browser two hours east of UTC
    form = {"action": "schedule", "apply_at_offset": "120"}
    planned = client.post(
        f"/requests/{opened.pk}/act/",
        {**form, "apply_at": local.strftime("%Y-%m-%dT%H:%M")},
        follow=True,
    )
    assert _messages(planned) == ["Planned for the time chosen."]
    opened.refresh_from_db()
    assert opened.apply_at == local.replace(second=0, microsecond=0)
    past = client.post(
        f"/requests/{opened.pk}/act/", {**form, "apply_at": "2020-01-01T09:00"}, follow=True
    )
    assert _messages(past) == [
        "Apply at: Choose a time in the future (or none: at once). Nothing was changed."
    ]
    client.force_login(bob)  # approved, but planned: it waits for its time
    client.post(f"/requests/{opened.pk}/act/", {"action": "approve"})
    opened.refresh_from_db()
    api.refresh_from_db()
    assert (opened.status, api.version) == (Status.APPROVED, 1)


def test_apply_at_is_read_at_the_browsers_offset() -> None:
    planned = parse_apply_at("2030-06-01T09:00", "-300")
    assert planned is not None
    assert planned.isoformat() == "2030-06-01T09:00:00-05:00"
    assert parse_apply_at("", "") is None
    with pytest.raises(PolicyError) as refused:
        parse_apply_at("tomorrow", "0")
    assert list(refused.value.errors) == ["apply_at"]


def test_a_stale_request_shows_three_ways_and_rebase_lets_it_apply(
    client: Client, editor: User, bob: User, api: Policy, system: Actor
) -> None:
    client.force_login(editor)
    opened = _propose(client, api)
    do_update_policy(api, {"limit": 100, "period": 30}, system, "someone else")
    client.force_login(bob)
    response = client.post(f"/requests/{opened.pk}/act/", {"action": "approve"}, follow=True)
    assert _messages(response)[0].startswith("Approved, but it cannot apply yet. Needs a rebase")
    html = response.content.decode()
    assert "data-three-way" in html
    period = html[html.index('<tr data-field="period">') :]
    period = " ".join(period[: period.index("</tr>")].split())
    assert '<td class="base">60 s</td>' in period
    assert '<td class="theirs changed">30 s</td>' in period
    assert '<td class="mine">60 s <span class="muted">(unchanged)</span></td>' in period
    assert "needs rebase" in client.get("/requests/").content.decode()
    client.post(f"/requests/{opened.pk}/act/", {"action": "rebase"})
    opened.refresh_from_db()
    assert (opened.status, opened.blocked_reason) == (Status.OPEN, "")
    assert "dismissed by a rebase" in client.get(f"/requests/{opened.pk}/").content.decode()
    client.post(f"/requests/{opened.pk}/act/", {"action": "approve"})
    api.refresh_from_db()
    assert (api.spec["limit"], api.spec["period"]) == (250, 30)


def test_a_guarded_delete_and_restore_open_requests(
    client: Client, editor: User, api: Policy, system: Actor
) -> None:
    do_update_policy(api, {"limit": 120}, system, "v2")
    client.force_login(editor)
    page = client.get("/e/production/rate_limit/api/delete/").content.decode()
    assert "saving proposes a change request" in page
    assert ">Propose change</button>" in page
    deleted = client.post(
        "/e/production/rate_limit/api/delete/", {"reason": "unused", "base_version": "2"}
    )
    restored = client.post(
        "/e/production/rate_limit/api/versions/1/restore/",
        {"reason": "back to 100", "base_version": "2"},
    )
    delete, restore = ChangeRequest.objects.order_by("pk")
    assert deleted["Location"] == f"/requests/{delete.pk}/"
    assert restored["Location"] == f"/requests/{restore.pk}/"
    assert [(i.op, i.base_version) for i in delete.items.all()] == [("delete", 2)]
    assert [(i.op, i.rollback_to) for i in restore.items.all()] == [("rollback", 1)]
    api.refresh_from_db()
    assert (api.version, api.deleted) == (2, False)


def test_a_guarded_delete_reviewed_against_an_older_version_opens_nothing(
    client: Client, editor: User, api: Policy, system: Actor
) -> None:
    do_update_policy(api, {"limit": 120}, system, "v2")
    client.force_login(editor)
    response = client.post(
        "/e/production/rate_limit/api/delete/", {"reason": "unused", "base_version": "1"}
    )
    assert response.status_code == 409
    assert 'data-error="base_version"' in response.content.decode()
    assert not ChangeRequest.objects.exists()


def test_a_guarded_import_opens_one_request(
    client: Client, editor: User, api: Policy, guarded: Environment
) -> None:
    document = (
        "version: 1\npolicies:\n  rate_limit:\n    api: {limit: 500, period: 60}\n"
        "    search: {limit: 5, period: 1}\n"
    )
    client.force_login(editor)
    preview = client.post("/e/production/import/", {"text": document, "action": "preview"})
    assert ">Propose change</button>" in preview.content.decode()
    response = client.post(
        "/e/production/import/", {"text": document, "action": "apply", "reason": "sync"}
    )
    opened = ChangeRequest.objects.get()
    assert response["Location"] == f"/requests/{opened.pk}/"
    assert sorted((i.op, i.name) for i in opened.items.all()) == [
        ("create", "search"),
        ("update", "api"),
    ]
    assert guarded.policies.count() == 1


def test_the_import_command_opens_one_request_in_a_guarded_environment(
    api: Policy, tmp_path: object
) -> None:
    path = tmp_path / "production.yaml"  # type: ignore[operator]
    path.write_text(
        "version: 1\nenvironment: production\npolicies:\n  rate_limit:\n    api: {limit: 7}\n"
    )
    out = io.StringIO()
    call_command("import_policies", str(path), "--reason", "from git", "--actor", "ci", stdout=out)
    opened = ChangeRequest.objects.get()
    assert (opened.author_name, opened.reason) == ("ci", "from git")
    assert f"Opened change request #{opened.pk}" in out.getvalue()
    assert f"/requests/{opened.pk}/" in out.getvalue()
    api.refresh_from_db()
    assert api.spec["limit"] == 100


def test_adopting_in_a_guarded_environment_opens_a_request(
    client: Client, editor: User, guarded: Environment
) -> None:
    found = DiscoveredName.objects.create(
        environment=guarded,
        kind="rate_limit",
        name="found",
        defaults={"limit": 10, "period": 1},
        last_seen=timezone.now(),
    )
    client.force_login(editor)
    response = client.post(f"/e/production/discovered/{found.pk}/adopt/")
    opened = ChangeRequest.objects.get()
    assert response["Location"] == f"/requests/{opened.pk}/"
    assert [(i.op, i.name) for i in opened.items.all()] == [("create", "found")]
    assert not guarded.policies.filter(name="found").exists()


def test_the_nav_counts_the_requests_one_may_review(
    client: Client, editor: User, bob: User, viewer: User, api: Policy
) -> None:
    client.force_login(editor)
    _propose(client, api)
    assert "Requests</a>" in client.get("/requests/").content.decode()  # own: not counted
    client.force_login(bob)
    assert "Requests (1)</a>" in client.get("/requests/").content.decode()
    client.force_login(viewer)
    assert "Requests</a>" in client.get("/requests/").content.decode()


@pytest.mark.parametrize("who", ["outsider", "viewer"])
def test_outsiders_see_nothing_and_viewers_cannot_act(
    request: pytest.FixtureRequest, client: Client, editor: User, api: Policy, who: str
) -> None:
    client.force_login(editor)
    opened = _propose(client, api)
    client.force_login(request.getfixturevalue(who))
    expected = 403 if who == "outsider" else 200
    assert client.get("/requests/").status_code == expected
    assert client.get(f"/requests/{opened.pk}/").status_code == expected
    assert client.post(f"/requests/{opened.pk}/act/", {"action": "approve"}).status_code == 403
    opened.refresh_from_db()
    assert opened.status == Status.OPEN


def test_an_override_in_a_guarded_environment_is_immediate_and_shown_first(
    client: Client, operator: User, viewer: User, api: Policy
) -> None:
    client.force_login(operator)
    client.post(
        "/e/production/override/",
        {"kind": "rate_limit", "name": "api", "action": "block_all", "reason": "abuse"},
    )
    assert not ChangeRequest.objects.exists()
    client.force_login(viewer)
    html = client.get("/e/production/live/").content.decode()
    banner = html[html.index("data-overrides-in-force") : html.index("</section>")]
    assert "1 override in force" in banner
    assert "overrides never wait for approval" in banner
    assert 'data-override="rate_limit:api"' in banner
    assert "olga" in banner and "abuse" in banner and "until lifted" in banner


def test_the_audit_log_shows_every_step_of_a_request_by_its_label(
    client: Client, editor: User, bob: User, api: Policy, system: Actor
) -> None:
    client.force_login(editor)
    document = (
        "version: 1\npolicies:\n  rate_limit:\n    api: {limit: 500, period: 60}\n"
        "    search: {limit: 5, period: 1}\n"
    )
    client.post("/e/production/import/", {"text": document, "action": "apply", "reason": "sync"})
    opened = ChangeRequest.objects.get()
    client.post(
        f"/requests/{opened.pk}/act/", {"action": "schedule", "apply_at": "2999-01-01T09:00"}
    )
    do_update_policy(api, {"limit": 100, "period": 30}, system, "someone else")
    client.force_login(bob)
    client.post(f"/requests/{opened.pk}/act/", {"action": "approve"})
    client.post(f"/requests/{opened.pk}/act/", {"action": "rebase"})
    response = client.get("/audit/?action=change_request")
    html = response.content.decode()
    assert response.status_code == 200
    for label in (
        "Change proposed",
        "Change request planned",
        "Change request approved by a reviewer",
        "Change request fully approved",
        "Change request rebased",
    ):
        assert f">{label}</span>" in html, label
