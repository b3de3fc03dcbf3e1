from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.core.management import call_command

from controlplane.accounts.actors import Actor
from controlplane.embedded_redis import RedisServer
from controlplane.policies import reconcile
from controlplane.policies.actions import (
    do_create_environment,
    do_create_policy,
    do_update_policy,
)
from controlplane.policies.models import Environment, Policy
from controlplane.policies.publish import policy_document
from controlplane.policies.reconcile import (
    Drift,
    Reconciler,
    quick_check,
    reconcile_all,
    reconcile_environment,
)
from controlplane.protocol.connection import connect
from controlplane.protocol.documents import MetaDocument, PolicyDocument
from controlplane.redis_connection import get_redis
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def reconciler(disposable_redis: RedisServer) -> Iterator[Reconciler]:
    thread = Reconciler(interval=0.05, full_interval=0.5)
    thread.start()
    yield thread
    thread.stop()


def _published(environment: Environment, field: str) -> PolicyDocument | None:
    try:
        raw = get_redis().hget(environment.keys().policies, field)
    except redis.RedisError:
        return None
    return PolicyDocument.decode(raw) if raw else None


def test_change_saved_while_redis_is_down_is_published_when_it_returns(
    disposable_redis: RedisServer, production: Environment, system: Actor
) -> None:
    policy = do_create_policy(production, "rate_limit", "api", {"limit": 10}, system)
    disposable_redis.stop()

    do_update_policy(policy, {"limit": 25}, system, "saved during the outage")

    policy.refresh_from_db()
    assert (policy.version, policy.spec["limit"]) == (2, 25)
    thread = Reconciler(interval=0.05, full_interval=60)
    thread.start()
    try:
        disposable_redis.start()
        stored = wait_for(
            lambda: (doc := _published(production, "rate_limit:api")) and doc.version == 2 and doc
        )
        assert stored.spec["limit"] == 25
        # The reconciler writes the meta document after the policies: wait for it too.
        meta = MetaDocument.decode(wait_for(lambda: get_redis().get(production.keys().meta)))
        assert meta.revision == 2
    finally:
        thread.stop()


def test_the_quick_check_publishes_a_change_whose_publish_was_lost(
    disposable_redis: RedisServer, production: Environment, system: Actor
) -> None:
    policy = do_create_policy(production, "rate_limit", "api", {"limit": 10}, system)
    # No full comparison during the test: only the quick check can find the change.
    thread = Reconciler(interval=0.05, full_interval=3600)
    thread.start()
    try:
        wait_for(lambda: thread.last_success)
        # Committed, but the process died before publishing (what on_commit would have done).
        Environment.objects.filter(pk=production.pk).update(revision=2)
        Policy.objects.filter(pk=policy.pk).update(
            spec={**policy.spec, "limit": 25}, version=2, revision=2
        )
        stored = wait_for(
            lambda: (doc := _published(production, "rate_limit:api")) and doc.version == 2 and doc
        )
        assert stored.spec["limit"] == 25
    finally:
        thread.stop()


def test_reconciler_restores_everything_after_flushall(
    reconciler: Reconciler, production: Environment, system: Actor
) -> None:
    staging = Environment.objects.create(name="staging")
    do_create_policy(production, "breaker", "payments", {}, system)
    do_create_policy(production, "config", "banner", {"value": "hello"}, system)
    do_create_policy(staging, "cache", "prices", {"ttl": 5}, system)
    before = {env.name: get_redis().hgetall(env.keys().policies) for env in (production, staging)}

    get_redis().flushall()

    def restored() -> bool:
        # The meta revision comes back last, once an environment's repair is complete.
        return all(
            get_redis().get(env.keys().meta) is not None
            and get_redis().hgetall(env.keys().policies) == before[env.name]
            for env in (production, staging)
        )

    wait_for(restored)
    assert MetaDocument.decode(get_redis().get(staging.keys().meta)).revision == 1


def test_reconciler_repairs_corrupt_and_removes_extra_documents(
    production: Environment, system: Actor, redis_client: redis.Redis
) -> None:
    keys = production.keys()
    policy = do_create_policy(production, "breaker", "payments", {}, system)
    redis_client.hset(keys.policies, "breaker:payments", "{not json")
    redis_client.hset(keys.policies, "breaker:ghost", "{}")

    drift = reconcile_environment(production)

    assert (drift.corrupt, drift.extra) == (["breaker:payments"], ["breaker:ghost"])
    assert redis_client.hgetall(keys.policies) == {
        "breaker:payments": policy_document(policy).encode()
    }
    assert reconcile_environment(production).clean


def test_reconciler_replaces_a_document_newer_than_the_database(
    production: Environment, system: Actor, redis_client: redis.Redis
) -> None:
    keys = production.keys()
    policy = do_create_policy(production, "rate_limit", "api", {"limit": 5}, system)
    forged = PolicyDocument("rate_limit", "api", 9, 99, {**policy.spec, "limit": 5000})
    redis_client.hset(keys.policies, "rate_limit:api", forged.encode())

    drift = reconcile_environment(production)

    assert drift.stale == ["rate_limit:api"]
    assert (
        PolicyDocument.decode(redis_client.hget(keys.policies, "rate_limit:api")).spec["limit"] == 5
    )


