"""The audit log and its exports show each user the entries of the environments they may view."""

from __future__ import annotations

import csv
import io
import json

import pytest
from django.contrib.auth.models import User
from django.test import Client

from controlplane.accounts.actors import Actor
from controlplane.audit.record import record
from controlplane.policies.models import Environment
from tests.scoping import scoped_cast

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def logged(production: Environment, system: Actor) -> None:
    """An entry of production, one of staging, and one of no environment (a token)."""
    scoped_cast(system)
    record(system, "policy.update", environment="production", kind="cache", name="prices")
    record(system, "policy.update", environment="staging", kind="cache", name="prices")
    record(system, "token.create", kind="token", name="deploy-bot")


def _seen(client: Client, username: str) -> dict[str, set[str]]:
    """What the page, the CSV and the JSON export show ``username``: environment or action."""
    client.force_login(User.objects.get(username=username))
    html = client.get("/audit/").content.decode()
    page = {part.split('"')[0] for part in html.split('<tr data-action="')[1:]}
    text = b"".join(client.get("/audit/export.csv").streaming_content).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    exported = json.loads(b"".join(client.get("/audit/export.json").streaming_content))
    return {
        "page": page,
        "csv": {row["environment"] or row["action"] for row in rows},
        "json": {row["environment"] or row["action"] for row in exported},
    }


@pytest.mark.parametrize(
    ("who", "expected"),
    [
        ("sam", {"staging"}),  # viewer in staging only
        ("stella", {"production", "staging"}),  # viewer everywhere: not the token's entry
        ("adam", {"production", "staging", "token.create"}),  # admin everywhere
    ],
)
def test_audit_log_and_exports_show_the_environments_the_user_may_view(
    client: Client, logged: None, admin: User, who: str, expected: set[str]
) -> None:
    seen = _seen(client, who)
    assert seen["csv"] == seen["json"] == expected
    assert ("token.create" in seen["page"]) == ("token.create" in expected)
    if who == "sam":
        assert "production" not in client.get("/audit/").content.decode()
