"""Humane values: relative times with the absolute time on hover, labels, units."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from controlplane.accounts.actors import Actor
from controlplane.audit.templatetags.humane import ago, relative, until
from controlplane.policies.actions import do_create_policy, do_update_policy
from controlplane.policies.models import Environment
from controlplane.policies.overrides import do_set_override
from controlplane.protocol.schema import duration_text, field_label, shown_value

NOW = datetime(2026, 12, 6, 21, 33, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(seconds=2), "just now"),
        (timedelta(seconds=42), "42 s ago"),
        (timedelta(minutes=3, seconds=20), "3 min ago"),
        (timedelta(hours=5), "5 h ago"),
        (timedelta(days=2, hours=1), "2 d ago"),
        (-timedelta(minutes=52), "in 52 min"),
        (-timedelta(seconds=1), "in a moment"),
    ],
)
def test_relative_times_read_as_people_say_them(delta: timedelta, text: str) -> None:
    assert relative(NOW - delta, now=NOW) == text


def test_ago_is_a_time_element_with_the_absolute_time_and_zone_on_hover() -> None:
    html = str(ago(NOW))
    assert html.startswith('<time datetime="2026-12-06T21:33:05+00:00"')
    assert 'title="2026-12-06 21:33:05 UTC"' in html and 'data-relative="ago"' in html
    # A Unix time (a heartbeat's ``at``) reads the same as the datetime it stands for.
    assert str(ago(NOW.timestamp())) == html
    assert ago(None) == "—"


def test_until_gives_the_clock_time_and_how_long_from_now() -> None:
    soon = timezone.now().replace(microsecond=0) + timedelta(minutes=10, seconds=30)
    html = str(until(soon))
    assert f"{soon:%H:%M} UTC (in 10 min)</time>" in html  # prefixed by its date after 23:50
    assert 'data-relative="clock"' in html


def test_settings_are_shown_with_their_units() -> None:
    assert shown_value("breaker", "slow_call_duration", 1.0) == "1 s"
    assert shown_value("breaker", "open_for", 10) == "10 s"
    assert shown_value("breaker", "failure_rate_threshold", 50.0) == "50 %"
    assert shown_value("rate_limit", "period", 60.0) == "60 s"
    assert shown_value("rate_limit", "limit", 1) == "1 request"
    assert shown_value("breaker", "window_size", 100, {"window_type": "count"}) == "100 calls"
    assert shown_value("breaker", "window_size", 60, {"window_type": "time"}) == "60 s"
    assert shown_value("cache", "enabled", True) == "true"
    assert shown_value("rate_limit", "burst", None) == ""
    assert [duration_text(s) for s in (0.25, 90, 300, 7200)] == ["250 ms", "90 s", "5 min", "2 h"]
    assert field_label("breaker", "failure_rate_threshold") == "Failure rate threshold"
    assert field_label("breaker", "expires_at") == "Expires at"


@pytest.mark.django_db
def test_the_policy_page_shows_units_and_relative_times(
    client: Client, viewer: User, production: Environment, system: Actor
) -> None:
    do_create_policy(production, "breaker", "payments", {"open_for": 10}, system)
    client.force_login(viewer)

    html = client.get("/e/production/breaker/payments/").content.decode()

    assert "<dt>Open for</dt><dd>10 s</dd>" in html
    assert "<dt>Failure rate threshold</dt><dd>50 %</dd>" in html
    assert "<dt>Window size</dt><dd>100 calls</dd>" in html
    assert 'data-relative="ago">just now</time>' in html
    assert "Y-m-d" not in html


@pytest.mark.django_db
def test_the_audit_log_shows_labels_and_action_names_and_keeps_raw_values(
    client: Client, viewer: User, production: Environment, system: Actor
) -> None:
    policy = do_create_policy(production, "breaker", "payments", {}, system)
    do_update_policy(policy, {"failure_rate_threshold": 25}, system, "too sensitive")
    expires = timezone.now() + timedelta(minutes=10)
    do_set_override(production, "breaker", "payments", "forced_open", system, "incident", expires)
    client.force_login(viewer)

    html = client.get("/audit/").content.decode()
    exported = client.get("/audit/export.csv?action=policy.update")

    assert '<tr data-action="policy.update">' in html
    assert '<span title="policy.update">Policy changed</span>' in html
    assert '<span title="override.set">Override set</span>' in html
    assert (
        '<tr data-field="failure_rate_threshold"><th>Failure rate threshold</th>'
        '<td class="old">50 %</td><td class="arrow">→</td><td class="new">25 %</td>'
    ) in html
    expiry = f"{expires:%Y-%m-%d %H:%M:%S} UTC"
    assert (
        '<th>Expires at</th><td class="old">—</td><td class="arrow">→</td>'
        f'<td class="new">{expiry}</td>' in html
    )
    assert 'data-relative="ago"' in html
    body = b"".join(exported.streaming_content).decode()
    assert "policy.update" in body and "failure_rate_threshold" in body
    assert "Policy changed" not in body
