from __future__ import annotations

import hashlib
import importlib
import json
from typing import Any

import pytest
from django.apps import apps as django_apps
from django.contrib.auth.models import User

from controlplane.accounts.actors import Actor
from controlplane.audit.models import AppendOnlyError, AuditEntry
from controlplane.audit.record import fingerprint, record
from controlplane.policies.actions import (
    do_create_policy,
    do_delete_policy,
    do_rollback_policy,
    do_update_policy,
)
from controlplane.policies.models import Environment

pytestmark = pytest.mark.django_db(transaction=True)


def test_every_policy_change_is_audited_field_by_field(
    production: Environment, editor: User
) -> None:
    actor = Actor.of(editor, ip="10.0.0.7")
    policy = do_create_policy(production, "rate_limit", "api", {"limit": 10}, actor, "launch")
    do_update_policy(policy, {"limit": 20, "period": "30s"}, actor, "more traffic")
    do_delete_policy(policy, actor, "retired")
    do_rollback_policy(policy, 2, actor)

    entries = list(AuditEntry.objects.filter(object_name="api").order_by("id"))
    assert [e.action for e in entries] == [
        "policy.create",
        "policy.update",
        "policy.delete",
        "policy.rollback",
    ]
    created, updated, deleted, rolled_back = entries
    assert created.changes["limit"] == [None, 10]
    assert updated.changes == {"limit": [10, 20], "period": [60.0, 30.0]}
    assert updated.reason == "more traffic"
    assert (updated.actor_name, updated.actor_user, updated.source_ip) == (
        "erin",
        editor,
        "10.0.0.7",
    )
    assert updated.environment == "production" and updated.object_kind == "rate_limit"
    assert deleted.changes["deleted"] == [False, True]
    assert rolled_back.changes["deleted"] == [True, False]
    assert rolled_back.reason == "Rolled back to v2"


def test_secret_values_never_reach_the_audit_log(production: Environment, system: Actor) -> None:
    policy = do_create_policy(
        production, "config", "api.token", {"value": "hunter2", "secret": True}, system
    )
    do_update_policy(policy, {"value": "correct-horse"}, system)

    for entry in AuditEntry.objects.filter(object_name="api.token"):
        assert "hunter2" not in str(entry.changes)
        assert "correct-horse" not in str(entry.changes)
    update = AuditEntry.objects.get(action="policy.update")
    old, new = update.changes["value"]
    assert old.startswith("secret:") and new.startswith("secret:") and old != new


def test_deleting_or_unmarking_a_secret_never_writes_its_value_to_the_audit_log(
    production: Environment, system: Actor
) -> None:
    # "Secret" is decided from the spec before and after: a delete has no "after".
    gone = do_create_policy(
        production, "config", "old.token", {"value": "hunter2", "secret": True}, system
    )
    do_delete_policy(gone, system, "retired")
    unmarked = do_create_policy(
        production, "config", "pin", {"value": "042917", "secret": True}, system
    )
    do_update_policy(unmarked, {"secret": False}, system)

    deleted = AuditEntry.objects.get(action="policy.delete", object_name="old.token")
    assert deleted.changes["value"][0].startswith("secret:")
    update = AuditEntry.objects.get(action="policy.update", object_name="pin")
    assert update.changes["secret"] == [True, False]
    assert "042917" not in str(update.changes)
    for entry in AuditEntry.objects.all():
        assert "hunter2" not in str(entry.changes) and "042917" not in str(entry.changes)


def test_secret_fingerprints_are_keyed_so_viewers_cannot_reverse_them(
    production: Environment, system: Actor, settings: Any
) -> None:
    policy = do_create_policy(
        production, "config", "pin", {"value": "042917", "secret": True}, system
    )
    do_update_policy(policy, {"value": "913355"}, system)
    shown = AuditEntry.objects.get(action="policy.update").changes["value"][1]

    # What a viewer could do with an unkeyed digest: try every 6-digit PIN.
    unkeyed = {
        hashlib.sha256(json.dumps(f"{n:06d}").encode()).hexdigest()[:8] for n in range(10**6)
    }
    assert shown.removeprefix("secret:")[:8] not in unkeyed
    assert shown == fingerprint("913355")
    settings.SECRET_KEY = "another-server-key-" + "x" * 40
    assert fingerprint("913355") != shown


def test_migration_withdraws_the_unkeyed_fingerprints_of_earlier_entries(system: Actor) -> None:
    withdraw = importlib.import_module(
        "controlplane.audit.migrations.0002_withdraw_unkeyed_fingerprints"
    ).withdraw
    earlier = record(
        system,
        "policy.update",
        kind="config",
        name="pin",
        changes={"value": ["secret:0badc0de", "secret:12345678"], "description": ["a", "b"]},
    )
    plain = record(
        system, "policy.update", kind="config", name="motto", changes={"value": ["x", "y"]}
    )
    withdraw(django_apps, None)
    earlier.refresh_from_db()
    plain.refresh_from_db()
    assert earlier.changes == {
        "value": ["secret (fingerprint withdrawn)", "secret (fingerprint withdrawn)"],
        "description": ["a", "b"],
    }
    assert plain.changes == {"value": ["x", "y"]}


def test_audit_entries_cannot_be_edited_or_deleted(production: Environment, system: Actor) -> None:
    do_create_policy(production, "cache", "prices", {}, system)
    entry = AuditEntry.objects.get(action="policy.create")
    entry.reason = "rewritten"
    with pytest.raises(AppendOnlyError):
        entry.save()
    with pytest.raises(AppendOnlyError):
        entry.delete()
    with pytest.raises(AppendOnlyError):
        AuditEntry.objects.all().delete()
    with pytest.raises(AppendOnlyError):
        AuditEntry.objects.update(reason="rewritten")
    assert AuditEntry.objects.get(pk=entry.pk).reason == ""


def test_deleting_the_user_keeps_the_entries_naming_them(
    production: Environment, editor: User
) -> None:
    do_create_policy(production, "cache", "prices", {}, Actor.of(editor))
    editor.delete()
    entry = AuditEntry.objects.get(action="policy.create")
    assert (entry.actor_name, entry.actor_user) == ("erin", None)


def test_a_refused_change_leaves_no_audit_entry(production: Environment, system: Actor) -> None:
    before = AuditEntry.objects.count()
    with pytest.raises(ValueError):
        do_create_policy(production, "breaker", "payments", {"open_for": -1}, system)
    assert AuditEntry.objects.count() == before
