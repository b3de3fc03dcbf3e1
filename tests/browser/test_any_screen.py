"""Every main page on any screen: 1440×900 and 390×844, light and dark.

On each page: nothing scrolls sideways, and axe-core finds no violation of
impact "serious" or "critical". To check a new page, add it to ``PAGES``.
Set ``SCREENSHOTS`` to a folder to keep a full-page screenshot of each visit.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from django.contrib.auth.models import User
from django.template.loader import render_to_string
from django.urls import reverse
from playwright.sync_api import expect

from controlplane.accounts.actors import Actor
from controlplane.client import Client
from controlplane.live.ingest import Ingestor, ensure_group
from controlplane.ops.outage import MESSAGE
from controlplane.policies.models import Environment, Policy
from controlplane.policies.overrides import do_set_override
from controlplane.redis_connection import get_redis
from tests.browser.conftest import keep_screenshot, log_in
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

BREAKER = ("production", "breaker", "payments")
# (name, path): visited in this order, signed in as an admin, who sees every control.
PAGES: list[tuple[str, str]] = [
    ("home", reverse("home")),
    ("policy list", reverse("dashboard")),
    ("live overview", reverse("live-overview", args=["production"])),
    ("instances", reverse("live-instances", args=["production"])),
    ("discovered", reverse("live-discovered", args=["production"])),
    ("policy", reverse("policy-detail", args=BREAKER)),
    ("policy edit", reverse("policy-edit", args=BREAKER)),
    ("compare", reverse("policy-compare", args=BREAKER) + "?a=1&b=2"),
    ("restore", reverse("policy-restore", args=[*BREAKER, 1])),
    ("delete", reverse("policy-delete", args=BREAKER)),
    ("new policy", reverse("policy-create", args=["production", "rate_limit"])),
    ("transitions", reverse("live-breaker-events", args=["production", "payments"])),
    ("import", reverse("environment-import", args=["production"])),
    ("audit log", reverse("audit-log")),
    ("API tokens", reverse("tokens")),
    ("users", reverse("users")),
    ("new user", reverse("user-new")),
    ("user", reverse("user-detail", args=["adam"])),
    ("environment settings", reverse("environment-settings", args=["production"])),
    ("not found", "/e/production/breaker/no-such-breaker/"),
]
# (name, template, context): pages Django renders with no request, served here
# by the browser itself (no URL of the app fails on purpose), with the app's static files.
STANDALONE_PAGES: list[tuple[str, str, dict[str, Any]]] = [
    ("server error", "500.html", {}),
    ("database unreachable", "errors/database.html", {"message": MESSAGE}),
    ("form expired", "403_csrf.html", {}),
]
SCREENS = {"desktop": {"width": 1440, "height": 900}, "phone": {"width": 390, "height": 844}}
BLOCKING = {"serious", "critical"}


@pytest.fixture
def live_data(
    production: Environment,
    system: Actor,
    set_policy: Callable[..., Policy],
    client_factory: Callable[..., Client],
) -> None:
    """Policies with live figures, an override and a name used in code but not managed."""
    set_policy("breaker", "payments", failure_rate_threshold=50)
    set_policy("breaker", "payments", failure_rate_threshold=40)  # v2: something to compare
    set_policy("rate_limit", "api", limit=2, period=60)
    set_policy("cache", "prices", ttl=30)
    do_set_override(production, "breaker", "payments", "forced_open", system, "incident 7")

    stream = production.keys().reports
    ensure_group(get_redis(), stream)
    service = client_factory(report_interval=0.1).start()  # stays up: listed as an instance
    for _ in range(5):
        service.limiter("api").hit("user:9")
    service.breaker("legacy-search").call(lambda: None)  # discovered: not managed here
    redis_client = get_redis()

    def reported() -> bool:
        types = {fields["type"] for _, fields in redis_client.xrange(stream)}
        return {"heartbeat", "counters", "discovered"} <= types

    wait_for(reported)
    Ingestor(block_ms=50).read_once({stream: production})


def _problems(page: Any, axe: Axe) -> list[str]:
    found = []
    widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    if widths[0] > widths[1]:
        found.append(f"scrolls sideways: {widths[0]} px wide in {widths[1]} px")
    for violation in axe.run(page).response["violations"]:
        if violation["impact"] in BLOCKING:
            targets = [node["target"] for node in violation["nodes"][:3]]
            found.append(f"axe {violation['impact']} {violation['id']}: {targets}")
    return found


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_page_fits_the_screen_and_passes_axe(
    live_url: str, browser: Any, admin: User, live_data: None, scheme: str
) -> None:
    axe = Axe()
    problems = []
    for screen, viewport in SCREENS.items():
        context = browser.new_context(color_scheme=scheme, viewport=viewport)
        try:
            page = context.new_page()
            page.goto(f"{live_url}/login/")
            assert page.evaluate("document.documentElement.dataset.theme") == scheme
            problems += [f"{screen} login: {p}" for p in _problems(page, axe)]
            page = log_in(context, live_url, "adam")
            for name, path in PAGES:
                page.goto(live_url + path)
                problems += [f"{screen} {name}: {p}" for p in _problems(page, axe)]
                keep_screenshot(page, f"{name}-{screen}-{scheme}")
            for name, template, template_context in STANDALONE_PAGES:
                html = render_to_string(template, template_context)
                page.route(f"{live_url}/standalone/", _serve(html))
                page.goto(f"{live_url}/standalone/")
                assert page.locator("h1").is_visible()
                problems += [f"{screen} {name}: {p}" for p in _problems(page, axe)]
                keep_screenshot(page, f"{name}-{screen}-{scheme}")
                page.unroute(f"{live_url}/standalone/")
        finally:
            context.close()
    assert not problems, "\n".join(problems)


def _serve(html: str) -> Callable[[Any], None]:
    def fulfill(route: Any) -> None:
        route.fulfill(status=500, body=html, content_type="text/html")

    return fulfill


def test_the_menu_folds_on_a_phone_and_opens_from_the_keyboard(
    live_url: str, browser: Any, admin: User
) -> None:
    context = browser.new_context(viewport=SCREENS["phone"])
    page = log_in(context, live_url, "adam")
    menu = page.get_by_role("button", name="Menu")
    audit_link = page.locator("#site-nav").get_by_role("link", name="Audit log")
    assert menu.get_attribute("aria-expanded") == "false"
    assert audit_link.is_hidden()

    menu.focus()
    page.keyboard.press("Enter")
    expect(menu).to_have_attribute("aria-expanded", "true")
    expect(audit_link).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.keyboard.press("Tab")  # the nav follows the button in tab order
    expect(page.locator("#site-nav a").first).to_be_focused()
    page.keyboard.press("Escape")
    expect(menu).to_have_attribute("aria-expanded", "false")
    expect(menu).to_be_focused()
    expect(audit_link).to_be_hidden()
    context.close()


def test_the_theme_follows_the_system_until_chosen_and_is_remembered(
    live_url: str, browser: Any, admin: User
) -> None:
    context = browser.new_context(color_scheme="dark", viewport=SCREENS["desktop"])
    page = log_in(context, live_url, "adam")
    root = page.locator("html")
    expect(root).to_have_attribute("data-theme", "dark")
    background = "getComputedStyle(document.body).backgroundColor"
    dark_background = page.evaluate(background)

    page.get_by_label("Theme").select_option("light")
    expect(root).to_have_attribute("data-theme", "light")
    assert page.evaluate(background) != dark_background

    # Remembered, and set before the first paint: already there when the body is parsed.
    page.add_init_script(
        "document.addEventListener('DOMContentLoaded', () => "
        "{ window.themeAtParse = document.documentElement.dataset.theme; });"
    )
    page.reload()
    assert page.evaluate("window.themeAtParse") == "light"
    expect(page.get_by_label("Theme")).to_have_value("light")

    page.get_by_label("Theme").select_option("system")
    page.reload()
    expect(root).to_have_attribute("data-theme", "dark")
    context.close()


def test_a_table_wider_than_its_card_scrolls_inside_it_on_a_tablet(
    live_url: str, browser: Any, admin: User, set_policy: Callable[..., Policy]
) -> None:
    set_policy("breaker", "payments", failure_rate_threshold=50)  # a row of ten columns
    context = browser.new_context(viewport={"width": 820, "height": 1180})  # above the phone CSS
    page = log_in(context, live_url, "adam")
    page.goto(live_url + reverse("live-overview", args=["production"]))

    table = page.locator('[data-kind-section="breaker"] table')
    assert page.evaluate(
        "(t => t.scrollWidth > t.parentElement.clientWidth)"
        "(document.querySelector('[data-kind-section=breaker] table'))"
    ), "the premise: this table is wider than its card at 820 px"
    expect(table).to_have_class(re.compile(r"\bscrolls\b"))
    expect(table).to_have_attribute("tabindex", "0")  # the keyboard can scroll it
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    context.close()
