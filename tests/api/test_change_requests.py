"""Change requests through the API: propose, review, withdraw, plan and rebase, and
writes to a guarded environment's policies that open a request instead of applying."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any, get_args

import pytest
import redis
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from controlplane.accounts.actions import do_create_token
from controlplane.accounts.actors import Actor
from controlplane.accounts.roles import Role
from controlplane.api.schemas import ChangeOp, RequestStatus
from controlplane.audit.models import AuditEntry
from controlplane.policies.actions import do_create_environment, do_create_policy, do_update_policy
from controlplane.policies.models import ChangeItem, ChangeRequest, Environment, Policy
from controlplane.policies.requests import Proposal, apply_due_requests, open_request
from controlplane.protocol.documents import PolicyDocument
from controlplane.protocol.schema import SECRET_MASK
from tests.api.conftest import ApiClient
from tests.conftest import make_user

pytestmark = pytest.mark.django_db(transaction=True)

REQUESTS = "/change-requests"
PROPOSE = "/environments/production/change-requests"
API_POLICY = "/environments/production/policies/rate_limit/api"

TokenOf = Callable[..., ApiClient]


@pytest.fixture
def api_limit(guarded: Environment, system: Actor) -> Policy:
    return do_create_policy(guarded, "rate_limit", "api", {"limit": 100, "period": 60}, system)


@pytest.fixture
def alice(db: None) -> User:
    return make_user("alice", Role.EDITOR)


@pytest.fixture
def bob(db: None) -> User:
    return make_user("bob", Role.EDITOR)


@pytest.fixture
def token_of(client: Client) -> TokenOf:
    """An API client with a token made by ``user`` (acting for them), maybe scoped."""

    def make(
        user: User, role: Role = Role.EDITOR, label: str = "", environments: Any = ()
    ) -> ApiClient:
        token, secret = do_create_token(label or f"{user.username}-bot", role, Actor.of(user))
        token.environments.set(list(environments))
        return ApiClient(client, secret)

    return make


def _limit_change(limit: int, base_version: int | None = 1) -> dict[str, Any]:
    return {
        "op": "update",
        "kind": "rate_limit",
        "name": "api",
        "spec": {"limit": limit},
        "base_version": base_version,
    }


def _propose(api: ApiClient, limit: int = 250, **extra: Any) -> dict[str, Any]:
    body = {"changes": [_limit_change(limit)], "reason": "sale traffic", **extra}
    response = api.call("post", PROPOSE, body)
    assert response.status_code == 201, response.content
    created: dict[str, Any] = response.json()
    assert response["Location"] == f"/api/v1/change-requests/{created['id']}"
    return created


def _limit(policy: Policy) -> int:
    policy.refresh_from_db()
    return int(policy.spec["limit"])


def test_the_api_spells_out_the_ops_and_statuses_the_models_define() -> None:
    assert set(get_args(ChangeOp)) == set(ChangeItem.Op.values)
    assert set(get_args(RequestStatus)) == set(ChangeRequest.Status.values)


def test_a_proposal_waits_then_another_persons_approval_applies_it_as_the_authors(
    api_limit: Policy, alice: User, bob: User, token_of: TokenOf, redis_client: redis.Redis
) -> None:
    created = _propose(token_of(alice))
    assert (created["status"], created["author"]) == ("open", "token:alice-bot")
    assert created["approvals"] == {"given": 0, "required": 1}
    [item] = created["items"]
    assert (item["op"], item["base_version"], item["moved"]) == ("update", 1, False)
    assert item["diff"] == {"limit": [100, 250]}
    assert item["spec"] == {**api_limit.spec, "limit": 250}
    assert _limit(api_limit) == 100

    as_bob = token_of(bob)
    listed = as_bob.call("get", REQUESTS).json()
    assert [(r["id"], r["title"]) for r in listed] == [(created["id"], "Change rate limiter api")]
    shown = as_bob.call("get", f"{REQUESTS}/{created['id']}").json()
    assert shown["items"] == created["items"]

    approved = as_bob.call("post", f"{REQUESTS}/{created['id']}/approve", {"comment": "ok"})
    assert approved.status_code == 200, approved.content
    body = approved.json()
    assert (body["status"], body["approvals"]["given"]) == ("applied", 1)
    assert [(r["reviewer"], r["decision"], r["comment"]) for r in body["reviews"]] == [
        ("token:bob-bot", "approve", "ok")
    ]
    assert _limit(api_limit) == 250
    assert api_limit.versions.get(version=2).author_name == "token:alice-bot"
    stored = redis_client.hget(api_limit.environment.keys().policies, api_limit.field)
    assert stored is not None and PolicyDocument.decode(stored).spec["limit"] == 250
    assert as_bob.call("get", REQUESTS).json() == []  # applied: no longer pending
    assert [r["id"] for r in as_bob.call("get", REQUESTS + "?status=applied").json()] == [
        created["id"]
    ]


def test_a_token_cannot_approve_what_its_creator_proposed(
    api_limit: Policy, alice: User, token_of: TokenOf
) -> None:
    """The API acts for the token's creator: another token of the author, or the author's
    own page session's request, is still the author."""
    created = _propose(token_of(alice, label="alice-ci"))
    other = token_of(alice, label="alice-laptop")
    refused = other.call("post", f"{REQUESTS}/{created['id']}/approve", {})
    assert refused.status_code == 422
    assert "own" in " ".join(refused.json()["errors"]["decision"])
    proposed_on_a_page = open_request(
        api_limit.environment,
        [Proposal("update", "rate_limit", "api", {"limit": 7}, 1)],
        Actor.of(alice),
        "from the page",
    )
    refused = other.call("post", f"{REQUESTS}/{proposed_on_a_page.pk}/approve", {})
    assert list(refused.json()["errors"]) == ["decision"]
    assert _limit(api_limit) == 100
    entry = AuditEntry.objects.get(action="change_request.open", reason="sale traffic")
    assert (entry.actor_name, entry.actor_user) == ("token:alice-ci", alice)


