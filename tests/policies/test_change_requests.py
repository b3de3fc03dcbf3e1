"""Change requests in a guarded environment: the actions, without pages or API."""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis
from django.contrib.auth.models import User
from django.utils import timezone

from controlplane.accounts.actors import Actor
from controlplane.accounts.roles import Role
from controlplane.audit.models import AuditEntry
from controlplane.policies.actions import do_create_policy, do_update_policy
from controlplane.policies.config_as_code import parse, plan_import
from controlplane.policies.models import ChangeRequest, Environment, Policy
from controlplane.policies.requests import (
    NeedsRebase,
    Proposal,
    apply_due_requests,
    apply_request,
    import_proposals,
    item_states,
    open_request,
    rebase,
    review,
    schedule,
    withdraw,
)
from controlplane.protocol.documents import PolicyDocument
from controlplane.protocol.schema import PolicyError
from tests.conftest import make_user

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def alice(editor: User) -> Actor:
    return Actor.of(editor)


@pytest.fixture
def bob() -> Actor:
    return Actor.of(make_user("bob", Role.EDITOR))


def _published_limit(client: redis.Redis, policy: Policy) -> int:
    raw = client.hget(policy.environment.keys().policies, policy.field)
    assert raw is not None
    return int(PolicyDocument.decode(raw).spec["limit"])


def _limit_change(policy: Policy, limit: int) -> Proposal:
    return Proposal("update", policy.kind, policy.name, {"limit": limit}, policy.version)


def test_a_change_waits_for_another_persons_approval_then_applies_as_its_author(
    api: Policy, alice: Actor, bob: Actor, redis_client: redis.Redis
) -> None:
    request = open_request(api.environment, [_limit_change(api, 250)], alice, "sale traffic")
    api.refresh_from_db()
    assert (api.version, api.spec["limit"]) == (1, 100)
    assert _published_limit(redis_client, api) == 100
    with pytest.raises(PolicyError) as refused:
        review(request, alice, Role.EDITOR, "approve")
    assert "own" in str(refused.value.errors["decision"])
    request = review(request, bob, Role.EDITOR, "approve", "ok")
    assert request.status == ChangeRequest.Status.APPLIED
    api.refresh_from_db()
    assert (api.version, api.spec["limit"]) == (2, 250)
    version = api.versions.get(version=2)
    assert version.author_name == alice.name
    assert f"change request #{request.pk}" in version.reason
    assert _published_limit(redis_client, api) == 250
    actions = list(
        AuditEntry.objects.filter(action__startswith="change_request.")
        .order_by("id")
        .values_list("action", "actor_name")
    )
    assert actions == [
        ("change_request.open", alice.name),
        ("change_request.approve", bob.name),
        ("change_request.approved", bob.name),
        ("change_request.apply", bob.name),
    ]
    opened = AuditEntry.objects.get(action="change_request.open")
    assert opened.changes["limit"] == [100, 250]


def test_reviewers_below_the_approver_role_and_repeat_approvals_are_refused(
    api: Policy, alice: Actor, bob: Actor
) -> None:
    api.environment.approvals_required = 2
    api.environment.approver_role = "admin"
    api.environment.save()
    request = open_request(api.environment, [_limit_change(api, 250)], alice, "why")
    with pytest.raises(PolicyError, match="admin role"):
        review(request, bob, Role.EDITOR, "approve")
    review(request, bob, Role.ADMIN, "approve")
    with pytest.raises(PolicyError, match="already"):
        review(request, bob, Role.ADMIN, "approve")
    request.refresh_from_db()
    assert request.status == ChangeRequest.Status.OPEN  # one of two approvals
    carol = Actor.of(make_user("carol", Role.ADMIN))
    assert review(request, carol, Role.ADMIN, "approve").status == ChangeRequest.Status.APPLIED


def test_a_rejection_needs_a_comment_and_closes_the_request(
    api: Policy, alice: Actor, bob: Actor
) -> None:
    request = open_request(api.environment, [_limit_change(api, 250)], alice, "why")
    with pytest.raises(PolicyError) as refused:
        review(request, bob, Role.EDITOR, "reject")
    assert "comment" in refused.value.errors
    request = review(request, bob, Role.EDITOR, "reject", "too high")
    assert request.status == ChangeRequest.Status.REJECTED
    with pytest.raises(PolicyError):
        review(request, Actor.of(make_user("carol", Role.EDITOR)), Role.EDITOR, "approve")
    api.refresh_from_db()
    assert api.version == 1


