"""Finding things on the live overview: filter by tag, name, kind and state, sort a column,
and keep both while rows are pushed over the websocket."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis
from django.contrib.auth.models import User

from controlplane.accounts.actors import Actor
from controlplane.live.ingest import process_entries
from controlplane.live.push import send_now
from controlplane.policies.actions import do_create_policy
from controlplane.policies.models import Environment
from tests.browser.conftest import log_in

pytestmark = pytest.mark.django_db(transaction=True)

SHOWN_BREAKERS = "section[data-kind-section=breaker] tr[data-kind]:not([hidden])"
_entry = 0


def report(environment: Environment, policies: dict[str, dict[str, Any]]) -> None:
    """One instance's counters, ingested, and pushed to the open pages at once."""
    global _entry
    _entry += 1
    data = json.dumps({"at": time.time() - 2, "policies": policies})
    entry = (f"{_entry}-0", {"type": "counters", "instance": "i1", "data": data})
    changes = process_entries(environment, [entry])
    send_now(environment.name, changes.all | set(policies))


def shown_names(page: Any) -> list[str]:
    """The names of the breakers' rows shown, in order."""
    return list(page.locator(SHOWN_BREAKERS).evaluate_all("rows => rows.map(r => r.dataset.name)"))


def expect_shown(page: Any, names: list[str]) -> None:
    """Wait for the filter to show as many rows as ``names``, then check them in order."""
    from playwright.sync_api import expect

    expect(page.locator(SHOWN_BREAKERS)).to_have_count(len(names))
    assert shown_names(page) == names


def test_filter_and_sort_the_live_overview_and_keep_them_through_pushes(
    live_url: str,
    browser: Any,
    operator: User,
    production: Environment,
    system: Actor,
    redis_client: redis.Redis,
) -> None:
    from playwright.sync_api import expect

    for name, tags in [
        ("ledger", ["ledger", "tier-1"]),
        ("warehouse", ["catalogue", "tier-1"]),
        ("finder", ["catalogue"]),
    ]:
        do_create_policy(production, "breaker", name, {}, system, tags=tags)
    do_create_policy(production, "rate_limit", "gateway", {"limit": 10}, system, tags=["tier-1"])
    do_create_policy(production, "cache", "pricebook", {"generation": 10}, system)
    do_create_policy(production, "cache", "stockpile", {"generation": 2}, system)
    heartbeat = {"service": "shop", "host": "h", "pid": 1, "library_version": "0.1.0"}
    heartbeat |= {"revision": production.revision, "connected": True, "at": time.time()}
    redis_client.hset(production.keys().instances, "i1", json.dumps(heartbeat))
    report(
        production,
        {
            "breaker:ledger": {"calls": 100, "failures": 80, "state": "open"},
            "breaker:warehouse": {"calls": 100, "failures": 20, "state": "closed"},
            "breaker:finder": {"calls": 10, "failures": 0, "state": "closed"},
        },
    )

    page = log_in(browser, live_url, "olga")
    page.goto(f"{live_url}/e/production/live/?tag=tier-1")  # a bookmarked filter
    page.wait_for_selector('[data-live-status="connected"]')
    expect(page.locator("[data-live-filters] select[name=tag]")).to_have_value("tier-1")
    expect(page.locator("[data-filter-count]")).to_have_text("3 of 6 policies shown")
    expect_shown(page, ["ledger", "warehouse"])
    expect(page.locator("section[data-kind-section=cache] [data-no-match]")).to_be_visible()

    # Sort by state, worst first, with the keyboard: the header is a button.
    state = page.locator("section[data-kind-section=breaker] th:has-text('State')")
    state.get_by_role("button").focus()
    page.keyboard.press("Enter")
    expect(state).to_have_attribute("aria-sort", "ascending")
    expect_shown(page, ["ledger", "warehouse"])  # open before closed
    page.keyboard.press("Enter")
    expect(state).to_have_attribute("aria-sort", "descending")
    expect_shown(page, ["warehouse", "ledger"])
    page.keyboard.press("Enter")
    expect_shown(page, ["ledger", "warehouse"])

    # A push that changes the order: payments closes, inventory opens; the rows follow.
    report(
        production,
        {
            "breaker:ledger": {"calls": 1, "state": "closed"},
            "breaker:warehouse": {"calls": 1, "failures": 1, "state": "open"},
        },
    )
    expect(page.locator(SHOWN_BREAKERS).first).to_have_attribute("data-name", "warehouse")
    expect_shown(page, ["warehouse", "ledger"])
    # A push of a row the filter hides: it stays hidden.
    report(production, {"breaker:finder": {"calls": 10, "failures": 10, "state": "forced_open"}})
    expect(page.locator('tr[data-name="finder"]')).to_have_attribute("data-state", "forced_open")
    expect(page.locator('tr[data-name="finder"]')).to_be_hidden()
    expect_shown(page, ["warehouse", "ledger"])

    # Name, kind and state narrow further; the address keeps them for a bookmark.
    page.fill("[data-live-filters] input[name=q]", "LEDG")
    expect_shown(page, ["ledger"])
    expect(page.locator("tr[data-name=gateway]")).to_be_hidden()
    assert "q=LEDG" in page.url and "tag=tier-1" in page.url
    page.fill("[data-live-filters] input[name=q]", "")
    page.select_option("[data-live-filters] select[name=tag]", "")
    page.select_option("[data-live-filters] select[name=state]", "forced")
    expect_shown(page, ["finder"])
    expect(page.locator("section[data-kind-section=rate_limit]")).to_be_hidden()
    page.select_option("[data-live-filters] select[name=state]", "")
    page.select_option("[data-live-filters] select[name=kind]", "cache")
    expect(page.locator("section[data-kind-section=breaker]")).to_be_hidden()
    expect(page.locator("tr[data-name=pricebook]")).to_be_visible()
    expect(page.locator("[data-filter-count]")).to_have_text("2 of 6 policies shown")

    # A number column sorts by number: 2 before 10, where text order puts 10 first.
    generation = page.locator("section[data-kind-section=cache] th:has-text('Generation')")
    generation.get_by_role("button").click()
    expect(generation).to_have_attribute("aria-sort", "ascending")
    caches = page.locator("section[data-kind-section=cache] tr[data-kind]")
    assert caches.evaluate_all("rows => rows.map(r => r.dataset.name)") == [
        "stockpile",
        "pricebook",
    ]
    generation.get_by_role("button").click()
    expect(generation).to_have_attribute("aria-sort", "descending")
    assert caches.evaluate_all("rows => rows.map(r => r.dataset.name)") == [
        "pricebook",
        "stockpile",
    ]
