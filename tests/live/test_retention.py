"""The database's history is kept for HISTORY_KEEP_DAYS days: older rows go, nothing else."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django.core.management import call_command
from django.utils import timezone

from controlplane.live import retention
from controlplane.live.models import BreakerEvent, DiscoveredName
from controlplane.live.retention import prune_history
from controlplane.policies.models import Environment

pytestmark = pytest.mark.django_db


def _event(environment: Environment, name: str, age: timedelta) -> BreakerEvent:
    return BreakerEvent.objects.create(
        environment=environment,
        name=name,
        instance="web-1",
        from_state="closed",
        to_state="open",
        at=timezone.now() - age,
    )


def _discovered(environment: Environment, name: str, age: timedelta) -> DiscoveredName:
    return DiscoveredName.objects.create(
        environment=environment, kind="breaker", name=name, last_seen=timezone.now() - age
    )


def _session(expires_in: timedelta) -> str:
    store = SessionStore()
    store["user"] = "someone"
    store.create()
    Session.objects.filter(pk=store.session_key).update(expire_date=timezone.now() + expires_in)
    assert store.session_key is not None
    return store.session_key


def test_prunes_what_is_older_than_the_days_kept_and_nothing_else(
    production: Environment, settings: Any
) -> None:
    settings.HISTORY_KEEP_DAYS = 7
    staging = Environment.objects.create(name="staging")
    for environment in (production, staging):
        _event(environment, "old", timedelta(days=7, minutes=1))
        _event(environment, "recent", timedelta(days=6, hours=23))
    _discovered(production, "unused", timedelta(days=8))
    _discovered(production, "used", timedelta(hours=1))
    expired, live = _session(timedelta(seconds=-1)), _session(timedelta(days=1))

    pruned = prune_history()

    assert (pruned.breaker_events, pruned.discovered_names) == (2, 1)
    assert sorted(BreakerEvent.objects.values_list("environment__name", "name")) == [
        ("production", "recent"),
        ("staging", "recent"),
    ]
    assert list(DiscoveredName.objects.values_list("name", flat=True)) == ["used"]
    assert list(Session.objects.values_list("pk", flat=True)) == [live]
    assert expired != live
    assert not prune_history().any  # a second run finds nothing


def test_deletes_in_batches_until_all_old_rows_are_gone(
    production: Environment, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.HISTORY_KEEP_DAYS = 1
    monkeypatch.setattr(retention, "BATCH", 3)
    for n in range(8):
        _event(production, f"b{n}", timedelta(days=2))
    _event(production, "today", timedelta(minutes=5))

    assert prune_history().breaker_events == 8
    assert list(BreakerEvent.objects.values_list("name", flat=True)) == ["today"]


def test_the_command_says_what_it_deleted(production: Environment, settings: Any) -> None:
    settings.HISTORY_KEEP_DAYS = 30
    _event(production, "old", timedelta(days=31))
    out = StringIO()

    call_command("prune_history", stdout=out)

    assert "Deleted 1 breaker events and 0 discovered names older than 30 days" in out.getvalue()
    assert not BreakerEvent.objects.exists()
