"""An admin points a webhook at a chat receiver from the policy list, sends a test, and
reads the delivery log once the sender has run."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User

from controlplane.accounts.actors import Actor
from controlplane.policies.actions import do_create_policy
from controlplane.policies.models import Environment
from controlplane.webhooks.delivery import deliver_due
from controlplane.webhooks.models import Webhook
from tests.browser.conftest import keep_screenshot, log_in
from tests.webhooks import conftest as webhook_fixtures
from tests.webhooks.receiver import Receiver

pytestmark = pytest.mark.django_db(transaction=True)

# The webhook tests' loopback receiver, for this test too.
allow_private_targets = webhook_fixtures.allow_private_targets
receiver = webhook_fixtures.receiver


def test_an_admin_adds_a_webhook_sends_a_test_and_reads_its_deliveries(
    receiver: Receiver,  # first: the server is forked with private targets allowed
    live_url: str,
    browser: Any,
    admin: User,
    production: Environment,
    system: Actor,
) -> None:
    from playwright.sync_api import expect

    page = log_in(browser, live_url, admin.username)
    page.goto(f"{live_url}/policies/")
    page.locator("#env-production").get_by_role("link", name="Webhooks").click()
    page.wait_for_url(f"{live_url}/e/production/webhooks/")
    page.fill("#id_name", "chat")
    page.fill("#id_url", f"{receiver.url}/services/T000/B000/XXXX")
    page.check('input[name=events][value="policy.*"]')
    page.check('input[name=events][value="test"]')
    page.select_option("#id_payload_format", "slack")
    page.check("#id_generate_secret")
    page.get_by_role("button", name="Add webhook").click()
    secret = page.locator("#new-secret")
    expect(secret).to_have_text(Webhook.objects.get(name="chat").secret)
    row = page.locator('tr[data-webhook="chat"]')
    expect(row).to_contain_text(f"{receiver.url}/…")
    expect(row).not_to_contain_text("XXXX")

    row.get_by_role("button", name="Send test").click()
    page.wait_for_url(f"{live_url}/e/production/webhooks/chat/")
    expect(page.locator("main .flash")).to_have_text("Queued a test event for chat.")
    expect(page.locator("tr[data-status=pending]")).to_have_count(1)
    do_create_policy(production, "breaker", "payments", {}, system)  # policy.created

    assert deliver_due() == 2  # the sender's round
    assert [r.headers["x-webhook-event"] for r in receiver.requests] == ["test", "policy.created"]
    page.reload()
    expect(page.locator("tr[data-status=delivered]")).to_have_count(2)
    expect(page.locator("tbody tr").first).to_contain_text("policy.created")
    keep_screenshot(page, "webhook-deliveries")
