"""The overview's rows: one partial for the page and every push, rendered once per values shown."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from controlplane.accounts.actors import Actor
from controlplane.live import widgets
from controlplane.live.ingest import process_entries
from controlplane.live.push import VARIANTS
from controlplane.live.widgets import _rendered_row, overview, render_rows
from controlplane.policies.actions import do_create_policy, do_update_policy
from controlplane.policies.models import Environment, Policy
from controlplane.policies.overrides import do_purge_cache, do_set_override
from controlplane.redis_connection import get_redis

pytestmark = pytest.mark.django_db(transaction=True)

FIELDS = {"breaker:payments", "rate_limit:api", "cache:prices"}


@pytest.fixture(autouse=True)
def no_rendered_rows() -> Iterator[None]:
    """Start and end with no row kept rendered: what a test renders, it rendered itself."""
    _rendered_row.cache_clear()
    yield
    _rendered_row.cache_clear()


def report(environment: Environment, policies: dict[str, dict[str, Any]]) -> None:
    """A heartbeat and a counters report of instance ``i1`` (two seconds ago: in the window)."""
    heartbeat = {"service": "shop", "revision": environment.revision, "at": time.time()}
    get_redis().hset(environment.keys().instances, "i1", json.dumps(heartbeat))
    data = {"at": time.time() - 2, "policies": policies}
    entry = {"type": "counters", "instance": "i1", "data": json.dumps(data)}
    process_entries(environment, [("1-0", entry)])


def row_in(html: str, dom_id: str) -> str:
    found = re.search(rf'<tr id="{dom_id}".*?</tr>', html, re.DOTALL)
    assert found is not None, f"no row {dom_id}"
    return found.group(0)


def test_page_and_push_show_a_row_with_the_same_html(
    client: Client, viewer: User, operator: User, production: Environment, policies: None
) -> None:
    report(
        production,
        {
            "breaker:payments": {"calls": 10, "failures": 4, "state": "open"},
            "rate_limit:api": {"allowed": 5, "rejected": 5, "top_rejected": {"user:9": 5}},
            "cache:prices": {"hits": 3, "misses": 1},
        },
    )
    pages = {}
    for variant, user in (("viewer", viewer), ("operator", operator)):
        client.force_login(user)
        pages[variant] = client.get("/e/production/live/").content.decode()
    _rendered_row.cache_clear()  # the push renders anew: equal HTML, not a kept copy

    pushed = render_rows(production, FIELDS, VARIANTS)

    for variant, page in pages.items():
        for field in FIELDS:
            kind, _, name = field.partition(":")
            assert pushed[variant][field] == row_in(page, f"live-{kind}-{name}")
    assert 'data-state="open"' in pushed["viewer"]["breaker:payments"]
    assert "<code>user:9</code> (5)" in pushed["viewer"]["rate_limit:api"]
    assert "data-act" not in "".join(pushed["viewer"].values())
    assert 'data-act="cache:prices"' in pushed["operator"]["cache:prices"]


def test_a_row_is_rendered_again_only_when_a_value_it_shows_changes(
    production: Environment, policies: None
) -> None:
    report(production, {"breaker:payments": {"calls": 10, "failures": 1, "state": "closed"}})
    first = render_rows(production, FIELDS, VARIANTS)
    rendered = _rendered_row.cache_info().misses
    assert rendered == 6  # three rows in two variants

    again = render_rows(production, FIELDS, VARIANTS)
    assert _rendered_row.cache_info().misses == rendered  # same values: nothing rendered
    assert again == first

    report(production, {"breaker:payments": {"successes": 9}})  # a counter no row shows
    unchanged = render_rows(production, FIELDS, VARIANTS)
    assert _rendered_row.cache_info().misses == rendered
    assert unchanged["viewer"]["breaker:payments"] is first["viewer"]["breaker:payments"]

    report(production, {"breaker:payments": {"calls": 10, "failures": 1}})  # calls/s doubles
    changed = render_rows(production, FIELDS, VARIANTS)
    assert _rendered_row.cache_info().misses == rendered + 2  # the breaker, in both variants
    assert "<td>4.0</td>" in changed["viewer"]["breaker:payments"]
    assert "<td>4.0</td>" not in first["viewer"]["breaker:payments"]
    for field in FIELDS - {"breaker:payments"}:
        assert changed["viewer"][field] is first["viewer"][field]


def test_override_text_is_escaped_in_rows(production: Environment, policies: None) -> None:
    do_set_override(
        production, "breaker", "payments", "forced_open", Actor.system("olga"), '<script>"x"'
    )

    html = render_rows(production, {"breaker:payments"}, VARIANTS)["operator"]["breaker:payments"]

    assert 'title="&lt;script&gt;&#34;x&#34;"' in html
    assert "<script>" not in html
    assert "forced open by olga" in html
    assert "&lt;script&gt;&#34;x&#34;</q>" in html  # the reason shown on the row, escaped


def test_overview_queries_do_not_grow_with_the_policies(
    production: Environment, system: Actor
) -> None:
    kinds = ["breaker", "breaker", "rate_limit", "cache"]
    queries: list[tuple[int, int]] = []
    for total in (4, 40):
        for number in range(len(queries) * 4, total):
            spec = {"ttl": 30} if kinds[number % 4] == "cache" else {}
            do_create_policy(production, kinds[number % 4], f"p{number}", spec, system)
        do_set_override(production, "breaker", f"p{total - 4}", "disabled", system, "x")
        fields = set(production.policies.values_list("kind", "name").distinct())
        with CaptureQueriesContext(connection) as whole:
            context = overview(production)
        with CaptureQueriesContext(connection) as push:
            render_rows(production, {f"{k}:{n}" for k, n in fields}, VARIANTS)
        assert sum(len(rows) for rows in context["rows"].values()) == total
        queries.append((len(whole), len(push)))
    assert queries[0] == queries[1]


def test_rows_show_the_policies_settings(production: Environment, system: Actor) -> None:
    do_create_policy(production, "breaker", "search", {"mode": "observe"}, system)
    do_create_policy(
        production, "rate_limit", "login", {"limit": 7, "period": "90s", "mode": "observe"}, system
    )
    prices = do_create_policy(production, "cache", "prices", {"ttl": 30}, system)
    do_purge_cache(production, prices.name, Actor.system("olga"), "bad prices")

    rows = render_rows(production, {"breaker:search", "rate_limit:login", "cache:prices"}, VARIANTS)

    html = rows["viewer"]
    assert '<small class="muted">observe-only</small>' in html["breaker:search"]
    assert '<small class="muted">7/90s, observe-only</small>' in html["rate_limit:login"]
    assert "<td data-generation>1</td>" in html["cache:prices"]


def test_many_rows_asked_for_are_read_with_the_rest_and_show_the_same(
    production: Environment, policies: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    report(production, {"breaker:payments": {"calls": 10, "failures": 4, "state": "open"}})
    asked = {"breaker:payments", "cache:prices", "@instances"}
    one_by_one = render_rows(production, asked, VARIANTS)
    monkeypatch.setattr(widgets, "READ_ALL_ABOVE", 1)

    with CaptureQueriesContext(connection) as captured:
        read_all = render_rows(production, asked, VARIANTS)

    assert read_all == one_by_one
    assert set(read_all["viewer"]) == {"breaker:payments", "cache:prices", "@summary"}
    policies_query = captured.captured_queries[0]["sql"]
    assert "policies_policy" in policies_query and "payments" not in policies_query


def test_rows_carry_what_the_filter_reads_and_a_tag_change_renders_them_again(
    production: Environment, policies: None, system: Actor
) -> None:
    payments = Policy.objects.get(name="payments")
    do_update_policy(payments, {}, system, tags=["tier-1", "payments"])
    first = render_rows(production, FIELDS, VARIANTS)["viewer"]
    assert (
        'data-name="payments" data-kind="breaker" data-tags="payments tier-1"'
        in (first["breaker:payments"])
    )
    assert 'data-kind="rate_limit" data-tags=""' in first["rate_limit:api"]
    assert overview(production)["tags"] == ["payments", "tier-1"]

    do_update_policy(payments, {}, system, tags=["payments"])
    again = render_rows(production, FIELDS, VARIANTS)["viewer"]
    assert 'data-tags="payments"' in again["breaker:payments"]  # not the kept HTML
    assert again["cache:prices"] is first["cache:prices"]