def test_a_rejection_needs_a_comment_and_closes_the_request(
    api_limit: Policy, alice: User, bob: User, token_of: TokenOf
) -> None:
    created = _propose(token_of(alice))
    as_bob = token_of(bob)
    refused = as_bob.call("post", f"{REQUESTS}/{created['id']}/reject", {})
    assert refused.status_code == 422
    assert list(refused.json()["errors"]) == ["comment"]
    rejected = as_bob.call("post", f"{REQUESTS}/{created['id']}/reject", {"comment": "too high"})
    assert rejected.status_code == 200, rejected.content
    body = rejected.json()
    assert (body["status"], body["closed_by"]) == ("rejected", "token:bob-bot")
    assert "approve" not in body["links"]
    again = as_bob.call("post", f"{REQUESTS}/{created['id']}/approve", {})
    assert list(again.json()["errors"]) == ["decision"]
    assert _limit(api_limit) == 100


def test_an_approved_request_not_applied_yet_may_still_be_rejected(
    api_limit: Policy, alice: User, bob: User, token_of: TokenOf
) -> None:
    later = (timezone.now() + timedelta(hours=1)).isoformat()
    created = _propose(token_of(alice), apply_at=later)
    approved = token_of(bob).call("post", f"{REQUESTS}/{created['id']}/approve", {})
    assert approved.json()["status"] == "approved"
    carol = make_user("carol", Role.EDITOR)
    rejected = token_of(carol).call(
        "post", f"{REQUESTS}/{created['id']}/reject", {"comment": "not during the freeze"}
    )
    assert rejected.status_code == 200, rejected.content
    assert rejected.json()["status"] == "rejected"
    assert apply_due_requests(timezone.now() + timedelta(hours=2)) == []
    assert _limit(api_limit) == 100


def test_only_the_author_withdraws(
    api_limit: Policy, alice: User, bob: User, token_of: TokenOf
) -> None:
    as_alice = token_of(alice)
    created = _propose(as_alice)
    refused = token_of(bob).call("post", f"{REQUESTS}/{created['id']}/withdraw", {})
    assert refused.status_code == 422
    assert "author" in " ".join(refused.json()["errors"]["request"])
    withdrawn = as_alice.call("post", f"{REQUESTS}/{created['id']}/withdraw", {"reason": "oops"})
    assert withdrawn.json()["status"] == "withdrawn"
    assert AuditEntry.objects.get(action="change_request.withdraw").reason == "oops"


