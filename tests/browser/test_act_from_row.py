"""Acting from the row: the override panel opens below its row, survives pushes, and lifts."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from django.contrib.auth.models import User

from controlplane.accounts.actors import Actor
from controlplane.audit.models import AuditEntry
from controlplane.policies.actions import do_create_environment, do_create_policy
from controlplane.policies.models import Environment
from controlplane.policies.overrides import current_override, do_set_override
from tests.browser.conftest import log_in

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def production(system: Actor) -> Environment:
    """An environment of this test's own name: test runs on this host share the channel
    layer's groups (``live.<environment>``), and another run's pushes must not reach it."""
    return do_create_environment(f"prod-{uuid.uuid4().hex[:8]}", system)


ROW = "#live-breaker-payments"
PANEL = "#act-live-breaker-payments"


def _focused(page: Any, attribute: str) -> str | None:
    return page.evaluate(f"document.activeElement.getAttribute('{attribute}')")


def test_operator_trips_a_breaker_from_its_row_with_the_keyboard_and_lifts_it(
    live_url: str, browser: Any, operator: User, production: Environment, system: Actor
) -> None:
    from playwright.sync_api import expect

    do_create_policy(production, "breaker", "payments", {}, system)
    do_create_policy(production, "breaker", "search", {}, system)
    olga = log_in(browser, live_url, "olga")
    olga.goto(f"{live_url}/e/{production.name}/live/")
    olga.wait_for_selector('[data-live-status="connected"]')
    act = olga.locator(f"{ROW} [data-act]")

    # Act from the keyboard: the panel opens just below the row, focus moves into it.
    act.focus()
    olga.keyboard.press("Enter")
    panel = olga.locator(PANEL)
    expect(panel).to_be_visible()
    expect(act).to_have_attribute("aria-expanded", "true")
    assert olga.evaluate(f"document.querySelector('{ROW}').nextElementSibling.id") == PANEL[1:]
    assert _focused(olga, "value") == "trip"
    # Only a breaker's actions, grouped; nothing to lift yet.
    expect(panel.locator(".act-groups")).to_have_count(1)
    expect(panel.locator(".act-states")).to_contain_text("Force open")
    expect(panel.locator(".act-once")).to_contain_text("Reset to closed")
    expect(panel.get_by_role("button", name="Lift the override")).to_be_hidden()
    # Escape closes it and gives the focus back to Act.
    olga.keyboard.press("Escape")
    expect(panel).to_have_count(0)
    expect(act).to_have_attribute("aria-expanded", "false")
    assert _focused(olga, "data-act") == "breaker:payments"

    olga.keyboard.press("Space")  # Act is a button to the keyboard: Space presses it too
    expect(panel).to_be_visible()
    olga.keyboard.press("Space")  # picks the focused "Force open"
    expect(panel.get_by_role("radio", name="Force open")).to_be_checked()
    panel.get_by_role("radio", name="in 10 min").check()
    # Local time, with its date first when that is tomorrow (a run near midnight).
    expect(panel.locator("[data-expiry-preview]")).to_have_text(
        re.compile(r"Ends at (\w+ \d\d? )?\d\d?:\d\d( [AP]M)? \(in 10 min\)\.")
    )
    panel.get_by_label("Reason").fill("incident 7: DB failover")

    # A colleague's change pushes the row again: the panel, and what was typed, stay.
    do_set_override(production, "breaker", "payments", "disabled", Actor.system("alice"), "deploy")
    expect(olga.locator(f"{ROW} [data-override]")).to_contain_text("disabled by alice")
    expect(panel.get_by_label("Reason")).to_have_value("incident 7: DB failover")
    expect(panel.get_by_role("radio", name="in 10 min")).to_be_checked()
    expect(act).to_have_attribute("aria-expanded", "true")  # the pushed row's Act
    expect(panel.get_by_role("button", name="Lift the override")).to_be_visible()

    panel.get_by_role("button", name="Apply").click()
    expect(olga.locator("main .flash")).to_contain_text("Force open: breaker payments until")
    cell = olga.locator(f"{ROW} [data-override]")
    expect(cell).to_contain_text("forced open by olga")
    expect(cell.locator(".override-reason")).to_have_text("incident 7: DB failover")
    expect(cell).to_contain_text("(in 10 min)")
    expect(olga.locator(PANEL)).to_have_count(0)
    assert _focused(olga, "data-act") == "breaker:payments"  # back where the operator was

    # Lift it from the row: its own button, offered now that an override is in force.
    olga.locator(f"{ROW} [data-act]").click()
    panel = olga.locator(PANEL)
    panel.get_by_label("Reason").fill("DB is back")
    panel.get_by_role("button", name="Lift the override").click()
    expect(olga.locator(f"{ROW} [data-override]")).to_have_text("none")
    assert current_override(production, "breaker", "payments") is None
    audited = AuditEntry.objects.filter(object_name="payments", action__startswith="override.")
    assert list(audited.order_by("id").values_list("action", "actor_name", "reason")) == [
        ("override.set", "alice", "deploy"),
        ("override.set", "olga", "incident 7: DB failover"),
        ("override.clear", "olga", "DB is back"),
    ]


def test_a_refused_action_reopens_the_panel_with_what_was_typed(
    live_url: str, browser: Any, operator: User, production: Environment, system: Actor
) -> None:
    from playwright.sync_api import expect

    do_create_policy(production, "breaker", "payments", {}, system)
    olga = log_in(browser, live_url, "olga")
    olga.goto(f"{live_url}/e/{production.name}/live/")
    olga.wait_for_selector('[data-live-status="connected"]')
    olga.locator(f"{ROW} [data-act]").click()
    panel = olga.locator(PANEL)
    panel.get_by_label("Reason").fill("incident 8")

    # No action picked: said at once, nothing sent, the panel as it was.
    panel.get_by_role("button", name="Apply").click()
    first = panel.get_by_role("radio", name="Force open")
    assert first.evaluate("radio => radio.validationMessage").startswith("Pick an action")
    expect(panel.get_by_label("Reason")).to_have_value("incident 8")

    # Refused by the server (a custom expiry without its minutes): the error names the
    # field, nothing changes, and the panel opens again as the operator left it.
    first.check()
    panel.get_by_role("radio", name="after").check()
    panel.get_by_role("button", name="Apply").click()
    expect(olga.locator("main .flash.error")).to_contain_text(
        "Nothing was changed. custom_minutes: Enter a number of minutes"
    )
    panel = olga.locator(PANEL)
    expect(panel.get_by_label("Reason")).to_have_value("incident 8")
    expect(panel.get_by_role("radio", name="Force open")).to_be_checked()
    expect(panel.get_by_role("radio", name="after")).to_be_checked()
    assert current_override(production, "breaker", "payments") is None
    assert not AuditEntry.objects.filter(action__startswith="override.").exists()


def test_the_policy_page_offers_the_lift_once_a_push_brings_an_override(
    live_url: str, browser: Any, operator: User, production: Environment, system: Actor
) -> None:
    from playwright.sync_api import expect

    do_create_policy(production, "breaker", "payments", {}, system)
    olga = log_in(browser, live_url, "olga")
    olga.goto(f"{live_url}/e/{production.name}/breaker/payments/")
    olga.wait_for_selector('[data-live-status="connected"]')
    form = olga.locator("#override-form")
    lift = form.get_by_role("button", name="Lift the override")
    expect(lift).to_be_hidden()
    form.get_by_label("Reason").fill("DB is back")

    do_set_override(production, "breaker", "payments", "disabled", Actor.system("alice"), "deploy")
    expect(olga.locator("#policy-live [data-override]")).to_contain_text("disabled by alice")
    expect(lift).to_be_visible()
    expect(form.get_by_label("Reason")).to_have_value("DB is back")  # the form is not pushed
    lift.click()
    expect(olga.locator("#policy-live [data-override]")).to_contain_text("none")
    assert current_override(production, "breaker", "payments") is None
