from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import redis
from django.core.management import call_command
from django.db import DatabaseError, transaction
from django.utils import timezone

from controlplane.accounts.actors import Actor
from controlplane.audit.models import AuditEntry
from controlplane.client import Client
from controlplane.policies import overrides
from controlplane.policies.actions import do_create_policy
from controlplane.policies.models import Environment, Override, Policy
from controlplane.policies.overrides import (
    current_override,
    do_clear_override,
    do_purge_cache,
    do_reset_breaker,
    do_set_override,
    expire_overrides,
)
from controlplane.policies.reconcile import reconcile_environment
from controlplane.protocol.documents import OverrideDocument
from controlplane.protocol.schema import PolicyError
from tests.client.conftest import client_factory
from tests.conftest import wait_for

__all__ = ["client_factory"]  # a fixture of the client tests, used here too

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def payments(production: Environment, system: Actor) -> Policy:
    return do_create_policy(production, "breaker", "payments", {}, system)


def _stored(client: redis.Redis, environment: Environment, field: str) -> OverrideDocument:
    return OverrideDocument.decode(client.hget(environment.keys().overrides, field))


def test_trip_is_published_audited_and_leaves_the_policy_alone(
    production: Environment, payments: Policy, redis_client: redis.Redis
) -> None:
    expires = timezone.now() + timedelta(minutes=10)
    do_set_override(
        production, "breaker", "payments", "forced_open", Actor.system("olga"), "db down", expires
    )
    stored = _stored(redis_client, production, "breaker:payments")
    assert (stored.state, stored.reason, stored.actor) == ("forced_open", "db down", "olga")
    assert stored.expires_at == pytest.approx(expires.timestamp())
    payments.refresh_from_db()
    assert payments.version == 1  # the policy itself is untouched
    entry = AuditEntry.objects.get(action="override.set")
    assert entry.changes["state"] == [None, "forced_open"]


def test_clients_follow_set_and_clear(
    production: Environment, payments: Policy, client_factory: Callable[..., Client]
) -> None:
    client = client_factory().start()
    do_set_override(production, "breaker", "payments", "forced_open", Actor.system("olga"), "x")
    wait_for(lambda: client.state.override("breaker", "payments") is not None)
    do_clear_override(production, "breaker", "payments", Actor.system("olga"), "recovered")
    wait_for(lambda: client.state.override("breaker", "payments") is None)
    assert AuditEntry.objects.get(action="override.clear").changes == {
        "state": ["forced_open", None]
    }


def test_expired_override_is_lifted_and_audited(
    production: Environment, payments: Policy, redis_client: redis.Redis
) -> None:
    override = do_set_override(
        production,
        "breaker",
        "payments",
        "disabled",
        Actor.system("olga"),
        "maintenance",
        timezone.now() + timedelta(minutes=5),
    )
    assert expire_overrides() == []
    lifted = expire_overrides(now=override.expires_at + timedelta(seconds=1))  # type: ignore[operator]
    assert [o.state for o in lifted] == [""]
    assert _stored(redis_client, production, "breaker:payments").state is None
    entry = AuditEntry.objects.get(action="override.expire")
    assert (entry.actor_name, entry.changes["state"]) == ("expiry", ["disabled", None])


@pytest.mark.parametrize(
    ("kind", "state", "reason", "field"),
    [
        ("breaker", "block_all", "x", "state"),
        ("cache", "forced_open", "x", "kind"),
        ("breaker", "forced_open", "  ", "reason"),
    ],
)
def test_bad_override_is_refused_naming_the_field(
    production: Environment, kind: str, state: str, reason: str, field: str
) -> None:
    with pytest.raises(PolicyError) as caught:
        do_set_override(production, kind, "payments", state, Actor.system("olga"), reason)
    assert field in caught.value.errors
    assert not Override.objects.exists()