def test_only_the_author_withdraws(api: Policy, alice: Actor, bob: Actor) -> None:
    request = open_request(api.environment, [_limit_change(api, 250)], alice, "why")
    with pytest.raises(PolicyError, match="author"):
        withdraw(request, bob)
    assert withdraw(request, alice).status == ChangeRequest.Status.WITHDRAWN
    with pytest.raises(PolicyError):
        review(request, bob, Role.EDITOR, "approve")


def test_a_request_whose_base_moved_needs_a_rebase_that_keeps_both_changes(
    api: Policy, alice: Actor, bob: Actor, system: Actor
) -> None:
    request = open_request(api.environment, [_limit_change(api, 250)], alice, "why")
    do_update_policy(api, {"period": 30}, system, "someone else")
    with pytest.raises(PolicyError):
        apply_request(request, bob)  # not approved yet
    request = review(request, bob, Role.EDITOR, "approve")
    assert request.status == ChangeRequest.Status.APPROVED  # approved, could not apply
    assert "Needs a rebase" in request.blocked_reason
    with pytest.raises(NeedsRebase):
        apply_request(request, bob)
    api.refresh_from_db()
    assert (api.version, api.spec["limit"], api.spec["period"]) == (2, 100, 30)
    [state] = item_states(request)
    rows = {row.field: row for row in state.three_way()}
    assert rows["limit"].mine_changed and not rows["limit"].theirs_changed
    assert rows["period"].theirs_changed and not rows["period"].mine_changed
    request = rebase(request, alice, Role.EDITOR)
    assert request.status == ChangeRequest.Status.OPEN  # its approval was dismissed
    [item] = request.items.all()
    assert (item.base_version, item.spec["limit"], item.spec["period"]) == (2, 250, 30)
    request = review(request, bob, Role.EDITOR, "approve")
    assert request.status == ChangeRequest.Status.APPLIED
    api.refresh_from_db()
    assert (api.version, api.spec["limit"], api.spec["period"]) == (3, 250, 30)


def test_a_stale_proposal_is_refused_when_opened(api: Policy, alice: Actor, system: Actor) -> None:
    stale = _limit_change(api, 250)
    do_update_policy(api, {"period": 30}, system, "someone else")
    with pytest.raises(PolicyError) as refused:
        open_request(api.environment, [stale], alice, "why")
    assert "base_version" in refused.value.errors
    assert not ChangeRequest.objects.exists()


def test_bad_input_names_the_field_and_opens_nothing(api: Policy, alice: Actor) -> None:
    with pytest.raises(PolicyError) as refused:
        open_request(api.environment, [_limit_change(api, -5)], alice, "")
    assert {"limit", "reason"} <= set(refused.value.errors)
    past = timezone.now() - timedelta(minutes=1)
    with pytest.raises(PolicyError) as refused:
        open_request(api.environment, [_limit_change(api, 5)], alice, "why", apply_at=past)
    assert "apply_at" in refused.value.errors
    assert not ChangeRequest.objects.exists()


def test_a_planned_request_applies_when_due_with_the_same_checks(
    api: Policy, alice: Actor, bob: Actor
) -> None:
    at = timezone.now() + timedelta(hours=1)
    request = open_request(api.environment, [_limit_change(api, 250)], alice, "sale", apply_at=at)
    request = review(request, bob, Role.EDITOR, "approve")
    assert request.status == ChangeRequest.Status.APPROVED
    assert apply_due_requests(timezone.now()) == []
    [applied] = apply_due_requests(at + timedelta(seconds=1))
    assert applied.pk == request.pk
    api.refresh_from_db()
    assert api.spec["limit"] == 250
    assert AuditEntry.objects.get(action="change_request.apply").actor_name == "scheduler"


def test_a_due_request_whose_base_moved_stays_approved_and_says_why(
    api: Policy, alice: Actor, bob: Actor, system: Actor
) -> None:
    at = timezone.now() + timedelta(hours=1)
    request = open_request(api.environment, [_limit_change(api, 250)], alice, "sale", apply_at=at)
    review(request, bob, Role.EDITOR, "approve")
    do_update_policy(api, {"period": 30}, system, "someone else")
    assert apply_due_requests(at + timedelta(seconds=1)) == []
    assert apply_due_requests(at + timedelta(seconds=2)) == []  # not retried until rebased
    request.refresh_from_db()
    assert request.status == ChangeRequest.Status.APPROVED
    assert "api" in request.blocked_reason
    assert AuditEntry.objects.filter(action="change_request.blocked").count() == 1


