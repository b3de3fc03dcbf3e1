from __future__ import annotations

import re

import pytest
import redis
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from controlplane.accounts.actors import Actor
from controlplane.embedded_redis import RedisServer
from controlplane.policies.actions import do_create_policy, do_update_policy
from controlplane.policies.examples import load_examples
from controlplane.policies.models import Environment

pytestmark = pytest.mark.django_db(transaction=True)


def test_anonymous_is_sent_to_login(client: Client) -> None:
    response = client.get("/policies/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_post_is_not_allowed(client: Client, viewer: User) -> None:
    client.force_login(viewer)
    assert client.post("/policies/").status_code == 405


def test_lists_policies_with_their_published_version(
    client: Client, viewer: User, production: Environment, system: Actor
) -> None:
    policy = do_create_policy(production, "breaker", "payments", {}, system)
    do_update_policy(policy, {"open_for": 5}, system)
    client.force_login(viewer)

    response = client.get("/policies/")

    html = response.content.decode()
    assert response.status_code == 200
    assert 'data-policy="breaker:payments"' in html
    assert '<span class="ok">v2</span>' in html


def test_shows_a_policy_missing_from_redis(
    client: Client, viewer: User, production: Environment, system: Actor, redis_client: redis.Redis
) -> None:
    do_create_policy(production, "cache", "prices", {}, system)
    redis_client.hdel(production.keys().policies, "cache:prices")
    client.force_login(viewer)
    assert "not published" in client.get("/policies/").content.decode()


def test_a_policies_key_of_another_type_is_not_mistaken_for_a_redis_outage(
    client: Client, viewer: User, system: Actor, redis_client: redis.Redis
) -> None:
    production = Environment.objects.create(name="production")
    staging = Environment.objects.create(name="staging")
    do_create_policy(production, "cache", "prices", {}, system)
    do_create_policy(staging, "cache", "prices", {}, system)
    redis_client.delete(staging.keys().policies)
    redis_client.set(staging.keys().policies, "not a hash")  # hostile or broken
    client.force_login(viewer)

    html = client.get("/policies/").content.decode()

    assert "Redis cannot be reached" not in html
    assert '<span class="ok">v1</span>' in html  # production's, still read
    assert "not published" in html  # staging's


def test_still_answers_when_redis_is_down(
    client: Client,
    viewer: User,
    disposable_redis: RedisServer,
    production: Environment,
    system: Actor,
) -> None:
    do_create_policy(production, "cache", "prices", {}, system)
    disposable_redis.stop()
    client.force_login(viewer)

    response = client.get("/policies/")

    assert response.status_code == 200
    assert "Redis cannot be reached" in response.content.decode()


def test_login_page_renders(client: Client) -> None:
    response = client.get("/login/")
    assert response.status_code == 200
    assert b'name="password"' in response.content


def test_login_with_credentials_reaches_the_home_page(client: Client, viewer: User) -> None:
    response = client.post(
        "/login/", {"username": "alice", "password": "password-alice"}, follow=True
    )
    assert response.redirect_chain[-1][0] == "/"  # what is wrong right now
    assert "alice · viewer" in response.content.decode()


def test_user_without_a_role_is_refused(client: Client, outsider: User) -> None:
    client.force_login(outsider)
    assert client.get("/policies/").status_code == 403


def test_admin_creates_an_environment_and_it_is_audited(client: Client, admin: User) -> None:
    from controlplane.audit.models import AuditEntry

    client.force_login(admin)
    response = client.post("/environments/new/", {"name": "staging", "description": "pre-prod"})
    assert response.status_code == 302
    assert Environment.objects.get(name="staging").description == "pre-prod"
    assert AuditEntry.objects.get(action="environment.create").actor_name == "adam"
    bad = client.post("/environments/new/", {"name": "no spaces"}, follow=True)
    assert "Nothing was created" in bad.content.decode()


@pytest.fixture
def tagged(production: Environment, system: Actor) -> Environment:
    do_create_policy(production, "breaker", "payments", {}, system, tags=["payments"], team="Pay")
    do_create_policy(
        production, "rate_limit", "payments-api", {}, system, tags=["payments", "tier-1"]
    )
    do_create_policy(production, "cache", "prices", {}, system, tags=["catalogue"], team="Shop")
    return production


def _listed(client: Client, query: str) -> tuple[set[str], str]:
    html = client.get(reverse("dashboard") + query).content.decode()
    return set(re.findall(r'data-policy="([^"]+)"', html)), html


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", {"breaker:payments", "rate_limit:payments-api", "cache:prices"}),
        ("?q=PAY", {"breaker:payments", "rate_limit:payments-api"}),
        ("?kind=cache", {"cache:prices"}),
        ("?tag=payments", {"breaker:payments", "rate_limit:payments-api"}),
        ("?tag=tier-1&q=api", {"rate_limit:payments-api"}),
        ("?team=pay", {"breaker:payments"}),
        ("?q=payments&kind=breaker&tag=payments&team=Pay", {"breaker:payments"}),
    ],
)
def test_search_and_filters_are_in_the_query_string(
    client: Client, viewer: User, tagged: Environment, query: str, expected: set[str]
) -> None:
    client.force_login(viewer)
    listed, html = _listed(client, query)
    assert listed == expected
    assert f"{len(expected)} of 3 policies" in html


def test_nothing_matching_says_so_and_offers_all(
    client: Client, viewer: User, tagged: Environment
) -> None:
    client.force_login(viewer)
    listed, html = _listed(client, "?tag=nowhere")
    assert listed == set()
    assert "0 of 3 policies" in html and "data-empty-state" in html
    assert "Show all 3 policies" in html


def test_a_bad_filter_is_named_and_the_others_still_apply(
    client: Client, viewer: User, tagged: Environment
) -> None:
    client.force_login(viewer)
    listed, html = _listed(client, "?kind=teapot&tag=payments")
    assert listed == {"breaker:payments", "rate_limit:payments-api"}
    assert 'data-error-for="kind"' in html


def test_tags_and_teams_are_offered_and_shown(
    client: Client, viewer: User, tagged: Environment
) -> None:
    client.force_login(viewer)
    _, html = _listed(client, "")
    assert '<option value="tier-1">tier-1</option>' in html
    assert '<option value="Shop">Shop</option>' in html
    assert '<a class="tag" href="?tag=catalogue">catalogue</a>' in html
    assert '<th data-sort="number">Version</th>' in html  # sortable by filter.js


def test_the_examples_carry_tags_to_filter_by(client: Client, viewer: User) -> None:
    load_examples()
    client.force_login(viewer)
    listed, html = _listed(client, "?tag=tier-1&kind=breaker")
    assert listed == {"breaker:payments"}  # in production and staging
    assert html.count('data-policy="breaker:payments"') == 2