def test_drift_command_reports_without_repairing(
    production: Environment, system: Actor, redis_client: redis.Redis, capsys: Any
) -> None:
    do_create_policy(production, "breaker", "payments", {}, system)
    redis_client.hdel(production.keys().policies, "breaker:payments")

    with pytest.raises(SystemExit) as exited:
        call_command("policy_drift")

    assert exited.value.code == 1
    assert "missing: breaker:payments" in capsys.readouterr().out
    assert redis_client.hget(production.keys().policies, "breaker:payments") is None


def test_drift_command_fails_when_an_environment_cannot_be_compared(
    production: Environment, system: Actor, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    staging = do_create_environment("staging", system)
    compare = reconcile.reconcile_environment

    def broken_for_staging(environment: Environment, *, repair: bool = True) -> Drift:
        if environment.name == "staging":
            raise RuntimeError("a bug of ours")
        return compare(environment, repair=repair)

    monkeypatch.setattr(reconcile, "reconcile_environment", broken_for_staging)
    with pytest.raises(SystemExit) as exited:
        call_command("policy_drift")

    assert exited.value.code == 1
    out = capsys.readouterr().out
    assert f"{staging.name}: could not be compared (RuntimeError: a bug of ours)" in out
    assert "production: database at revision" in out  # the other environment still compared


def test_publish_command_repairs(
    production: Environment, system: Actor, redis_client: redis.Redis, capsys: Any
) -> None:
    do_create_policy(production, "breaker", "payments", {}, system)
    redis_client.delete(production.keys().policies, production.keys().meta)

    call_command("publish_policies")

    assert "Repaired" in capsys.readouterr().out
    assert redis_client.hget(production.keys().policies, "breaker:payments") is not None
    call_command("policy_drift")  # exits 0 when in sync
    assert "in sync at revision 1" in capsys.readouterr().out


def test_undecodable_bytes_are_repaired_and_the_pass_goes_on_to_the_next_environment(
    production: Environment, system: Actor, settings: Any, caplog: Any
) -> None:
    # Issue 10, item 3: one non-UTF-8 byte stopped the full pass at its environment.
    raw = connect(settings.REDIS_URL)
    alpha = do_create_environment("alpha", system)  # compared before production
    banner = do_create_policy(alpha, "config", "banner", {"value": "good"}, system)
    payments = do_create_policy(production, "breaker", "payments", {}, system)
    raw.hset(alpha.keys().policies, "config:banner", b"\xff")
    raw.hset(alpha.keys().policies, b"config:\xfe", b"{}")
    raw.hdel(production.keys().policies, "breaker:payments")

    drifts = reconcile_all()

    assert [(d.environment, d.corrupt, d.extra) for d in drifts] == [
        ("alpha", ["config:banner"], ["config:\\xfe"]),
        ("production", [], []),
    ]
    assert raw.hgetall(alpha.keys().policies) == {
        b"config:banner": policy_document(banner).encode().encode()
    }
    assert raw.hgetall(production.keys().policies) == {
        b"breaker:payments": policy_document(payments).encode().encode()
    }
    assert all(drift.clean for drift in reconcile_all())
    assert not [r for r in caplog.records if r.exc_info]


@pytest.mark.parametrize(
    "meta",
    [
        b"\xff",
        b'{"schema":1,"environment":"production","revision":1e300}',
    ],
)
def test_a_malformed_meta_document_is_replaced(
    production: Environment, system: Actor, settings: Any, meta: bytes
) -> None:
    # A meta value the publish script reads as a huge revision would block every raise.
    raw = connect(settings.REDIS_URL)
    do_create_policy(production, "breaker", "payments", {}, system)
    raw.set(production.keys().meta, meta)

    assert quick_check() == [production]
    reconcile_environment(production)

    assert MetaDocument.decode(raw.get(production.keys().meta)).revision == 1
    assert quick_check() == []


def test_keys_of_another_redis_type_are_rebuilt_from_the_database(
    production: Environment, system: Actor, settings: Any
) -> None:
    raw = connect(settings.REDIS_URL)
    keys = production.keys()
    policy = do_create_policy(production, "breaker", "payments", {}, system)
    raw.delete(keys.policies, keys.meta)
    raw.set(keys.policies, "not a hash")
    raw.hset(keys.meta, "not", "a string")

    assert quick_check() == [production]
    drift = reconcile_environment(production)

    assert drift.corrupt and not drift.clean
    assert raw.hgetall(keys.policies) == {
        b"breaker:payments": policy_document(policy).encode().encode()
    }
    assert MetaDocument.decode(raw.get(keys.meta)).revision == 1
    assert reconcile_environment(production).clean


def test_a_document_filed_under_another_field_is_corrupt(
    production: Environment, system: Actor, settings: Any
) -> None:
    raw = connect(settings.REDIS_URL)
    keys = production.keys()
    payments = do_create_policy(production, "breaker", "payments", {}, system)
    other = do_create_policy(production, "breaker", "other", {}, system)
    raw.hset(keys.policies, "breaker:payments", policy_document(other).encode())

    drift = reconcile_environment(production)

    assert drift.corrupt == ["breaker:payments"]
    repaired: Any = raw.hget(keys.policies, "breaker:payments")
    assert repaired == policy_document(payments).encode().encode()