def test_the_author_reschedules_and_a_cleared_time_applies_an_approved_request(
    api: Policy, alice: Actor, bob: Actor
) -> None:
    at = timezone.now() + timedelta(hours=1)
    request = open_request(api.environment, [_limit_change(api, 250)], alice, "sale", apply_at=at)
    review(request, bob, Role.EDITOR, "approve")
    with pytest.raises(PolicyError, match="author"):
        schedule(request, bob, None)
    assert schedule(request, alice, None).status == ChangeRequest.Status.APPLIED


def test_one_request_applies_several_policies_all_or_nothing(
    api: Policy, alice: Actor, bob: Actor, system: Actor
) -> None:
    other = do_create_policy(api.environment, "breaker", "payments", {}, system, "initial")
    proposals = [
        _limit_change(api, 250),
        Proposal("delete", "breaker", "payments", base_version=other.version),
        Proposal("create", "config", "banner", {"value": "sale"}),
    ]
    request = open_request(api.environment, proposals, alice, "sale setup")
    assert request.title == "3 changes to production"
    do_update_policy(other, {"mode": "observe"}, system, "moved")
    request = review(request, bob, Role.EDITOR, "approve")
    assert request.status == ChangeRequest.Status.APPROVED
    api.refresh_from_db()
    assert api.version == 1  # nothing of it applied
    assert not Policy.objects.filter(name="banner").exists()
    request = rebase(request, alice, Role.EDITOR)
    request = review(request, bob, Role.EDITOR, "approve")
    assert request.status == ChangeRequest.Status.APPLIED
    assert Policy.objects.get(name="payments").deleted
    assert Policy.objects.get(name="banner").spec["value"] == "sale"


def test_a_required_reason_is_enforced_on_direct_changes(
    production: Environment, system: Actor
) -> None:
    production.require_reason = True
    production.save()
    with pytest.raises(PolicyError) as refused:
        do_create_policy(production, "breaker", "payments", {}, system, "")
    assert "reason" in refused.value.errors
    assert not Policy.objects.filter(name="payments").exists()


def test_an_import_into_a_guarded_environment_is_one_request_for_the_whole_file(
    api: Policy, alice: Actor, bob: Actor, system: Actor
) -> None:
    do_create_policy(api.environment, "breaker", "payments", {}, system, "initial")
    document = parse(
        "version: 1\n"
        "policies:\n"
        "  rate_limit:\n"
        "    api: {limit: 300, period: 60, tags: [edge]}\n"
        "  config:\n"
        "    banner: {value: sale}\n"
    )
    changes = plan_import(api.environment, document, prune=True)
    request = open_request(
        api.environment, import_proposals(api.environment, changes), alice, "from git"
    )
    assert sorted((i.op, i.name) for i in request.items.all()) == [
        ("create", "banner"),
        ("delete", "payments"),
        ("update", "api"),
    ]
    assert review(request, bob, Role.EDITOR, "approve").status == ChangeRequest.Status.APPLIED
    api.refresh_from_db()
    assert (api.spec["limit"], api.tags) == (300, ["edge"])
    assert Policy.objects.get(name="payments").deleted
    assert Policy.objects.get(name="banner").spec["value"] == "sale"


def test_the_three_way_view_of_a_secret_shows_fingerprints_never_the_value(
    guarded: Environment, alice: Actor, system: Actor
) -> None:
    token = do_create_policy(
        guarded, "config", "token", {"value": "old-secret", "secret": True}, system, "initial"
    )
    request = open_request(
        guarded,
        [Proposal("update", "config", "token", {"value": "my-secret"}, token.version)],
        alice,
        "rotate",
    )
    do_update_policy(token, {"value": "their-secret"}, system, "rotated first")
    [state] = item_states(request)
    [row] = state.three_way()
    shown = f"{row.base} {row.theirs} {row.mine}"
    assert "secret" in row.mine and row.conflict
    for value in ("old-secret", "their-secret", "my-secret"):
        assert value not in shown
