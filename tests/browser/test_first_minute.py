"""A newcomer's first minute during an incident, on a laptop and a phone, light and dark.

Home says what is wrong; its live-row link leads to the breaker on the live page;
the operator trips it from its row; a colleague's home page shows the override
(who, why, until when) without a reload; the operator lifts it and the colleague's
page follows. No page scrolls sideways. With ``SCREENSHOTS`` set to a folder, the
runs keep the pictures of docs/tour.md there (``make screenshots``).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from controlplane.accounts.actors import Actor
from controlplane.live.ingest import process_entries
from controlplane.policies.actions import do_create_policy
from controlplane.policies.models import Environment
from controlplane.redis_connection import get_redis
from tests.browser.conftest import keep_screenshot, log_in

pytestmark = pytest.mark.django_db(transaction=True)

SCREENS = {"desktop": {"width": 1440, "height": 900}, "phone": {"width": 390, "height": 844}}
ROW = "#live-breaker-payments"
PANEL = "#act-live-breaker-payments"
CARD = "#home-production"


def _incident(production: Environment, system: Actor) -> None:
    """Payments open on both instances of the shop, search healthy, an API limiter busy."""
    for kind, name in (("breaker", "payments"), ("breaker", "search"), ("rate_limit", "api")):
        do_create_policy(production, kind, name, {}, system)
    production.refresh_from_db()
    now = time.time()
    entries = []
    for number, instance in enumerate(("shop-1", "shop-2")):
        heartbeat = {"service": "shop", "revision": production.revision, "at": now}
        get_redis().hset(production.keys().instances, instance, json.dumps(heartbeat))
        transition = {
            "at": now - 60 - number,
            "policy": "breaker:payments",
            "from_state": "closed",
            "to_state": "open",
            "reason": "failure_rate",
            "failure_rate": 72.5,
        }
        entries.append(
            (
                f"{number}-0",
                {"type": "transition", "instance": instance, "data": json.dumps(transition)},
            )
        )
        for ago in (120, 60, 2):
            counters = {
                "breaker:payments": {"calls": 40, "failures": 30, "rejected": 90, "state": "open"},
                "breaker:search": {"calls": 80, "failures": 1, "state": "closed"},
                "rate_limit:api": {"allowed": 50, "rejected": 2},
            }
            data = json.dumps({"at": now - ago, "policies": counters})
            entries.append(
                (f"{number}-{ago}", {"type": "counters", "instance": instance, "data": data})
            )
    process_entries(production, entries)


def _page(browser: Any, live_url: str, username: str, screen: str, scheme: str) -> Any:
    context = browser.new_context(viewport=SCREENS[screen], color_scheme=scheme)
    return log_in(context, live_url, username)


def _fits(page: Any) -> None:
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"{page.url} scrolls sideways: {width[0]} px in {width[1]} px"


def _keep(page: Any, name: str, screen: str, scheme: str) -> None:
    keep_screenshot(page, f"{name}-{screen}-{scheme}")


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("screen", list(SCREENS))
def test_a_newcomers_first_minute(
    live_url: str,
    browser: Any,
    operator: User,
    viewer: User,
    production: Environment,
    system: Actor,
    screen: str,
    scheme: str,
) -> None:
    _incident(production, system)
    alice = _page(browser, live_url, "alice", screen, scheme)  # a colleague, watching
    olga = _page(browser, live_url, "olga", screen, scheme)  # on call

    # Home: what is wrong right now, before anything else.
    for page in (alice, olga):
        expect(page.locator("h1")).to_have_text("What is wrong right now")
        expect(page.locator('[data-live-status="connected"]')).to_be_visible()
    problem = olga.locator(f'{CARD} [data-problem="breaker:payments"]')
    expect(problem).to_contain_text("payments is open on every instance")
    expect(problem).to_contain_text("opened at 72.5 % failures, failures 75.0 %")
    expect(problem.locator("[data-since]")).to_have_text("since 1 min ago")
    expect(olga.locator(f'{CARD} [data-problem="breaker:search"]')).to_have_count(0)
    _fits(olga)
    _keep(olga, "home", screen, scheme)

    # To the breaker's row on the live page: its sparkline and state strip are drawn.
    problem.get_by_role("link", name="payments on the live page").click()
    row = olga.locator(ROW)
    expect(row).to_have_attribute("data-state", "open")
    expect(row.locator("[data-opened-at]")).to_have_text("opened at 72.5%")
    expect(row.locator("[data-open-since]")).to_have_text("opened 1 min ago")  # time in state
    expect(row.locator("td.spark svg rect.strip-open").first).to_be_attached()
    expect(olga.locator('[data-live-status="connected"]')).to_be_visible()
    _fits(olga)

    # Trip it from its row, with a reason and an expiry.
    row.locator("[data-act]").click()
    panel = olga.locator(PANEL)
    panel.get_by_role("radio", name="Force open").check()
    panel.get_by_role("radio", name="in 1 h").check()
    panel.get_by_label("Reason").fill("incident 7: payments provider down")
    _keep(olga, "act-from-row", screen, scheme)
    panel.get_by_role("button", name="Apply").click()
    expect(row.locator("[data-override]")).to_contain_text("forced open by olga")
    _fits(olga)

    # The colleague's home page shows it without a reload: who, why, until when.
    override = alice.locator(f'{CARD} [data-override="breaker:payments"]')
    expect(override).to_contain_text("forced open", timeout=15_000)
    expect(override).to_contain_text("by olga")
    expect(override.locator(".override-reason")).to_have_text("incident 7: payments provider down")
    expect(override).to_contain_text("left")
    _keep(alice, "home-overridden", screen, scheme)

    # Lift it from the row; the colleague's page follows.
    row.locator("[data-act]").click()
    panel = olga.locator(PANEL)
    panel.get_by_label("Reason").fill("provider recovered")
    panel.get_by_role("button", name="Lift the override").click()
    expect(row.locator("[data-override]")).to_have_text("none")
    expect(override).to_have_count(0, timeout=15_000)
    expect(alice.locator(f'{CARD} [data-problem="breaker:payments"]')).to_be_visible()
    _fits(alice)