def test_a_planned_request_applies_when_due_and_only_future_times_are_taken(
    api_limit: Policy, alice: User, bob: User, token_of: TokenOf
) -> None:
    as_alice = token_of(alice)
    created = _propose(as_alice)
    url = f"{REQUESTS}/{created['id']}/schedule"
    past = (timezone.now() - timedelta(minutes=1)).isoformat()
    for when in (past, "2099-01-31T09:00:00", "0001-01-01T00:00:00+01:00"):
        refused = as_alice.call("post", url, {"apply_at": when})
        assert refused.status_code == 422, when
        assert list(refused.json()["errors"]) == ["apply_at"], when
    at = timezone.now() + timedelta(hours=1)
    planned = as_alice.call("post", url, {"apply_at": at.isoformat()})
    assert planned.status_code == 200, planned.content
    assert planned.json()["apply_at"].startswith(at.isoformat()[:19])
    assert token_of(bob).call("post", url, {"apply_at": None}).status_code == 422  # author only

    approved = token_of(bob).call("post", f"{REQUESTS}/{created['id']}/approve", {}).json()
    assert approved["status"] == "approved"  # waits for its time
    assert _limit(api_limit) == 100
    [applied] = apply_due_requests(at + timedelta(seconds=1))
    assert applied.pk == created["id"]
    assert _limit(api_limit) == 250


def test_a_request_opened_with_a_time_keeps_it(
    api_limit: Policy, alice: User, token_of: TokenOf
) -> None:
    at = timezone.now() + timedelta(days=1)
    created = _propose(token_of(alice), apply_at=at.isoformat(), title="Black Friday")
    assert created["title"] == "Black Friday"
    assert ChangeRequest.objects.get().apply_at == at


def test_an_approval_that_cannot_apply_leaves_it_approved_until_rebased(
    api_limit: Policy, alice: User, bob: User, token_of: TokenOf, system: Actor
) -> None:
    as_alice, as_bob = token_of(alice), token_of(bob)
    created = _propose(as_alice)
    do_update_policy(api_limit, {"period": 30}, system, "someone else")
    approved = as_bob.call("post", f"{REQUESTS}/{created['id']}/approve", {})
    assert approved.status_code == 200, approved.content
    body = approved.json()
    assert (body["status"], body["needs_rebase"]) == ("approved", True)
    assert "Needs a rebase" in body["blocked_reason"]
    assert body["items"][0]["moved"] and body["items"][0]["current_version"] == 2

    rebased = as_alice.call("post", f"{REQUESTS}/{created['id']}/rebase")
    assert rebased.status_code == 200, rebased.content
    body = rebased.json()
    assert (body["status"], body["needs_rebase"], body["blocked_reason"]) == ("open", False, "")
    assert body["approvals"]["given"] == 0  # what it proposes changed: approve again
    assert body["items"][0]["base_version"] == 2
    assert as_alice.call("post", f"{REQUESTS}/{created['id']}/rebase").status_code == 422

    applied = as_bob.call("post", f"{REQUESTS}/{created['id']}/approve", {}).json()
    assert applied["status"] == "applied"
    api_limit.refresh_from_db()
    assert (api_limit.spec["limit"], api_limit.spec["period"]) == (250, 30)


def test_one_request_changes_several_policies_and_bad_items_are_named(
    api_limit: Policy, alice: User, token_of: TokenOf
) -> None:
    as_alice = token_of(alice)
    bad = as_alice.call(
        "post",
        PROPOSE,
        {
            "changes": [
                _limit_change(-5),
                {"op": "delete", "kind": "breaker", "name": "ghost"},
            ],
            "reason": "",
        },
    )
    assert bad.status_code == 422
    assert set(bad.json()["errors"]) == {"reason", "rate_limit.api.limit", "breaker.ghost.name"}
    created = _propose(as_alice)  # nothing of the refused one was opened
    assert ChangeRequest.objects.get().pk == created["id"]
    several = as_alice.call(
        "post",
        PROPOSE,
        {
            "changes": [
                {"op": "create", "kind": "config", "name": "key", "spec": {}},
                {"op": "rollback", "kind": "rate_limit", "name": "api", "rollback_to": 1},
            ],
            "reason": "two at once",
        },
    )
    assert several.status_code == 422  # api has no earlier version than 1
    assert list(several.json()["errors"]) == ["rate_limit.api.rollback_to"]


