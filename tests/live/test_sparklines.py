"""The overview's pictures and counts: minute sums, breaker state strips, opening rates."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from controlplane.accounts.actors import Actor
from controlplane.live.ingest import process_entries
from controlplane.policies.actions import do_update_policy
from controlplane.policies.models import Environment, Policy
from controlplane.policies.overrides import do_clear_override, do_set_override
from controlplane.redis_connection import get_redis

pytestmark = pytest.mark.django_db(transaction=True)


def _entry(kind: str, instance: str, data: dict[str, Any]) -> tuple[str, dict[str, str]]:
    return ("1-0", {"type": kind, "instance": instance, "data": json.dumps(data)})


def _counters(instance: str, at: float, policies: dict[str, Any]) -> tuple[str, dict[str, str]]:
    return _entry("counters", instance, {"at": at, "policies": policies})


def _transition(instance: str, at: float, to_state: str, **data: Any) -> tuple[str, dict[str, str]]:
    return _entry(
        "transition",
        instance,
        {
            "at": at,
            "policy": "breaker:payments",
            "from_state": "closed",
            "to_state": to_state,
            "reason": "failure_rate",
            **data,
        },
    )


def _sparklines(client: Client, user: User) -> dict[str, Any]:
    client.force_login(user)
    response = client.get("/e/production/live/sparklines.json")
    assert response.status_code == 200
    data: dict[str, Any] = response.json()
    return data


def test_minutes_sum_every_instance_and_keep_a_short_half_open(
    client: Client, viewer: User, production: Environment, policies: None
) -> None:
    now = time.time()
    earlier = now - 120  # two minutes ago: the third sample from the end
    process_entries(
        production,
        [
            _counters("i1", earlier, {"breaker:payments": {"calls": 10, "failures": 4}}),
            _counters("i2", earlier, {"breaker:payments": {"calls": 5, "state": "closed"}}),
            _counters("i1", now - 1, {"rate_limit:api": {"allowed": 7, "rejected": 3}}),
            _counters("i1", now - 1, {"cache:prices": {"hits": 6, "local_hits": 2, "misses": 1}}),
            # A half-open that lasted a second, between two counters reports.
            _transition("i1", earlier, "half_open"),
            _transition("i1", earlier, "not-a-state"),
        ],
    )

    data = _sparklines(client, viewer)

    assert len(data["minutes"]) == 15
    assert data["minutes"][-1] == int(now) // 60 * 60
    index = data["minutes"].index(int(earlier) // 60 * 60)
    breaker = data["policies"]["breaker:payments"]
    assert breaker["calls"][index] == 15 and breaker["failures"][index] == 4
    assert sum(breaker["calls"]) == 15
    assert breaker["states"][index] == {"closed": 1, "half_open": 1}  # the odd state is left out
    limiter = data["policies"]["rate_limit:api"]
    assert (limiter["allowed"][-1], limiter["rejected"][-1]) == (7, 3)
    cache = data["policies"]["cache:prices"]
    assert (cache["hits"][-1], cache["misses"][-1]) == (8, 1)  # every kind of hit counts


def test_sparklines_name_only_managed_policies(
    client: Client, viewer: User, production: Environment, policies: None
) -> None:
    process_entries(
        production,
        [_counters("i1", time.time() - 1, {"breaker:unmanaged": {"calls": 3}})],
    )
    assert "breaker:unmanaged" not in _sparklines(client, viewer)["policies"]


def test_a_malformed_minute_field_is_skipped(
    client: Client, viewer: User, production: Environment, policies: None
) -> None:
    minute = int(time.time()) // 60
    get_redis().hset(
        production.keys().live_minute(minute),
        mapping={"breaker:payments|calls": "nan", b"\xff|calls": "1", "breaker:payments|slow": "2"},
    )
    data = _sparklines(client, viewer)
    assert data["policies"]["breaker:payments"]["calls"][-1] == 0


def test_the_overview_says_what_the_breaker_opened_at_and_what_it_rejected(
    client: Client, viewer: User, production: Environment, policies: None
) -> None:
    now = time.time()
    heartbeat = {"service": "shop", "revision": production.revision, "at": now}
    get_redis().hset(production.keys().instances, "i1", json.dumps(heartbeat))
    process_entries(
        production,
        [
            _transition("i1", now - 3, "open", failure_rate=62.5, slow_call_rate=0),
            _counters(
                "i1",
                now - 2,
                {"breaker:payments": {"calls": 20, "failures": 1, "rejected": 40, "state": "open"}},
            ),
        ],
    )
    client.force_login(viewer)

    html = client.get("/e/production/live/").content.decode()

    row = html[html.index('data-breaker="payments"') :]
    row = row[: row.index("</tr>")]
    assert "<td data-failure>5.0%" in row  # the fleet's last 5 s
    assert "opened at 62.5%" in row  # the rate over the breaker's own window that decided
    opened = datetime.fromtimestamp(now - 3, UTC).isoformat()
    assert f'data-open-since>opened <time datetime="{opened}"' in row  # time in state
    assert "<td data-breaker-rejected>8.0</td>" in row  # 40 rejected over 5 s
    assert 'data-spark="breaker:payments"' in row
    assert "Failures <small>last 5 s</small>" in html
    assert "Top rejected keys <small>last 2 min</small>" in html


def test_the_policy_chart_marks_its_changes_and_overrides(
    client: Client, viewer: User, production: Environment, policies: None, system: Actor
) -> None:
    payments = Policy.objects.get(name="payments")
    do_update_policy(payments, {"open_for": 5}, system, "shorter outages")
    do_set_override(production, "breaker", "payments", "forced_open", system, "provider down")
    do_clear_override(production, "breaker", "payments", system, "provider back")
    client.force_login(viewer)

    marks = client.get("/e/production/breaker/payments/series.json").json()["marks"]

    assert [(m["kind"], m["label"]) for m in marks] == [
        ("change", "v1 Create by tests"),
        ("change", "v2 Update by tests: shorter outages"),
        ("override", "forced open by tests: provider down"),
        ("override", "override lifted by tests: provider back"),
    ]
    assert marks == sorted(marks, key=lambda m: m["t"])
    # Another policy's changes are not marked on this one's chart.
    assert client.get("/e/production/rate_limit/api/series.json").json()["marks"][0]["label"] == (
        "v1 Create by tests"
    )
