from __future__ import annotations

from typing import Any

import pytest
import redis

from controlplane.accounts.actors import Actor
from controlplane.policies.actions import do_create_policy, do_update_policy
from controlplane.policies.models import Environment, Policy, PolicyVersion
from controlplane.protocol.schema import PolicyError
from tests.protocol.test_schema import BAD_VALUES, CONTEXT, every_field

pytestmark = pytest.mark.django_db(transaction=True)

GOOD = {"breaker": {}, "rate_limit": {}, "cache": {}, "config": {"value_type": "string"}}


def _redis_state(client: redis.Redis, environment: Environment) -> tuple[Any, Any]:
    keys = environment.keys()
    return client.hgetall(keys.policies), client.get(keys.meta)


@pytest.mark.parametrize(("kind", "field"), every_field())
def test_bad_field_changes_nothing_in_database_or_redis(
    kind: str, field: str, production: Environment, system: Actor, redis_client: redis.Redis
) -> None:
    existing = do_create_policy(production, kind, "existing", GOOD[kind], system)
    before_db = (Policy.objects.count(), PolicyVersion.objects.count(), existing.spec)
    before_redis = _redis_state(redis_client, production)
    bad = {**CONTEXT.get((kind, field), {}), field: BAD_VALUES[kind][field]}

    with pytest.raises(PolicyError) as on_create:
        do_create_policy(production, kind, "fresh", bad, system)
    with pytest.raises(PolicyError) as on_update:
        do_update_policy(existing, bad, system)

    assert field in on_create.value.errors
    assert field in on_update.value.errors
    existing.refresh_from_db()
    production.refresh_from_db()
    assert (Policy.objects.count(), PolicyVersion.objects.count(), existing.spec) == before_db
    assert production.revision == 1
    assert _redis_state(redis_client, production) == before_redis


def test_duplicate_name_is_refused_naming_the_name(production: Environment, system: Actor) -> None:
    do_create_policy(production, "breaker", "payments", {}, system)
    with pytest.raises(PolicyError) as caught:
        do_create_policy(production, "breaker", "payments", {}, system)
    assert list(caught.value.errors) == ["name"]
    assert Policy.objects.count() == 1


def test_same_name_in_another_kind_is_allowed(production: Environment, system: Actor) -> None:
    do_create_policy(production, "breaker", "payments", {}, system)
    do_create_policy(production, "rate_limit", "payments", {}, system)
    assert Policy.objects.count() == 2
