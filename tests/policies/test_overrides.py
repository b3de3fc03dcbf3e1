from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
import redis
from django.utils import timezone

from controlplane.accounts.actors import Actor
from controlplane.audit.models import AuditEntry
from controlplane.client import Client
from controlplane.policies.actions import do_create_policy
from controlplane.policies.models import Environment, Override, Policy
from controlplane.policies.overrides import (
    current_override,
    do_clear_override,
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


def test_reset_refuses_a_name_outside_the_rule_writing_nothing(
    production: Environment, payments: Policy, redis_client: redis.Redis
) -> None:
    for name in ["a{b}*", "b" * 201]:
        with pytest.raises(PolicyError) as refused:
            do_reset_breaker(production, name, Actor.system("olga"), "recovered")
        assert list(refused.value.errors) == ["name"]
        assert redis_client.hget(production.keys().breakers, name) is None
    assert not AuditEntry.objects.filter(action="override.reset").exists()
