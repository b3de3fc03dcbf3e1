"""After a save, the policy's page says where its revision went: published, applied by whom."""

from __future__ import annotations

import re
import time

import pytest
import redis
from django.contrib.auth.models import User
from django.test import Client

from controlplane.accounts.actors import Actor
from controlplane.live.rollout import ROLLOUT_TIMEOUT
from controlplane.policies.actions import do_create_policy
from controlplane.policies.models import Environment, Policy
from tests.live.test_sync import heartbeat

pytestmark = pytest.mark.django_db(transaction=True)

FORM = {
    "algorithm": "token_bucket",
    "limit": "120",
    "period": "60",
    "burst": "120",
    "key": "user",
    "custom_key": "",
    "on_redis_error": "local",
    "mode": "enforce",
    "reason": "more",
    "action": "save",
}


@pytest.fixture
def api(production: Environment, system: Actor) -> Policy:
    return do_create_policy(production, "rate_limit", "api", {}, system)


def poll_url(html: str) -> str:
    found = re.search(r'hx-get="([^"]*/rollout/[^"]*)"', html)
    assert found, html
    return found.group(1)


def test_a_save_follows_its_revision_until_every_instance_applied_it(
    client: Client, editor: User, api: Policy, redis_client: redis.Redis
) -> None:
    environment = api.environment
    now = time.time()
    heartbeat(redis_client, environment, "web-1", environment.revision, now)
    heartbeat(redis_client, environment, "web-2", environment.revision, now)
    client.force_login(editor)

    response = client.post("/e/production/rate_limit/api/edit/", {**FORM, "expected_version": 1})
    page = client.get(response["Location"]).content.decode()
    api.refresh_from_db()
    revision = api.revision
    assert f'data-revision="{revision}"' in page
    url = poll_url(page)
    assert url.startswith(f"/e/production/revisions/{revision}/rollout/?since=")
    assert "data-revision" not in client.get(response["Location"]).content.decode()  # once

    first = client.get(url).content.decode()
    assert f"Published as revision {revision}; applied by 0 of 2 instances" in first
    assert 'data-done="false"' in first and poll_url(first) == url  # asks again in 1 s

    heartbeat(redis_client, environment, "web-1", revision, time.time())
    second = client.get(url).content.decode()
    assert "applied by 1 of 2 instances" in second and 'data-done="false"' in second

    heartbeat(redis_client, environment, "web-2", revision, time.time())
    last = client.get(url).content.decode()
    assert "applied by all 2 instances" in last
    assert 'data-done="true"' in last and "hx-get" not in last  # polling stops


def test_after_the_timeout_it_names_the_instances_that_lag(
    client: Client, viewer: User, api: Policy, redis_client: redis.Redis
) -> None:
    environment = api.environment
    heartbeat(redis_client, environment, "web-1", environment.revision, time.time())
    heartbeat(redis_client, environment, "web-2", environment.revision - 1, time.time())
    client.force_login(viewer)
    since = time.time() - ROLLOUT_TIMEOUT - 1

    html = client.get(
        f"/e/production/revisions/{environment.revision}/rollout/?since={since}"
    ).content.decode()

    assert "applied by 1 of 2 instances after 30 s" in html
    assert 'data-lagging="web-2"' in html and 'data-lagging="web-1"' not in html
    assert "hx-get" not in html


def test_while_unpublished_it_says_the_change_waits_for_redis(
    client: Client, viewer: User, api: Policy, redis_client: redis.Redis
) -> None:
    environment = api.environment
    redis_client.delete(environment.keys().meta)  # as if the publish had failed
    client.force_login(viewer)

    html = client.get(
        f"/e/production/revisions/{environment.revision}/rollout/?since={time.time()}"
    ).content.decode()

    assert f"Saved as revision {environment.revision}; will publish when Redis answers" in html
    assert "hx-get" in html  # keeps asking until the timeout


@pytest.mark.parametrize("since", ["", "nan", "inf", "soon"])
def test_a_missing_or_odd_start_answers_once(
    client: Client, viewer: User, api: Policy, since: str
) -> None:
    client.force_login(viewer)
    html = client.get(
        f"/e/production/revisions/{api.environment.revision}/rollout/?since={since}"
    ).content.decode()
    assert 'data-done="true"' in html and "hx-get" not in html
