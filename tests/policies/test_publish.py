from __future__ import annotations

import json

import pytest
import redis
from django.contrib.auth.models import User

from controlplane.accounts.actors import Actor
from controlplane.policies.actions import (
    StaleVersionError,
    do_create_policy,
    do_delete_policy,
    do_rollback_policy,
    do_update_policy,
)
from controlplane.policies.models import Environment, PolicyVersion
from controlplane.policies.publish import write_document
from controlplane.protocol.documents import (
    SECTION_POLICIES,
    ChangeMessage,
    MetaDocument,
    PolicyDocument,
)
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def _subscribe(client: redis.Redis, channel: str) -> redis.client.PubSub:
    pubsub = client.pubsub()
    pubsub.subscribe(channel)
    wait_for(lambda: pubsub.get_message(timeout=0.1))  # the subscribe confirmation
    return pubsub


def _next_change(pubsub: redis.client.PubSub) -> ChangeMessage:
    message = wait_for(lambda: pubsub.get_message(timeout=0.1))
    return ChangeMessage.decode(message["data"])


def test_saved_change_is_in_redis_with_a_new_version_and_announced(
    production: Environment, system: Actor, redis_client: redis.Redis
) -> None:
    keys = production.keys()
    policy = do_create_policy(production, "breaker", "payments", {"open_for": 30}, system)
    pubsub = _subscribe(redis_client, keys.changes)

    do_update_policy(policy, {"open_for": "45s"}, system, "slower recovery")

    change = _next_change(pubsub)
    assert (change.section, change.field, change.revision) == (
        SECTION_POLICIES,
        "breaker:payments",
        2,
    )
    stored = PolicyDocument.decode(redis_client.hget(keys.policies, "breaker:payments"))
    assert (stored.version, stored.revision, stored.spec["open_for"]) == (2, 2, 45.0)
    assert PolicyDocument.decode(change.document) == stored
    assert MetaDocument.decode(redis_client.get(keys.meta)).revision == 2
    pubsub.close()


def test_every_change_is_kept_as_an_immutable_version(
    production: Environment, system: Actor, viewer: User
) -> None:
    policy = do_create_policy(production, "rate_limit", "api", {"limit": 10}, system, "first")
    do_update_policy(policy, {"limit": 20}, Actor.of(viewer), "more traffic")
    do_delete_policy(policy, system, "retired")

    versions = list(PolicyVersion.objects.filter(policy=policy).order_by("version"))
    assert [(v.version, v.action, v.author_name, v.reason) for v in versions] == [
        (1, "create", "tests", "first"),
        (2, "update", "alice", "more traffic"),
        (3, "delete", "tests", "retired"),
    ]
    assert [v.spec["limit"] for v in versions] == [10, 20, 20]
    assert versions[2].deleted


def test_deleted_policy_is_published_as_a_tombstone(
    production: Environment, system: Actor, redis_client: redis.Redis
) -> None:
    policy = do_create_policy(production, "cache", "prices", {"ttl": 30}, system)
    do_delete_policy(policy, system)
    stored = PolicyDocument.decode(redis_client.hget(production.keys().policies, "cache:prices"))
    assert stored.deleted and stored.version == 2


def test_recreating_a_deleted_policy_continues_its_history(
    production: Environment, system: Actor
) -> None:
    policy = do_create_policy(production, "cache", "prices", {"ttl": 30}, system)
    do_delete_policy(policy, system)
    again = do_create_policy(production, "cache", "prices", {"ttl": 60}, system)
    assert (again.pk, again.version, again.deleted, again.spec["ttl"]) == (
        policy.pk,
        3,
        False,
        60.0,
    )


def test_rollback_restores_an_old_version_as_a_new_one(
    production: Environment, system: Actor, redis_client: redis.Redis
) -> None:
    policy = do_create_policy(production, "rate_limit", "api", {"limit": 10}, system)
    do_update_policy(policy, {"limit": 99}, system)
    rolled = do_rollback_policy(policy, 1, system)
    assert (rolled.version, rolled.spec["limit"]) == (3, 10)
    stored = PolicyDocument.decode(redis_client.hget(production.keys().policies, "rate_limit:api"))
    assert (stored.version, stored.spec["limit"]) == (3, 10)


def test_second_save_from_a_stale_form_is_refused(production: Environment, system: Actor) -> None:
    policy = do_create_policy(production, "rate_limit", "api", {"limit": 10}, system)
    do_update_policy(policy, {"limit": 20}, system, expected_version=1)
    with pytest.raises(StaleVersionError) as caught:
        do_update_policy(policy, {"limit": 30}, system, expected_version=1)
    assert caught.value.current.version == 2
    policy.refresh_from_db()
    assert policy.spec["limit"] == 20


def test_unchanged_save_creates_no_version(production: Environment, system: Actor) -> None:
    policy = do_create_policy(production, "rate_limit", "api", {"limit": 10}, system)
    do_update_policy(policy, {"limit": "10"}, system)
    assert policy.versions.count() == 1


def test_an_older_publish_arriving_late_never_replaces_a_newer_one(
    production: Environment, system: Actor, redis_client: redis.Redis
) -> None:
    keys = production.keys()
    policy = do_create_policy(production, "rate_limit", "api", {"limit": 10}, system)
    do_update_policy(policy, {"limit": 20}, system)
    late = PolicyDocument("rate_limit", "api", 1, 1, {**policy.spec, "limit": 10})

    assert not write_document(keys, SECTION_POLICIES, "rate_limit:api", late.encode(), 1)

    stored = json.loads(redis_client.hget(keys.policies, "rate_limit:api"))
    assert stored["spec"]["limit"] == 20
    assert MetaDocument.decode(redis_client.get(keys.meta)).revision == 2


def test_two_editors_saving_at_the_same_moment_one_wins_the_other_is_told(
    production: Environment, system: Actor
) -> None:
    # What this proves depends on the database: on PostgreSQL (CI's first pass) the row
    # lock of select_for_update serializes the two saves; on SQLite select_for_update
    # does nothing and the database-wide write lock does it instead.
    import threading

    from django.db import connection

    policy = do_create_policy(production, "rate_limit", "api", {"limit": 10}, system)
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def save(limit: int, name: str) -> None:
        try:
            barrier.wait(timeout=10)
            do_update_policy(policy, {"limit": limit}, Actor.system(name), expected_version=1)
            outcomes.append(f"saved by {name}")
        except StaleVersionError as exc:
            outcomes.append(f"refused: {exc.current.author_name} was first")
        finally:
            connection.close()

    threads = [
        threading.Thread(target=save, args=(20, "erin")),
        threading.Thread(target=save, args=(30, "bob")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(outcomes) == 2
    saved = [o for o in outcomes if o.startswith("saved")]
    refused = [o for o in outcomes if o.startswith("refused")]
    assert len(saved) == 1 and len(refused) == 1
    winner = saved[0].removeprefix("saved by ")
    assert refused[0] == f"refused: {winner} was first"
    policy.refresh_from_db()
    assert policy.version == 2 and policy.spec["limit"] == (20 if winner == "erin" else 30)
