"""The outbox: audited changes become events, written in the transaction of the change."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from controlplane.accounts.actors import Actor
from controlplane.accounts.roles import Role
from controlplane.audit.models import AuditEntry
from controlplane.policies.actions import (
    do_create_policy,
    do_delete_policy,
    do_rollback_policy,
    do_update_policy,
    update_policy,
)
from controlplane.policies.models import Environment
from controlplane.policies.overrides import (
    do_clear_override,
    do_purge_cache,
    do_reset_breaker,
    do_set_override,
    expire_overrides,
)
from controlplane.policies.requests import Proposal, open_request, review
from controlplane.webhooks.events import OutsideTransactionError, emit, emit_for_entry
from controlplane.webhooks.models import Delivery, Event, Webhook
from controlplane.webhooks.payloads import json_body, render, slack_body
from tests.conftest import make_user

pytestmark = pytest.mark.django_db(transaction=True)

LIMIT = {"limit": 100, "period": 60}


def _webhook(environment: str = "production", **fields: object) -> Webhook:
    defaults: dict[str, object] = {"name": "ops", "url": "http://127.0.0.1:9/hook"}
    return Webhook.objects.create(environment=environment, **{**defaults, **fields})


def _events() -> list[Event]:
    return list(Event.objects.order_by("created_at"))


@pytest.fixture
def hook(production: Environment) -> Webhook:
    return _webhook()


def test_a_policy_save_writes_its_event_and_pending_delivery(
    hook: Webhook, production: Environment, system: Actor
) -> None:
    do_create_policy(production, "rate_limit", "api", LIMIT, system, "launch")
    [event] = _events()
    assert (event.environment, event.type) == ("production", "policy.created")
    diff = event.payload.pop("diff")
    assert (diff["limit"], diff["period"]) == ([None, 100], [None, 60])
    assert event.payload == {
        "kind": "rate_limit",
        "name": "api",
        "version": 1,
        "actor": system.name,
        "reason": "launch",
    }
    [delivery] = Delivery.objects.all()
    assert (delivery.webhook, delivery.event, delivery.status) == (hook, event, "pending")
    assert delivery.attempts == 0


def test_a_save_whose_transaction_rolls_back_leaves_no_event(
    hook: Webhook, production: Environment, system: Actor
) -> None:
    policy = do_create_policy(production, "rate_limit", "api", LIMIT, system)
    with pytest.raises(RuntimeError), transaction.atomic():
        update_policy(policy, {"limit": 5}, system, "will not happen")
        assert Event.objects.filter(type="policy.changed").exists()  # written in the transaction
        raise RuntimeError("the rest of the change failed")
    assert [e.type for e in _events()] == ["policy.created"]
    assert Delivery.objects.count() == 1


def test_every_policy_and_override_action_is_its_event_with_its_diff(
    hook: Webhook, production: Environment, system: Actor
) -> None:
    policy = do_create_policy(production, "breaker", "payments", {"minimum_calls": 50}, system)
    policy = do_update_policy(policy, {"minimum_calls": 30}, system, "too late")
    policy = do_rollback_policy(policy, 1, system, "back")
    do_delete_policy(policy, system, "gone")
    do_create_policy(production, "breaker", "search", {}, system)
    do_set_override(production, "breaker", "search", "forced_open", system, "maintenance")
    do_clear_override(production, "breaker", "search", system, "done")
    soon = timezone.now() + timedelta(minutes=5)
    do_set_override(production, "breaker", "search", "forced_closed", system, "pin", soon)
    expire_overrides(now=soon + timedelta(seconds=1))
    events = _events()
    assert [e.type for e in events] == [
        "policy.created",
        "policy.changed",
        "policy.rolled_back",
        "policy.deleted",
        "policy.created",
        "override.placed",
        "override.lifted",
        "override.placed",
        "override.expired",
    ]
    changed, rolled_back, deleted = (e.payload for e in events[1:4])
    assert changed["diff"]["minimum_calls"] == [50, 30]
    assert (changed["version"], changed["reason"]) == (2, "too late")
    assert rolled_back["diff"]["minimum_calls"] == [30, 50]
    assert rolled_back["version"] == 3
    assert deleted["diff"]["deleted"] == [False, True]
    placed, lifted, _, expired = (e.payload for e in events[5:])
    assert (placed["state"], placed["reason"], placed["diff"]) == (
        "forced_open",
        "maintenance",
        {"state": [None, "forced_open"]},
    )
    assert (lifted["state"], lifted["diff"]) == ("forced_open", {"state": ["forced_open", None]})
    assert (expired["state"], expired["name"]) == ("forced_closed", "search")


def test_change_requests_are_events_when_opened_approved_rejected_and_applied(
    guarded: Environment, system: Actor, editor: User
) -> None:
    policy = do_create_policy(guarded, "rate_limit", "api", LIMIT, system)
    _webhook(events=["change_request.*"])
    alice, bob = Actor.of(editor), Actor.of(make_user("bob", Role.EDITOR))
    change = [Proposal("update", "rate_limit", "api", {"limit": 250}, policy.version)]
    first = open_request(guarded, change, alice, "sale traffic")
    review(first, bob, Role.EDITOR, "approve", "ok")
    policy.refresh_from_db()
    change = [Proposal("update", "rate_limit", "api", {"limit": 900}, policy.version)]
    second = open_request(guarded, change, alice, "more")
    review(second, bob, Role.EDITOR, "reject", "too high")
    events = _events()
    assert [(e.type, e.payload["request"]) for e in events] == [
        ("change_request.opened", first.pk),
        ("change_request.approved", first.pk),
        ("change_request.applied", first.pk),
        ("change_request.opened", second.pk),
        ("change_request.rejected", second.pk),
    ]
    assert events[0].payload["diff"]["limit"] == [100, 250]
    assert (events[4].payload["actor"], events[4].payload["reason"]) == (bob.name, "too high")


def test_no_secret_value_appears_in_any_event_or_body(
    hook: Webhook, production: Environment, system: Actor
) -> None:
    slack = _webhook(name="chat", payload_format=Webhook.Format.SLACK)
    token = do_create_policy(
        production, "config", "token", {"value": "first-secret", "secret": True}, system
    )
    token = do_update_policy(token, {"value": "second-secret"}, system, "rotate")
    do_delete_policy(token, system, "unused")
    events = _events()
    assert [e.type for e in events] == ["policy.created", "policy.changed", "policy.deleted"]
    assert events[1].payload["diff"]["value"][1].startswith("secret:")
    for event in events:
        shown = (
            json.dumps(event.payload) + render(hook, event).decode() + render(slack, event).decode()
        )
        assert "first-secret" not in shown and "second-secret" not in shown


def test_a_webhook_gets_only_the_events_it_wants_of_its_own_environment(
    production: Environment, system: Actor
) -> None:
    overrides = _webhook(name="overrides", events=["override.*"])
    created = _webhook(name="created", events=["policy.created"])
    _webhook(name="off", enabled=False)
    _webhook(environment="staging", name="elsewhere")
    do_create_policy(production, "breaker", "payments", {}, system)
    do_set_override(production, "breaker", "payments", "forced_open", system, "incident")
    assert sorted(
        (d.webhook.name, d.event.type) for d in Delivery.objects.select_related("webhook", "event")
    ) == [("created", "policy.created"), ("overrides", "override.placed")]
    assert overrides.wants("override.expired") and not overrides.wants("policy.changed")
    assert created.wants("policy.created") and not created.wants("policy.changed")


def test_nothing_is_written_when_no_webhook_wants_the_event(
    production: Environment, system: Actor
) -> None:
    _webhook(events=["override.placed"])
    do_create_policy(production, "breaker", "payments", {}, system)
    assert not Event.objects.exists() and not Delivery.objects.exists()


def test_emit_refuses_to_run_outside_the_transaction_of_its_change(hook: Webhook) -> None:
    with pytest.raises(OutsideTransactionError):
        emit("production", "policy.created", {})
    with transaction.atomic():
        event = emit("production", "policy.created", {"name": "api"})
    assert event is not None and event.deliveries.get().webhook == hook


def test_our_json_body_names_the_event_and_the_slack_body_reads_as_a_sentence(
    hook: Webhook, production: Environment, editor: User
) -> None:
    policy = do_create_policy(production, "rate_limit", "api", LIMIT, Actor.of(editor))
    do_update_policy(policy, {"limit": 250}, Actor.of(editor), "sale <traffic>")
    event = Event.objects.get(type="policy.changed")
    assert json.loads(render(hook, event)) == json_body(event)
    assert json_body(event) == {
        "id": str(event.id),
        "type": "policy.changed",
        "environment": "production",
        "created_at": event.created_at.isoformat(),
        "data": event.payload,
    }
    body = slack_body(event)
    assert body["text"] == (
        f"{editor.username} changed rate_limit api in production (version 2): sale <traffic>"
    )
    shown = json.dumps(body["blocks"], ensure_ascii=False)
    assert "sale &lt;traffic&gt;" in shown and "limit: 100 → 250" in shown
    assert str(event.id) in shown
    hook.payload_format = Webhook.Format.SLACK
    assert json.loads(render(hook, event)) == body


def test_an_audited_change_no_webhook_wants_costs_one_query(
    production: Environment, system: Actor
) -> None:
    _webhook(events=["override.*"])
    entry = AuditEntry.objects.create(
        actor_name="alice", action="policy.update", environment="production", object_name="api"
    )
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        assert emit_for_entry(AuditEntry, entry) is None
    assert len([q for q in queries if "webhooks_" in q["sql"]]) == 1
    assert len([q for q in queries if "policies_" in q["sql"]]) == 0


def test_a_policy_save_writes_its_outbox_in_two_more_queries_whatever_the_webhooks(
    production: Environment, system: Actor
) -> None:
    policy = do_create_policy(production, "rate_limit", "api", LIMIT, system)
    with CaptureQueriesContext(connection) as alone:
        policy = do_update_policy(policy, {"limit": 5}, system)
    for number in range(10):
        _webhook(name=f"hook-{number}")

    with CaptureQueriesContext(connection) as with_webhooks:
        do_update_policy(policy, {"limit": 6}, system)

    # Alone, it asks which webhooks want the event; then the event and its 10 deliveries
    # at once. The policy's new version comes with the audit entry, not read again.
    assert len(with_webhooks) - len(alone) == 2
    assert Delivery.objects.filter(event__type="policy.changed").count() == 10
    assert Event.objects.get(type="policy.changed").payload["version"] == 3


def test_a_breaker_reset_lifts_its_override_and_a_cache_purge_changes_its_policy(
    hook: Webhook, production: Environment, system: Actor
) -> None:
    do_create_policy(production, "breaker", "payments", {}, system, audit_action="policy.adopt")
    do_create_policy(production, "cache", "prices", {}, system)
    do_reset_breaker(production, "payments", system, "nothing to lift")
    do_set_override(production, "breaker", "payments", "forced_open", system, "incident")
    do_reset_breaker(production, "payments", system, "recovered")
    do_purge_cache(production, "prices", system, "bad prices cached")
    events = _events()
    assert [e.type for e in events] == [
        "policy.created",
        "policy.created",
        "override.placed",
        "override.lifted",
        "policy.changed",
    ]
    lifted, purged = events[3].payload, events[4].payload
    assert (lifted["state"], lifted["reset"], lifted["reason"]) == (
        "forced_open",
        True,
        "recovered",
    )
    assert (purged["name"], purged["version"]) == ("prices", 2)
    assert "bad prices cached" in purged["reason"]
