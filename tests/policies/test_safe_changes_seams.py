"""Issue 15 tried across its parts: pages, API, roles and rules together, with the
cases where one part's answer meets another's assumption."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from controlplane.accounts.actions import do_create_token
from controlplane.accounts.actors import Actor
from controlplane.accounts.roles import Role
from controlplane.accounts.users import do_deactivate_user
from controlplane.audit.models import AuditEntry
from controlplane.policies.environment_actions import do_update_environment
from controlplane.policies.models import ChangeRequest, Policy
from controlplane.policies.requests import Proposal, apply_due_requests, open_request, review
from tests.conftest import make_user

pytestmark = pytest.mark.django_db(transaction=True)

Status = ChangeRequest.Status


def _open(policy: Policy, author: User, **extra: Any) -> ChangeRequest:
    """A request of ``author`` raising the policy's limit to 250."""
    change = Proposal("update", policy.kind, policy.name, {"limit": 250}, policy.version)
    return open_request(policy.environment, [change], Actor.of(author), "sale traffic", **extra)


def _messages(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_a_time_its_offset_moves_past_the_calendar_is_refused_and_the_request_still_opens(
    client: Client, editor: User, api: Policy
) -> None:
    # Stored, 9999-12-31 23:59 an hour west of UTC is the year 10000: every read failed.
    opened = _open(api, editor)
    client.force_login(editor)
    planned = client.post(
        f"/requests/{opened.pk}/act/",
        {"action": "schedule", "apply_at": "9999-12-31T23:59", "apply_at_offset": "-60"},
        follow=True,
    )
    assert _messages(planned) == ["Apply at: The time is out of range. Nothing was changed."]
    opened.refresh_from_db()
    assert opened.apply_at is None
    assert client.get(f"/requests/{opened.pk}/").status_code == 200
    assert client.get("/requests/").status_code == 200


def test_the_nav_does_not_count_a_request_one_approved_already(
    client: Client, editor: User, bob: User, api: Policy
) -> None:
    api.environment.approvals_required = 2
    api.environment.save()
    opened = _open(api, editor)
    client.force_login(bob)
    assert "Requests (1)</a>" in client.get("/requests/").content.decode()
    client.post(f"/requests/{opened.pk}/act/", {"action": "approve"})
    # Still open (1 of 2), but bob can do nothing more with it: it waits for others.
    assert "Requests</a>" in client.get("/requests/").content.decode()
    carol = make_user("carol", Role.EDITOR)
    client.force_login(carol)
    assert "Requests (1)</a>" in client.get("/requests/").content.decode()


def test_a_reviewer_stops_an_approved_planned_request_before_its_time(
    client: Client, editor: User, bob: User, api: Policy
) -> None:
    opened = _open(api, editor, apply_at=timezone.now() + timedelta(hours=1))
    opened = review(opened, Actor.of(bob), Role.EDITOR, "approve")
    assert opened.status == Status.APPROVED
    carol = make_user("carol", Role.EDITOR)
    client.force_login(carol)
    page = client.get(f"/requests/{opened.pk}/").content.decode()
    assert 'value="reject"' in page and 'value="approve"' not in page
    unexplained = client.post(f"/requests/{opened.pk}/act/", {"action": "reject"}, follow=True)
    assert _messages(unexplained) == [
        "Comment: Say why it is rejected: its author reads it. Nothing was changed."
    ]
    again = client.post(f"/requests/{opened.pk}/act/", {"action": "approve"}, follow=True)
    assert "no more reviews" in _messages(again)[0]
    stopped = client.post(
        f"/requests/{opened.pk}/act/", {"action": "reject", "comment": "not during the freeze"}
    )
    assert stopped.status_code == 302
    opened.refresh_from_db()
    assert (opened.status, opened.closed_by_name) == (Status.REJECTED, "carol")
    assert apply_due_requests(timezone.now() + timedelta(hours=2)) == []
    api.refresh_from_db()
    assert (api.version, api.spec["limit"]) == (1, 100)


def test_when_the_rule_is_lowered_an_approver_applies_a_request_with_enough_approvals(
    client: Client, editor: User, bob: User, admin: User, api: Policy
) -> None:
    environment = api.environment
    do_update_environment(environment, Actor.of(admin), approvals_required=2)
    opened = _open(api, editor)
    client.force_login(bob)
    client.post(f"/requests/{opened.pk}/act/", {"action": "approve"}, follow=True)
    twice = client.post(f"/requests/{opened.pk}/act/", {"action": "approve"}, follow=True)
    assert _messages(twice) == ["Review: You approved this request already. Nothing was changed."]
    # The rule is read at each approval: with one needed now, bob's approval is enough,
    # and in a team of two nobody else could ever approve it.
    do_update_environment(environment, Actor.of(admin), approvals_required=1)
    assert "data-approvals>1 of 1<" in client.get(f"/requests/{opened.pk}/").content.decode()
    applied = client.post(f"/requests/{opened.pk}/act/", {"action": "approve"}, follow=True)
    assert _messages(applied) == [f"Approved: change request #{opened.pk} is applied."]
    api.refresh_from_db()
    assert (api.version, api.spec["limit"]) == (2, 250)
    assert opened.reviews.count() == 1  # approving again added no second approval
    assert AuditEntry.objects.filter(action="change_request.approve").count() == 1


def test_a_request_in_an_environment_no_longer_guarded_still_needs_one_approval(
    client: Client, editor: User, bob: User, admin: User, api: Policy
) -> None:
    opened = _open(api, editor)
    do_update_environment(api.environment, Actor.of(admin), approvals_required=0)
    client.force_login(bob)
    page = client.get(f"/requests/{opened.pk}/").content.decode()
    assert "needs 1 approval by editors" in page and "data-approvals>0 of 1<" in page
    assert "data-approvals>0/1<" in client.get("/requests/").content.decode()
    client.post(f"/requests/{opened.pk}/act/", {"action": "approve"})
    opened.refresh_from_db()
    assert opened.status == Status.APPLIED


def test_a_proposed_restore_of_a_version_that_does_not_exist_names_the_field_the_call_sent(
    client: Client, editor: User, api: Policy
) -> None:
    _, secret = do_create_token("erin-ci", Role.EDITOR, Actor.of(editor))
    headers = {"Authorization": f"Bearer {secret}"}
    change = {"op": "rollback", "kind": "rate_limit", "name": "api", "rollback_to": 99}
    proposed = client.post(
        "/api/v1/environments/production/change-requests",
        {"changes": [change], "reason": "undo"},
        content_type="application/json",
        headers=headers,
    )
    assert proposed.status_code == 422
    assert list(proposed.json()["errors"]) == ["rollback_to"]
    restored = client.post(
        "/api/v1/environments/production/policies/rate_limit/api/rollback",
        {"version": 99, "reason": "undo"},
        content_type="application/json",
        headers=headers,
    )
    assert restored.status_code == 422
    assert list(restored.json()["errors"]) == ["version"]
    assert not ChangeRequest.objects.exists()


def test_a_deactivated_authors_request_stays_and_a_reviewer_decides_it(
    client: Client, editor: User, bob: User, admin: User, api: Policy
) -> None:
    _, secret = do_create_token("erin-ci", Role.EDITOR, Actor.of(editor))
    opened = _open(api, editor)
    do_deactivate_user(editor, Actor.of(admin), "left the team")
    withdrawn = client.post(
        f"/api/v1/change-requests/{opened.pk}/withdraw",
        {},
        content_type="application/json",
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert withdrawn.status_code == 401  # their tokens went with them
    client.force_login(bob)
    assert f"#{opened.pk}" in client.get("/requests/?status=pending").content.decode()
    client.post(f"/requests/{opened.pk}/act/", {"action": "approve"})
    opened.refresh_from_db()
    api.refresh_from_db()
    assert (opened.status, api.spec["limit"]) == (Status.APPLIED, 250)
    assert api.versions.get(version=2).author_name == "erin"
