"""Browser tests: Daphne serves the app from a child process; Playwright drives Debian's Chromium.

Playwright's own browser download does not work here, so the tests launch
``/usr/bin/chromium`` (``apt-get install chromium``). Without it they skip with
that message, except under CI, where a missing browser fails the run.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.client.conftest import client_factory, set_policy
from tests.daphne import HOST, daphne_servers

__all__ = ["client_factory", "set_policy"]

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def _chromium_or_skip() -> str:
    if os.access(CHROMIUM, os.X_OK) or shutil.which(CHROMIUM):
        return CHROMIUM
    message = f"Chromium not found at {CHROMIUM}: run `apt-get install -y chromium` to enable"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI must run the browser tests)")
    pytest.skip(message)


@pytest.fixture
def live_url(transactional_db: None, settings: Any) -> Iterator[str]:
    """Serve the app with Daphne (HTTP and websockets) on a loopback port."""
    settings.ALLOWED_HOSTS = [HOST, "localhost"]
    with daphne_servers(1) as ports:
        yield f"http://{HOST}:{ports[0]}"


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    executable = _chromium_or_skip()
    # Playwright's sync API keeps an event loop on this thread; the test's own
    # ORM calls are still plain synchronous calls.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def log_in(browser: Any, live_url: str, username: str) -> Any:
    """A new page, logged in through the login form as ``username``."""
    page = browser.new_page()
    page.goto(f"{live_url}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", f"password-{username}")
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_url}/")
    return page


def keep_screenshot(page: Any, name: str, *, full_page: bool = False) -> None:
    """With ``SCREENSHOTS`` set to a folder, keep a picture of ``page`` there as ``name``.png.

    ``make screenshots`` sets it to docs/tour, whose pictures are these.
    """
    folder = os.environ.get("SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        file_name = re.sub(r"\W+", "-", name).strip("-") + ".png"
        page.screenshot(path=Path(folder) / file_name, full_page=full_page)
