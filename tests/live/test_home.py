"""The home page: what is wrong right now, per environment, and its live card pushes."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from controlplane.accounts.actors import Actor
from controlplane.live import push
from controlplane.live.ingest import process_entries
from controlplane.live.push import send_now
from controlplane.policies.actions import do_create_policy
from controlplane.policies.models import Environment
from controlplane.policies.overrides import do_set_override
from controlplane.redis_connection import get_redis
from tests.live.conftest import session_communicator
from tests.live.test_sync import heartbeat, published

pytestmark = pytest.mark.django_db(transaction=True)


def _heartbeat(environment: Environment, instance: str, revision: int | None = None) -> None:
    heartbeat = {
        "service": "shop",
        "host": "h",
        "pid": 1,
        "revision": environment.revision if revision is None else revision,
        "connected": True,
        "at": time.time(),
    }
    get_redis().hset(environment.keys().instances, instance, json.dumps(heartbeat))


def _report(
    environment: Environment, instance: str, policies: dict[str, Any], ago: float = 2
) -> None:
    data = json.dumps({"at": time.time() - ago, "policies": policies})
    entry = {"type": "counters", "instance": instance, "data": data}
    process_entries(environment, [("1-0", entry)])


def _home(client: Client, user: User) -> str:
    client.force_login(user)
    response = client.get("/")
    assert response.status_code == 200
    return response.content.decode()


def _card(html: str, environment: str) -> str:
    start = html.index(f'id="home-{environment}"')
    return html[start : html.index("</section>", start)]


def test_all_clear_is_said_as_such(
    client: Client, viewer: User, production: Environment, policies: None
) -> None:
    _heartbeat(production, "i1")
    _report(production, "i1", {"breaker:payments": {"calls": 10, "state": "closed"}})

    html = _home(client, viewer)

    assert 'data-all-clear="true"' in html
    card = _card(html, "production")
    assert "all clear" in card and "data-all-clear" in card
    assert "1 instance reporting, 1 on revision" in card
    assert "every instance in sync." in card
    assert 'ws-connect="/ws/home/"' in html


def test_all_clear_with_no_instance_says_that_none_reports(
    client: Client, viewer: User, production: Environment, policies: None
) -> None:
    card = _card(_home(client, viewer), "production")
    assert "and no instance is reporting." in card and "every instance" not in card


def test_an_open_breaker_leads_with_how_many_instances_and_its_figures(
    client: Client, viewer: User, production: Environment, policies: None, system: Actor
) -> None:
    staging = Environment.objects.create(name="staging")
    do_create_policy(staging, "breaker", "search", {}, system)
    _heartbeat(production, "i1")
    _heartbeat(production, "i2")
    _report(production, "i1", {"breaker:payments": {"calls": 10, "failures": 6, "state": "open"}})
    _report(production, "i2", {"breaker:payments": {"calls": 10, "failures": 0, "state": "closed"}})

    html = _home(client, viewer)

    assert 'data-all-clear="false"' in html
    # The environment with a problem comes before the one without.
    assert html.index('id="home-production"') < html.index('id="home-staging"')
    card = _card(html, "production")
    assert "health-critical" in html[html.index('id="home-production"') - 80 :][:200]
    assert 'data-problem="breaker:payments"' in card
    assert "payments is open on 1 of 2 instances" in card
    assert "failures 30.0 % of 4.0 calls/s (last 5 s)" in card  # 6 of 20 calls over 5 s
    assert "opened at" not in card  # no transition reported: nothing to say it opened at
    assert 'href="/e/production/breaker/payments/"' in card
    assert 'href="/e/production/live/#live-breaker-payments"' in card  # where to act
    assert "all clear" in _card(html, "staging")


def test_an_override_shows_who_why_and_time_left_instead_of_a_problem(
    client: Client, viewer: User, production: Environment, policies: None, system: Actor
) -> None:
    _heartbeat(production, "i1")
    _report(production, "i1", {"breaker:payments": {"calls": 1, "state": "forced_open"}})
    do_set_override(
        production,
        "breaker",
        "payments",
        "forced_open",
        system,
        "database failover",
        expires_at=timezone.now() + timedelta(minutes=52),
    )

    card = _card(_home(client, viewer), "production")

    assert 'data-problem="breaker:payments"' not in card
    assert 'data-override="breaker:payments"' in card
    assert "forced open" in card and '"override-reason">database failover</q>' in card
    assert 'href="/e/production/live/#live-breaker-payments"' in card
    assert "by tests" in card
    assert "51\xa0minutes left" in card or "52\xa0minutes left" in card
    assert "overridden" in card


def test_a_rejecting_limiter_names_its_share_window_and_top_subjects(
    client: Client, viewer: User, production: Environment, policies: None
) -> None:
    _heartbeat(production, "i1")
    limiter = {"allowed": 5, "rejected": 15, "top_rejected": {"user:9": 12, "user:4": 3}}
    _report(production, "i1", {"rate_limit:api": limiter})

    card = _card(_home(client, viewer), "production")

    assert "api is rejecting" in card
    assert "3.0/s rejected, 75 % of decisions (last 5 s)" in card
    assert "most rejected over the last 2 min: user:9 (12), user:4 (3)" in card
    assert "severity-critical" in card  # most decisions are rejections


def test_a_limiter_rejecting_a_trickle_is_not_a_problem(
    client: Client, viewer: User, production: Environment, policies: None
) -> None:
    _heartbeat(production, "i1")
    _report(production, "i1", {"rate_limit:api": {"allowed": 1000, "rejected": 1}})

    assert "all clear" in _card(_home(client, viewer), "production")


def test_a_cache_whose_hit_ratio_fell_is_told_from_one_always_low(
    client: Client, viewer: User, production: Environment, policies: None, system: Actor
) -> None:
    do_create_policy(production, "cache", "always_cold", {"ttl": 30}, system)
    _heartbeat(production, "i1")
    # The minute before: prices hit 95 %, always_cold 10 %.
    _report(
        production,
        "i1",
        {
            "cache:prices": {"hits": 95, "misses": 5},
            "cache:always_cold": {"hits": 10, "misses": 90},
        },
        ago=30,
    )
    # Now: prices at 0 %, always_cold at 10 %.
    _report(
        production,
        "i1",
        {
            "cache:prices": {"misses": 100},
            "cache:always_cold": {"hits": 10, "misses": 90},
        },
    )

    card = _card(_home(client, viewer), "production")

    assert "prices hit ratio fell" in card
    assert "hit ratio 0 % (last 5 s), was 95 % over the 60 s before" in card
    assert "always_cold" not in card


def test_instances_behind_or_gone_silent_are_problems_applying_ones_are_not(
    client: Client, viewer: User, production: Environment, policies: None, system: Actor
) -> None:
    redis_client = get_redis()
    now = time.time()
    published(redis_client, production, now - 60)  # the revision is a minute old
    _heartbeat(production, "i1")
    _heartbeat(production, "i2", revision=production.revision - 1)
    heartbeat(redis_client, production, "crashed", production.revision, now - 20)

    card = _card(_home(client, viewer), "production")
    assert "1 of 2 instances behind" in card
    assert f"the environment is at revision {production.revision}" in card
    assert "1 instance gone silent" in card and "(shop)" in card

    # A change published just now: instances on the revision before are applying it.
    published(redis_client, production, time.time())
    card = _card(_home(client, viewer), "production")
    assert "instances behind" not in card


def test_anonymous_is_sent_to_login_and_the_policy_list_moved(
    client: Client, viewer: User, production: Environment, policies: None
) -> None:
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    client.force_login(viewer)
    assert 'data-policy="breaker:payments"' in client.get("/policies/").content.decode()


async def test_the_home_card_follows_a_breaker_opening_over_the_websocket(
    production: Environment,
    viewer: User,
    system: Actor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The real channel layer (its keys are this run's): the figures pusher, a thread of
    # its own, renders the card that a state push asks for.
    monkeypatch.setattr(push, "_sent", push._Sent())
    await database_sync_to_async(do_create_policy)(production, "breaker", "payments", {}, system)
    communicator = await session_communicator(viewer, "/ws/home/")
    assert (await communicator.connect())[0]

    await database_sync_to_async(_heartbeat)(production, "i1")
    await database_sync_to_async(_report)(
        production, "i1", {"breaker:payments": {"calls": 10, "failures": 9, "state": "open"}}
    )
    await database_sync_to_async(send_now)("production", {"breaker:payments"})

    card = await communicator.receive_from(timeout=15)
    assert 'id="home-production"' in card and 'hx-swap-oob="true"' in card
    assert "payments is open on every instance" in card

    # The same card again is not sent again.
    await database_sync_to_async(send_now)("production", {"breaker:payments"})
    assert await communicator.receive_nothing(timeout=0.5)
    await communicator.disconnect()
