"""Two editors change the same policy at once: the second save is refused, keeps the work,
shows base, theirs and yours side by side, and one click gets back to a previewed save
holding both changes. With ``SCREENSHOTS`` set to a folder, it keeps the conflict as
``conflict.png`` (``make screenshots``: docs/tour)."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User

from controlplane.accounts.actors import Actor
from controlplane.accounts.roles import Role
from controlplane.policies.actions import do_create_policy
from controlplane.policies.models import Environment, Policy
from tests.browser.conftest import keep_screenshot, log_in
from tests.conftest import make_user

pytestmark = pytest.mark.django_db(transaction=True)


def _review_and_save(page: Any, field: str, value: str, reason: str) -> None:
    """Change ``field``, preview the change, give a reason and press Save."""
    page.fill(f"#id_{field}", value)
    page.click("button[value=preview]")
    page.locator(f'.preview tr[data-field="{field}"]').wait_for()
    page.fill("#id_reason", reason)
    page.click("button[value=save]")


def test_second_editor_re_applies_their_change_on_top_of_the_first(
    live_url: str, browser: Any, editor: User, production: Environment, system: Actor
) -> None:
    from playwright.sync_api import expect

    do_create_policy(
        production, "rate_limit", "api", {"limit": 100, "period": 60}, system, "initial"
    )
    make_user("frank", Role.EDITOR)
    edit = f"{live_url}/e/production/rate_limit/api/edit/"
    first, second = log_in(browser, live_url, "frank"), log_in(browser, live_url, "erin")
    for page in (first, second):  # two browser contexts: two sessions
        page.goto(edit)

    _review_and_save(first, "limit", "250", "launch day")
    first.wait_for_selector("text=Saved rate limiter api.")

    _review_and_save(second, "period", "30", "shorter window")
    table = second.locator("table.three-way")
    expect(table).to_be_visible()
    expect(second.get_by_role("alert")).to_contain_text(
        "Not saved: frank saved version 2 while you were editing."
    )
    expect(table.locator("caption")).to_have_text(
        "What changed since you loaded version 1, field by field"
    )
    expect(table.get_by_role("columnheader", name="Theirs")).to_have_text(
        "Theirs (v2 by frank, “launch day”)"
    )
    limit, period = (
        table.locator('tr[data-field="limit"]'),
        table.locator('tr[data-field="period"]'),
    )
    expect(limit.locator(".base")).to_have_text("100 requests")
    expect(limit.locator(".theirs")).to_have_text("250 requests")
    expect(limit.locator(".mine")).to_have_text("100 requests (unchanged)")
    expect(period.locator(".base")).to_have_text("60 s")
    expect(period.locator(".theirs")).to_have_text("60 s (unchanged)")
    expect(period.locator(".mine")).to_have_text("30 s")
    # The form already holds theirs and mine, and the reason typed.
    expect(second.locator("#id_limit")).to_have_value("250")
    expect(second.locator("#id_period")).to_have_value("30")
    expect(second.locator("#id_reason")).to_have_value("shorter window")
    keep_screenshot(second, "conflict", full_page=True)

    second.get_by_role("button", name="Re-apply mine on top of v2").click()
    preview = second.locator(".preview")
    expect(preview).to_contain_text("What will change")
    expect(preview.locator('tr[data-field="period"] .new')).to_have_text("30 s")
    expect(preview.locator('tr[data-field="limit"]')).to_have_count(0)
    second.click("button[value=save]")
    second.wait_for_selector("text=Saved rate limiter api.")

    policy = Policy.objects.get(name="api")
    assert (policy.version, policy.spec["limit"], policy.spec["period"]) == (3, 250, 30)
    assert policy.versions.get(version=3).reason == "shorter window"
    spec = second.locator("dl.spec").filter(has_text="Algorithm")  # not the live counts
    expect(spec).to_contain_text("250 requests")
    expect(spec).to_contain_text("30 s")
