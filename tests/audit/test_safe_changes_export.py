"""Every action of safe changes (change requests, environment rules, users) is in the
audit log with its before and after, and in both exports."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from controlplane.accounts.actors import Actor
from controlplane.accounts.roles import Role
from controlplane.accounts.users import do_create_user, do_deactivate_user, do_set_roles
from controlplane.policies.actions import do_create_policy, do_update_policy
from controlplane.policies.environment_actions import do_update_environment
from controlplane.policies.models import Environment
from controlplane.policies.requests import Proposal, open_request, rebase, review, schedule
from controlplane.policies.requests import withdraw as do_withdraw
from tests.conftest import make_user

pytestmark = pytest.mark.django_db(transaction=True)

# Each action, and a field its entry must carry as [before, after].
EXPECTED = {
    "environment.update": "approvals_required",
    "change_request.open": "limit",
    "change_request.approve": "approvals",
    "change_request.approved": "status",
    "change_request.apply": "status",
    "change_request.reject": "status",
    "change_request.withdraw": "status",
    "change_request.schedule": "apply_at",
    "change_request.rebase": "rate_limit:api.base_version",
    "user.create": "role_everywhere",
    "user.roles": "role_in_production",
    "user.deactivate": "is_active",
}


def test_every_new_action_is_exported_with_before_and_after(
    client: Client, admin: User, production: Environment, system: Actor
) -> None:
    boss = Actor.of(admin)
    do_update_environment(production, boss, "guard production", approvals_required=1)
    api = do_create_policy(production, "rate_limit", "api", {"limit": 100}, system, "initial")
    alice, bob = Actor.of(make_user("alice", Role.EDITOR)), Actor.of(make_user("bob", Role.EDITOR))

    def propose(limit: int) -> Proposal:
        api.refresh_from_db()
        return Proposal("update", "rate_limit", "api", {"limit": limit}, api.version)

    applied = open_request(production, [propose(200)], alice, "more")
    review(applied, bob, Role.EDITOR, "approve", "fine")
    rejected = open_request(production, [propose(300)], alice, "much more")
    review(rejected, bob, Role.EDITOR, "reject", "too much")
    withdrawn = open_request(production, [propose(400)], alice, "even more")
    schedule(withdrawn, alice, timezone.now() + timedelta(hours=1))
    do_update_policy(api, {"period": 30}, system, "moved under it")
    rebase(withdrawn, alice, Role.EDITOR)
    do_withdraw(withdrawn, alice, "not needed")
    carol, _ = do_create_user("carol", "carol@example.com", Role.VIEWER, {}, boss)
    do_set_roles(carol, Role.VIEWER, {"production": Role.EDITOR}, boss)
    do_deactivate_user(User.objects.get(username="carol"), boss, "left")

    client.force_login(admin)
    exported = json.loads(b"".join(client.get("/audit/export.json").streaming_content))
    as_json = {row["action"]: row for row in exported}
    lines = b"".join(client.get("/audit/export.csv").streaming_content).decode()
    as_csv = {row["action"]: row for row in csv.DictReader(io.StringIO(lines))}
    for action, field in EXPECTED.items():
        assert action in as_json, action
        before_after = as_json[action]["changes"][field]
        assert isinstance(before_after, list) and len(before_after) == 2, (action, before_after)
        assert before_after[0] != before_after[1], (action, before_after)
        assert json.loads(as_csv[action]["changes"])[field] == before_after
