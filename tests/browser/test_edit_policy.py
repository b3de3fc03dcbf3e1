from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User

from controlplane.accounts.actors import Actor
from controlplane.client import Client
from controlplane.policies.actions import do_create_policy
from controlplane.policies.models import Environment
from tests.browser.conftest import log_in
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_editor_changes_a_limit_the_client_follows_and_the_audit_shows_it(
    live_url: str,
    browser: Any,
    editor: User,
    production: Environment,
    system: Actor,
    client_factory: Callable[..., Client],
) -> None:
    do_create_policy(
        production,
        "rate_limit",
        "api",
        {"algorithm": "sliding_window", "limit": 100, "period": 60},
        system,
    )
    service = client_factory(heartbeat_interval=0.5).start()
    limiter = service.limiter("api")
    assert limiter.peek("user:1").limit == 100

    page = log_in(browser, live_url, "erin")  # lands on the home page
    page.click('nav a:has-text("Policies")')
    page.click('#env-production tr[data-policy="rate_limit:api"] a')
    page.click('a.button:has-text("Edit")')
    page.fill("#id_limit", "-5")  # checked as typed: refused (422), the error shows by the field
    page.press("#id_limit", "Tab")
    page.locator('[data-error-for="limit"]').wait_for()
    page.fill("#id_limit", "250")
    page.click("button[value=preview]")
    diff = page.locator('.preview tr[data-field="limit"]')
    diff.wait_for()
    assert diff.locator(".old").inner_text() == "100 requests"
    assert diff.locator(".new").inner_text() == "250 requests"
    page.fill("#id_reason", "launch day")
    page.click("button[value=save]")
    page.wait_for_selector("text=Saved rate limiter api.")
    # The page follows the save to the fleet, until the one instance reports it applied.
    rollout = page.locator('#rollout[data-done="true"]')
    rollout.wait_for(timeout=15_000)
    assert "; applied by the only instance." in rollout.inner_text()
    assert rollout.inner_text().startswith("Published as revision ")

    wait_for(lambda: limiter.peek("user:1").limit == 250)  # the running client enforces it

    page.goto(f"{live_url}/audit/?object=api&action=policy.update")
    row = page.locator('tr[data-action="policy.update"]').first
    assert "launch day" in row.inner_text()
    assert row.locator('tr[data-field="limit"] .old').inner_text() == "100 requests"
    assert row.locator('tr[data-field="limit"] .new').inner_text() == "250 requests"
    assert row.locator("time[data-relative]").inner_text() == "just now"

    page.goto(f"{live_url}/e/production/rate_limit/api/")
    page.locator('tr[data-version="1"] a:has-text("Restore")').click()
    # First what it would do, against what is live now; then a reason and a confirm.
    diff = page.locator("[data-confirm-diff]")
    assert diff.locator('tr[data-field="limit"] .old').inner_text() == "250 requests"
    assert diff.locator('tr[data-field="limit"] .new').inner_text() == "100 requests"
    page.get_by_label("Reason").fill("launch is over")
    page.get_by_role("button", name="Restore v1 in production").click()
    page.wait_for_selector("text=Restored version 1")
    wait_for(lambda: limiter.peek("user:1").limit == 100)