def test_a_proposed_secret_is_masked(
    production: Environment, alice: User, token_of: TokenOf
) -> None:
    response = token_of(alice).call(
        "post",
        PROPOSE,
        {
            "changes": [
                {
                    "op": "create",
                    "kind": "config",
                    "name": "key",
                    "spec": {"value": "hunter2", "secret": True},
                }
            ],
            "reason": "new key",
        },
    )
    assert response.status_code == 201, response.content
    [item] = response.json()["items"]
    assert item["spec"]["value"] == SECRET_MASK
    assert "hunter2" not in response.content.decode()


@pytest.mark.parametrize(
    ("method", "path", "body", "op"),
    [
        ("patch", API_POLICY, {"spec": {"limit": 5}, "reason": "why"}, "update"),
        ("delete", API_POLICY + "?reason=why", None, "delete"),
        ("post", API_POLICY + "/rollback", {"version": 1, "reason": "why"}, "rollback"),
        (
            "post",
            "/environments/production/policies",
            {"kind": "breaker", "name": "payments", "reason": "why"},
            "create",
        ),
    ],
)
def test_a_write_to_a_guarded_environment_opens_a_request_and_changes_nothing(
    api_limit: Policy,
    alice: User,
    token_of: TokenOf,
    redis_client: redis.Redis,
    system: Actor,
    method: str,
    path: str,
    body: Any,
    op: str,
) -> None:
    do_update_policy(api_limit, {"limit": 200}, system)  # a version 1 to restore
    published = redis_client.hgetall(api_limit.environment.keys().policies)
    response = token_of(alice).call(method, path, body)
    assert response.status_code == 202, response.content
    created = response.json()
    assert response["Location"] == f"/api/v1/change-requests/{created['id']}"
    assert (created["status"], created["reason"]) == ("open", "why")
    assert [i["op"] for i in created["items"]] == [op]
    assert _limit(api_limit) == 200 and api_limit.version == 2
    assert not Policy.objects.filter(name="payments").exists()
    assert redis_client.hgetall(api_limit.environment.keys().policies) == published


def test_a_guarded_write_needs_a_reason_and_a_current_expected_version(
    api_limit: Policy, alice: User, token_of: TokenOf
) -> None:
    as_alice = token_of(alice)
    unexplained = as_alice.call("patch", API_POLICY, {"spec": {"limit": 5}})
    assert unexplained.status_code == 422
    assert list(unexplained.json()["errors"]) == ["reason"]
    stale = as_alice.call(
        "patch", API_POLICY, {"spec": {"limit": 5}, "reason": "why", "expected_version": 0}
    )
    assert stale.status_code == 409
    assert stale.json()["current"]["version"] == 1
    assert not ChangeRequest.objects.exists()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("patch", API_POLICY, {"spec": {"limit": 5}}),
        ("delete", API_POLICY, None),
        ("post", API_POLICY + "/rollback", {"version": 1}),
        ("post", "/environments/production/policies", {"kind": "breaker", "name": "payments"}),
    ],
)
def test_a_direct_write_where_a_reason_is_required_is_refused_without_one(
    production: Environment,
    alice: User,
    token_of: TokenOf,
    system: Actor,
    method: str,
    path: str,
    body: Any,
) -> None:
    policy = do_create_policy(production, "rate_limit", "api", {"limit": 100}, system)
    do_update_policy(policy, {"limit": 200}, system)
    production.require_reason = True
    production.save()
    refused = token_of(alice).call(method, path, body)
    assert refused.status_code == 422
    assert list(refused.json()["errors"]) == ["reason"]
    assert (_limit(policy), policy.version, policy.deleted) == (200, 2, False)
    assert not Policy.objects.filter(name="payments").exists()
    assert not ChangeRequest.objects.exists()


def test_a_viewer_reads_requests_but_cannot_propose_or_review(
    api_limit: Policy, alice: User, token_of: TokenOf
) -> None:
    created = _propose(token_of(alice))
    as_viewer = token_of(make_user("vera", Role.VIEWER), role=Role.VIEWER)
    assert as_viewer.call("get", f"{REQUESTS}/{created['id']}").status_code == 200
    body = {"changes": [_limit_change(5)], "reason": "why"}
    assert as_viewer.call("post", PROPOSE, body).status_code == 403
    for step in ("approve", "reject", "withdraw", "schedule", "rebase"):
        refused = as_viewer.call("post", f"{REQUESTS}/{created['id']}/{step}", {"apply_at": None})
        assert refused.status_code == 403, step
    assert ChangeRequest.objects.get().status == "open"