def test_reconciler_restores_overrides_after_flushall(
    production: Environment, payments: Policy, redis_client: redis.Redis
) -> None:
    do_set_override(production, "breaker", "payments", "forced_open", Actor.system("olga"), "x")
    do_set_override(production, "rate_limit", "api", "block_all", Actor.system("olga"), "abuse")
    do_clear_override(production, "rate_limit", "api", Actor.system("olga"), "abuse over")
    before = redis_client.hgetall(production.keys().overrides)
    for key in (production.keys().overrides, production.keys().policies, production.keys().meta):
        redis_client.delete(key)

    drift = reconcile_environment(production)

    assert sorted(drift.missing) == [
        "breaker:payments",
        "override breaker:payments",
        "override rate_limit:api",
    ]
    assert redis_client.hgetall(production.keys().overrides) == before
    assert current_override(production, "rate_limit", "api") is None
    assert reconcile_environment(production).clean


def test_reset_from_the_control_plane_clears_a_closed_breakers_window(
    production: Environment, client_factory: Callable[..., Client]
) -> None:
    do_create_policy(
        production,
        "breaker",
        "payments",
        {"minimum_calls": 50, "window_size": 100},
        Actor.system("t"),
    )
    client = client_factory().start()
    breaker = client.breaker("payments")

    @breaker
    def fail() -> None:
        raise OSError("upstream")

    for _ in range(10):
        with pytest.raises(OSError):
            fail()
    assert breaker.stats()["window_calls"] == 10 and breaker.state == "closed"

    do_reset_breaker(production, "payments", Actor.system("olga"), "clean slate")

    wait_for(lambda: breaker.stats()["window_calls"] == 0)
    assert breaker.state == "closed"


def test_lifting_needs_a_reason_and_a_valid_name(
    production: Environment, payments: Policy, redis_client: redis.Redis
) -> None:
    do_set_override(production, "breaker", "payments", "forced_open", Actor.system("olga"), "x")
    for name, reason, field in [
        ("payments", "", "reason"),
        ("payments", "x" * 1001, "reason"),
        ("a{b}*", "recovered", "name"),
        ("a" * 101, "recovered", "name"),
    ]:
        with pytest.raises(PolicyError) as refused:
            do_clear_override(production, "breaker", name, Actor.system("olga"), reason)
        assert list(refused.value.errors) == [field]
    assert current_override(production, "breaker", "payments") is not None
    assert _stored(redis_client, production, "breaker:payments").state == "forced_open"
    assert Override.objects.count() == 1


def test_a_reset_that_lifts_an_override_is_one_audit_row(
    production: Environment, payments: Policy, redis_client: redis.Redis
) -> None:
    do_set_override(production, "breaker", "payments", "forced_open", Actor.system("olga"), "x")
    mark = AuditEntry.objects.count()

    lifted = do_reset_breaker(production, "payments", Actor.system("olga"), "recovered")

    assert lifted is not None and lifted.state == "forced_open"
    entries = list(AuditEntry.objects.order_by("id")[mark:])
    assert [(e.action, e.reason, e.changes) for e in entries] == [
        ("override.reset", "recovered", {"state": ["forced_open", None]})
    ]
    assert current_override(production, "breaker", "payments") is None
    assert _stored(redis_client, production, "breaker:payments").state is None  # lift published


def test_reset_refuses_a_name_outside_the_rule_writing_nothing(
    production: Environment, payments: Policy, redis_client: redis.Redis
) -> None:
    for name in ["a{b}*", "b" * 201]:
        with pytest.raises(PolicyError) as refused:
            do_reset_breaker(production, name, Actor.system("olga"), "recovered")
        assert list(refused.value.errors) == ["name"]
        assert redis_client.hget(production.keys().breakers, name) is None
    assert not AuditEntry.objects.filter(action="override.reset").exists()


def test_override_keeps_its_table_and_the_migrations_describe_the_models() -> None:
    assert Override._meta.app_label == "policies"
    assert Override._meta.db_table == "live_override"  # the rows never moved
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)  # SystemExit if not


@pytest.mark.parametrize("action", ["set", "clear", "reset", "purge"])
def test_every_override_action_is_its_own_durable_transaction(
    production: Environment, payments: Policy, system: Actor, action: str
) -> None:
    do_create_policy(production, "cache", "prices", {"ttl": 30}, system)
    run = {
        "set": lambda: do_set_override(production, "breaker", "payments", "disabled", system, "x"),
        "clear": lambda: do_clear_override(production, "breaker", "payments", system, "x"),
        "reset": lambda: do_reset_breaker(production, "payments", system, "x"),
        "purge": lambda: do_purge_cache(production, "prices", system, "x"),
    }[action]
    with pytest.raises(RuntimeError, match="durable"), transaction.atomic():
        run()
    assert not Override.objects.exists()
    assert not AuditEntry.objects.filter(action__startswith="override.").exists()


