"""A guarded production, as two people see it in two browsers: a change waits for a
second person's approval before it reaches a service; a stale one needs a rebase;
an operator's override does not wait."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User

from controlplane.accounts.actors import Actor
from controlplane.accounts.roles import Role
from controlplane.client import Client
from controlplane.policies.actions import do_create_environment, do_create_policy, do_update_policy
from controlplane.policies.models import ChangeRequest, Environment, Policy
from tests.browser.conftest import keep_screenshot, log_in
from tests.conftest import make_user, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def production(system: Actor) -> Environment:
    """A guarded environment of this test's own name (test runs on this host share the
    channel layer's groups), whose changes need one editor's approval."""
    environment = do_create_environment(f"prod-{uuid.uuid4().hex[:8]}", system)
    environment.approvals_required = 1
    environment.save()
    return environment


def _propose_limit(page: Any, live_url: str, policy: Policy, limit: str, reason: str) -> str:
    """Edit the limit in the form and propose it; the request page's path."""
    from playwright.sync_api import expect

    page.goto(f"{live_url}/e/{policy.environment.name}/rate_limit/{policy.name}/edit/")
    expect(page.locator("[data-guarded-notice]")).to_contain_text(
        f"Changes in {policy.environment.name} need 1 approval by an editor: "
        "saving proposes a change request"
    )
    page.fill("#id_limit", limit)
    page.click("button[value=preview]")
    page.locator('.preview tr[data-field="limit"]').wait_for()
    page.fill("#id_reason", reason)
    page.get_by_role("button", name="Propose change").click()
    expect(page.locator("main .flash")).to_have_text(
        re.compile(r"Your change waits for 1 approval: change request #\d+\.")
    )
    return str(page.url).removeprefix(live_url)