def test_a_token_scoped_to_staging_cannot_see_or_act_on_productions_requests(
    api_limit: Policy, alice: User, bob: User, token_of: TokenOf, system: Actor
) -> None:
    staging = do_create_environment("staging", system)
    created = _propose(token_of(alice))
    staging_only = token_of(bob, environments=[staging])
    # As if it did not exist: a scoped token learns nothing of other environments.
    assert staging_only.call("get", f"{REQUESTS}/{created['id']}").status_code == 404
    refused = staging_only.call("post", f"{REQUESTS}/{created['id']}/approve", {})
    assert refused.status_code == 404
    assert staging_only.call("post", PROPOSE, {"changes": [], "reason": "x"}).status_code == 403
    assert staging_only.call("get", REQUESTS).json() == []
    assert staging_only.call("get", REQUESTS + "?environment=production").status_code == 403
    assert ChangeRequest.objects.get().status == "open"
    assert _limit(api_limit) == 100


def test_where_admins_approve_an_editors_approval_is_refused_with_403(
    api_limit: Policy, alice: User, bob: User, token_of: TokenOf
) -> None:
    api_limit.environment.approver_role = "admin"
    api_limit.environment.save()
    created = _propose(token_of(alice))
    refused = token_of(bob).call("post", f"{REQUESTS}/{created['id']}/approve", {})
    assert refused.status_code == 403
    assert "admin" in refused.json()["detail"]
    assert ChangeRequest.objects.get().status == "open"
    as_admin = token_of(make_user("ada", Role.ADMIN), role=Role.ADMIN)
    applied = as_admin.call("post", f"{REQUESTS}/{created['id']}/approve", {})
    assert applied.json()["status"] == "applied"


def test_an_unknown_request_is_404(production: Environment, alice: User, token_of: TokenOf) -> None:
    as_alice = token_of(alice)
    assert as_alice.call("get", f"{REQUESTS}/999999").status_code == 404
    assert as_alice.call("post", f"{REQUESTS}/999999/approve", {}).status_code == 404
    assert as_alice.call("get", REQUESTS + "?environment=nowhere").status_code == 404


def test_a_change_in_an_unguarded_environment_can_still_be_reviewed(
    production: Environment, alice: User, bob: User, token_of: TokenOf, system: Actor
) -> None:
    policy = do_create_policy(production, "rate_limit", "api", {"limit": 100}, system)
    created = _propose(token_of(alice))
    assert created["approvals"] == {"given": 0, "required": 1}
    assert _limit(policy) == 100
    token_of(bob).call("post", f"{REQUESTS}/{created['id']}/approve", {})
    assert _limit(policy) == 250


def test_environments_show_their_rules(
    guarded: Environment, alice: User, token_of: TokenOf
) -> None:
    guarded.require_reason = True
    guarded.approver_role = "admin"
    guarded.save()
    [environment] = token_of(alice).call("get", "/environments").json()
    assert (
        environment["require_reason"],
        environment["approvals_required"],
        environment["approver_role"],
    ) == (True, 1, "admin")


def test_two_tokens_of_one_person_give_one_approval(
    api_limit: Policy, alice: User, bob: User, token_of: TokenOf
) -> None:
    api_limit.environment.approvals_required = 2
    api_limit.environment.save()
    created = _propose(token_of(alice))
    url = f"{REQUESTS}/{created['id']}/approve"
    assert token_of(bob, label="bob-ci").call("post", url, {}).status_code == 200
    refused = token_of(bob, label="bob-laptop").call("post", url, {})
    assert refused.status_code == 422
    assert "already" in " ".join(refused.json()["errors"]["decision"])
    assert ChangeRequest.objects.get().status == "open"
    assert _limit(api_limit) == 100


def test_a_request_changes_each_policy_once(
    api_limit: Policy, alice: User, token_of: TokenOf
) -> None:
    twice = {"changes": [_limit_change(5), _limit_change(6)], "reason": "why"}
    refused = token_of(alice).call("post", PROPOSE, twice)
    assert refused.status_code == 422
    assert list(refused.json()["errors"]) == ["changes"]
    assert not ChangeRequest.objects.exists()
