"""An admin (without ``is_staff``) invites a user through the product's pages; the new
user chooses a password through the link and logs in."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from controlplane.accounts.actors import Actor
from controlplane.accounts.roles import Role, grants_of
from controlplane.policies.actions import do_create_environment
from controlplane.policies.models import Environment
from tests.browser.conftest import keep_screenshot, log_in

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "correct-horse-battery-9"


def test_an_admin_invites_a_user_who_sets_a_password_and_logs_in(
    live_url: str, browser: Any, admin: User, production: Environment, system: Actor
) -> None:
    do_create_environment("staging", system)
    assert not admin.is_staff
    page = log_in(browser, live_url, "adam")

    page.click('nav a:has-text("Users")')
    page.click('a.button:has-text("New user")')
    page.get_by_label("Username").fill("nina")
    page.get_by_label("Email").fill("nina@example.com")
    page.get_by_label("Role in staging").select_option("editor")
    page.get_by_label("Role in production").select_option("viewer")
    page.get_by_role("button", name="Create user").click()

    expect(page.get_by_role("heading", name="nina was created")).to_be_visible()
    link = page.locator("#invite-link").inner_text()
    assert link.startswith(f"{live_url}/users/invite/")
    page.click('a:has-text("All users")')
    row = page.locator('tr[data-user="nina"]')
    expect(row).to_contain_text("viewer in production, editor in staging")
    expect(row).to_contain_text("never")
    keep_screenshot(page, "users")
    nina = User.objects.get(username="nina")
    grants = grants_of(nina)
    assert (grants.role_in("staging"), grants.role_in("production")) == (Role.EDITOR, Role.VIEWER)

    newcomer = browser.new_context().new_page()
    newcomer.goto(link)
    newcomer.get_by_label("New password", exact=True).fill(PASSWORD)
    newcomer.get_by_label("New password confirmation").fill(PASSWORD)
    newcomer.get_by_role("button", name="Set my password").click()
    expect(newcomer.get_by_text("Your password is set: log in with it.")).to_be_visible()
    newcomer.fill("#id_username", "nina")
    newcomer.fill("#id_password", PASSWORD)
    newcomer.click("button[type=submit]")
    newcomer.wait_for_url(f"{live_url}/")
    expect(newcomer.locator("nav")).to_contain_text("nina")

    newcomer.goto(link)  # the link worked once
    expect(newcomer.get_by_text("This link does not work any more")).to_be_visible()