def test_a_guarded_change_waits_for_a_second_person_then_reaches_the_client(
    live_url: str,
    browser: Any,
    editor: User,
    operator: User,
    production: Environment,
    system: Actor,
    client_factory: Callable[..., Client],
) -> None:
    from playwright.sync_api import expect

    make_user("bob", Role.EDITOR)
    api = do_create_policy(
        production, "rate_limit", "api", {"algorithm": "sliding_window", "limit": 100}, system
    )
    do_create_policy(production, "breaker", "payments", {}, system)
    service = client_factory(environment=production.name, heartbeat_interval=0.5).start()
    limiter = service.limiter("api")
    assert limiter.peek("user:1").limit == 100

    # Erin proposes 250: it waits, and the service keeps enforcing 100.
    erin = log_in(browser, live_url, "erin")
    request_path = _propose_limit(erin, live_url, api, "250", "sale traffic")
    assert re.fullmatch(r"/requests/\d+/", request_path)
    assert limiter.peek("user:1").limit == 100
    api.refresh_from_db()
    assert api.version == 1

    # Her own approval is refused: the page offers none, and the server refuses one sent.
    expect(erin.locator("[data-own-request]")).to_contain_text(
        "You cannot approve your own change request"
    )
    expect(erin.get_by_role("button", name="Approve")).to_have_count(0)
    token = erin.locator("[data-withdraw-form] input[name=csrfmiddlewaretoken]").input_value()
    erin.request.post(
        f"{live_url}{request_path}act/",
        form={"action": "approve", "csrfmiddlewaretoken": token},
        max_redirects=0,
    )
    erin.reload()
    expect(erin.locator("main .flash.error")).to_have_text(
        "Review: Nobody reviews their own change request. Nothing was changed."
    )
    assert limiter.peek("user:1").limit == 100

    # Bob, in a browser of his own, finds it in the queue and approves it with a comment.
    bob = log_in(browser, live_url, "bob")
    expect(bob.locator("[data-nav-requests]")).to_have_text("Requests (1)")
    bob.locator("[data-nav-requests]").click()
    row = bob.locator("tr[data-status=open]")
    expect(row).to_contain_text("Change rate limiter api")
    expect(row.locator("[data-approvals]")).to_have_text("0/1")
    keep_screenshot(bob, "change-requests-queue")
    row.get_by_role("link", name="Change rate limiter api").click()
    diff = bob.locator('[data-item-diff] tr[data-field="limit"]')
    expect(diff.locator(".old")).to_have_text("100 requests")
    expect(diff.locator(".new")).to_have_text("250 requests")
    bob.get_by_label("Comment").fill("fine for the sale")
    keep_screenshot(bob, "change-request", full_page=True)
    bob.get_by_role("button", name="Approve").click()
    expect(bob.locator("main .flash")).to_have_text(
        re.compile(r"Approved: change request #\d+ is applied\.")
    )
    expect(bob.locator("[data-reviews]")).to_contain_text("bob approved")
    expect(bob.locator("[data-reviews]")).to_contain_text("fine for the sale")
    wait_for(lambda: limiter.peek("user:1").limit == 250)

    # A stale request: Erin proposes 300, then someone saves the policy directly.
    request_path = _propose_limit(erin, live_url, api, "300", "more headroom")
    api.refresh_from_db()
    do_update_policy(api, {**api.spec, "period": 30}, Actor.system("carol"), "shorter window")
    bob.goto(live_url + request_path)
    bob.get_by_role("button", name="Approve").click()
    expect(bob.locator("main .flash")).to_contain_text("Approved, but it cannot apply yet.")
    expect(bob.locator("[data-blocked]")).to_contain_text("Needs a rebase: api (now v3 by carol)")
    three_way = bob.locator("[data-three-way]")
    expect(three_way.locator('tr[data-field="period"] .base')).to_have_text("60 s")
    expect(three_way.locator('tr[data-field="period"] .theirs')).to_have_text("30 s")
    expect(three_way.locator('tr[data-field="limit"] .mine')).to_have_text("300 requests")
    expect(three_way.locator('tr[data-field="limit"] .theirs')).to_have_text(
        "250 requests (unchanged)"
    )
    assert limiter.peek("user:1").limit == 250
    bob.get_by_role("button", name="Rebase on what is live now").click()
    expect(bob.locator("main .flash")).to_contain_text("it waits for approval again")
    expect(bob.locator("[data-dismissed]")).to_contain_text("dismissed by a rebase")
    bob.get_by_role("button", name="Approve").click()
    expect(bob.locator("main .flash")).to_have_text(
        re.compile(r"Approved: change request #\d+ is applied\.")
    )
    wait_for(lambda: limiter.peek("user:1").limit == 300)
    api.refresh_from_db()
    assert (api.spec["limit"], api.spec["period"]) == (300, 30)

    # A restore is previewed and confirmed with a reason, and in here it is proposed.
    erin.goto(f"{live_url}/e/{production.name}/rate_limit/api/")
    erin.locator('tr[data-version="1"] a:has-text("Restore")').click()
    diff = erin.locator("[data-confirm-diff]")
    expect(diff.locator('tr[data-field="limit"] .old')).to_have_text("300 requests")
    expect(diff.locator('tr[data-field="limit"] .new')).to_have_text("100 requests")
    expect(erin.locator("[data-guarded-notice]")).to_be_visible()
    erin.get_by_label("Reason").fill("sale is over")
    erin.get_by_role("button", name="Propose change").click()
    expect(erin.locator("main .flash")).to_have_text(
        re.compile(r"Your change waits for 1 approval: change request #\d+\.")
    )
    expect(erin.locator("h1")).to_contain_text("Restore v1 of api")
    assert limiter.peek("user:1").limit == 300
    requests = ChangeRequest.objects.count()

    # An operator's trip does not wait: the live page shows it at once, with no request.
    olga = log_in(browser, live_url, "olga")
    olga.goto(f"{live_url}/e/{production.name}/live/")
    olga.wait_for_selector('[data-live-status="connected"]')
    olga.locator("#live-breaker-payments [data-act]").click()
    panel = olga.locator("#act-live-breaker-payments")
    panel.get_by_role("radio", name="Force open").check()
    panel.get_by_label("Reason").fill("incident 9")
    panel.get_by_role("button", name="Apply").click()
    expect(olga.locator("#live-breaker-payments [data-override]")).to_contain_text(
        "forced open by olga"
    )
    banner = olga.locator("[data-overrides-in-force]")
    expect(banner).to_contain_text("overrides never wait for approval")
    expect(banner.locator('[data-override="breaker:payments"]')).to_contain_text("incident 9")
    assert ChangeRequest.objects.count() == requests
    wait_for(lambda: service.breaker("payments").state == "forced_open")


def test_apply_at_is_the_time_typed_in_the_authors_zone(
    live_url: str, browser: Any, editor: User, production: Environment, system: Actor
) -> None:
    from playwright.sync_api import expect

    api = do_create_policy(production, "rate_limit", "api", {"limit": 100}, system)
    page = browser.new_page(timezone_id="Asia/Tokyo")  # UTC+9, no summer time
    page.goto(f"{live_url}/login/")
    page.fill("#id_username", "erin")
    page.fill("#id_password", "password-erin")
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_url}/")
    _propose_limit(page, live_url, api, "250", "sale at 18:00 in Tokyo")
    page.get_by_label("Apply at").fill("2030-06-01T18:00")
    page.get_by_role("button", name="Plan").click()
    expect(page.locator("main .flash")).to_have_text("Planned for the time chosen.")
    expect(page.locator("[data-apply-at] time")).to_have_attribute(
        "datetime", "2030-06-01T09:00:00+00:00"
    )
    planned = ChangeRequest.objects.get()
    assert planned.apply_at is not None
    assert planned.apply_at.isoformat() == "2030-06-01T09:00:00+00:00"
