"""An incident as an operator lives it: a breaker opens, they trip it, a colleague sees it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User

from controlplane import demo
from controlplane.live.ingest import Ingestor
from controlplane.policies.examples import load_examples
from tests.browser.conftest import keep_screenshot, log_in

pytestmark = pytest.mark.django_db(transaction=True)

ROW = 'tr[data-breaker="payments"]'


@pytest.fixture
def demo_traffic(settings: Any) -> Iterator[None]:
    """Example policies, the ingest, and the demo service with a short failure cycle."""
    load_examples()
    ingestor = Ingestor(block_ms=100)
    ingestor.start()
    stop = threading.Event()
    worker = threading.Thread(
        target=demo.run,
        args=(settings.REDIS_URL,),
        kwargs={"key_prefix": settings.REDIS_KEY_PREFIX, "stop_event": stop, "cycle_seconds": 6.0},
        daemon=True,
    )
    worker.start()
    yield
    stop.set()
    worker.join(timeout=20)
    ingestor.stop()


def test_operator_watches_a_breaker_open_trips_it_and_a_colleague_sees_it(
    live_url: str, browser: Any, operator: User, viewer: User, demo_traffic: None
) -> None:
    olga = log_in(browser, live_url, "olga")
    olga.goto(f"{live_url}/e/production/live/")
    olga.wait_for_selector('[data-live-status="connected"]')
    # Pushed over the websocket when the simulated upstream starts failing.
    olga.wait_for_selector(
        f'{ROW}[data-state="open"], {ROW}[data-state="half_open"]', timeout=60_000
    )

    alice = log_in(browser, live_url, "alice")
    # Her first page, home, says it before she looks for it (the README's picture).
    alice.wait_for_selector('#home-production [data-problem="breaker:payments"]')
    keep_screenshot(alice, "home-demo-incident", full_page=True)
    alice.goto(f"{live_url}/e/production/live/")
    alice.wait_for_selector('[data-live-status="connected"]')
    assert alice.locator("#act-panel, [data-act]").count() == 0  # viewers get no controls

    olga.locator(f"{ROW} [data-act]").click()  # opens the override panel below the row
    panel = olga.locator("tr.act-panel")
    assert panel.locator("input[name=policy]").input_value() == "breaker:payments"
    panel.get_by_role("radio", name="Force open").check()
    panel.get_by_label("Reason").fill("incident 7: payments provider down")
    panel.get_by_role("button", name="Apply").click()
    olga.wait_for_selector("text=Force open: breaker payments until")

    # Alice's page changes without a reload.
    alice.wait_for_selector(f"{ROW} [data-override]:has-text('forced open by olga')")
    alice.wait_for_selector(f'{ROW}[data-state="forced_open"]', timeout=30_000)

    olga.locator(f"{ROW} [data-act]").click()
    panel = olga.locator("tr.act-panel")
    panel.get_by_role("radio", name="Reset to closed").check()
    panel.get_by_label("Reason").fill("provider recovered")
    panel.get_by_role("button", name="Apply").click()
    olga.wait_for_selector("text=Reset to closed: breaker payments.")
    alice.wait_for_selector(f"{ROW} [data-override]:has-text('none')")

    olga.goto(f"{live_url}/audit/?object=payments&action=override")
    # Rows keep the raw action in data-action and show it by name.
    tripped = olga.locator('tr[data-action="override.set"]', has_text="incident 7")
    assert "Override set" in tripped.inner_text()
    reset = olga.locator('tr[data-action="override.reset"]', has_text="provider recovered")
    assert "Breaker reset" in reset.inner_text()
    assert olga.locator('tr[data-action="override.clear"]').count() == 0  # in the reset's row