def test_expiry_lifts_each_override_in_a_durable_transaction(
    production: Environment, payments: Policy, system: Actor
) -> None:
    override = do_set_override(
        production, "breaker", "payments", "disabled", system, "x", timezone.now() + timedelta(1)
    )
    assert override.expires_at is not None
    with pytest.raises(RuntimeError, match="durable"), transaction.atomic():
        expire_overrides(now=override.expires_at + timedelta(seconds=1))
    assert current_override(production, "breaker", "payments") == override


def test_a_reset_is_one_transaction_whose_failure_lifts_nothing(
    production: Environment,
    payments: Policy,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    do_set_override(production, "breaker", "payments", "forced_open", Actor.system("olga"), "x")
    audit = overrides.record

    def refuse_the_reset(actor: Actor, action: str, **fields: Any) -> AuditEntry:
        if action == "override.reset":
            raise DatabaseError("the audit log is full")
        return audit(actor, action, **fields)

    monkeypatch.setattr(overrides, "record", refuse_the_reset)
    with pytest.raises(DatabaseError):
        do_reset_breaker(production, "payments", Actor.system("olga"), "clean slate")

    override = current_override(production, "breaker", "payments")
    assert override is not None and override.state == "forced_open"
    assert not AuditEntry.objects.filter(action="override.clear").exists()
    assert _stored(redis_client, production, "breaker:payments").state == "forced_open"
    assert redis_client.hget(production.keys().breakers, "payments") is None  # never reset


def test_in_force_is_the_newest_row_set_and_not_yet_expired(
    production: Environment, payments: Policy, system: Actor
) -> None:
    soon = timezone.now() + timedelta(minutes=5)
    tripped = do_set_override(production, "breaker", "payments", "forced_open", system, "x", soon)
    blocked = do_set_override(production, "rate_limit", "api", "block_all", system, "abuse")
    do_set_override(production, "rate_limit", "other", "bypass", system, "y")
    do_clear_override(production, "rate_limit", "other", system, "over")
    now, later = timezone.now(), soon + timedelta(seconds=1)

    in_force = Override.objects.filter(environment=production).in_force(now)
    assert sorted(o.field for o in in_force) == ["breaker:payments", "rate_limit:api"]
    assert [o.field for o in Override.objects.in_force(later)] == ["rate_limit:api"]
    assert [o.field for o in Override.objects.expired(later)] == ["breaker:payments"]
    assert tripped.in_force(now) and not tripped.in_force(later)
    assert blocked.in_force(later)
    lifted = Override.objects.filter(name="other").newest().get()
    assert lifted.state == "" and not lifted.in_force(now)
    assert (tripped.label, lifted.label) == ("forced open", "")


def test_a_change_is_announced_to_open_dashboards_once_committed(
    production: Environment,
    payments: Policy,
    system: Actor,
    announced: list[tuple[str, str, bool]],
) -> None:
    do_set_override(production, "breaker", "payments", "forced_open", system, "x")
    do_reset_breaker(production, "payments", system, "back")
    assert announced == [  # each after its transaction committed
        ("production", "breaker:payments", True),  # the trip
        ("production", "breaker:payments", True),  # the reset's lift
        ("production", "breaker:payments", True),  # the reset
    ]


def test_a_purge_that_would_raise_the_generation_beyond_2_53_is_refused(
    production: Environment, system: Actor
) -> None:
    cache = do_create_policy(production, "cache", "prices", {"generation": 2**53 - 1}, system)
    with pytest.raises(PolicyError) as refused:
        do_purge_cache(production, "prices", system, "new prices")
    assert "2^53 - 1" in refused.value.errors["generation"][0]
    cache.refresh_from_db()
    assert cache.spec["generation"] == 2**53 - 1
    assert not AuditEntry.objects.filter(action__contains="purge").exists()
