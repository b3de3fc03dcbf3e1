from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

import pytest
import redis
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from controlplane.accounts.actors import Actor
from controlplane.audit.models import AuditEntry
from controlplane.live.ingest import process_entries
from controlplane.live.models import DiscoveredName
from controlplane.live.views import DONE
from controlplane.policies.actions import do_create_policy
from controlplane.policies.models import Environment, Override, Policy
from controlplane.policies.overrides import current_override, do_set_override
from controlplane.protocol.documents import MetaDocument, OverrideDocument

pytestmark = pytest.mark.django_db(transaction=True)


def test_overview_shows_live_figures(
    client: Client, viewer: User, production: Environment, policies: None, redis_client: redis.Redis
) -> None:
    heartbeat = {
        "service": "shop",
        "host": "h",
        "pid": 1,
        "library_version": "0.1.0",
        "revision": production.revision,
        "connected": True,
        "at": time.time(),
    }
    redis_client.hset(production.keys().instances, "i1", json.dumps(heartbeat))
    process_entries(
        production,
        [
            (
                "1-0",
                {
                    "type": "counters",
                    "instance": "i1",
                    "data": json.dumps(
                        {
                            "at": time.time() - 2,
                            "policies": {
                                "breaker:payments": {"calls": 10, "failures": 10, "state": "open"},
                                "rate_limit:api": {
                                    "allowed": 5,
                                    "rejected": 5,
                                    "top_rejected": {"user:9": 5},
                                },
                            },
                        }
                    ),
                },
            )
        ],
    )
    client.force_login(viewer)

    html = client.get("/e/production/live/").content.decode()

    assert 'data-breaker="payments" data-state="open"' in html
    assert "100.0%" in html  # failure rate
    assert "<code>user:9</code>" in html
    assert 'data-in-sync="1"' in html
    assert 'ws-connect="/ws/live/production/"' in html
    assert "override-form" not in html and "data-act" not in html  # viewers see no controls


def test_operator_trips_a_breaker_with_a_reason_and_expiry(
    client: Client,
    operator: User,
    production: Environment,
    policies: None,
    redis_client: redis.Redis,
) -> None:
    client.force_login(operator)
    response = client.post(
        "/e/production/override/",
        {
            "kind": "breaker",
            "name": "payments",
            "action": "trip",
            "reason": "upstream on fire",
            "expires_in_minutes": "10",
        },
    )
    assert response.status_code == 302
    override = current_override(production, "breaker", "payments")
    assert override is not None and override.state == "forced_open"
    assert override.expires_at is not None
    stored = OverrideDocument.decode(
        redis_client.hget(production.keys().overrides, "breaker:payments")
    )
    assert (stored.state, stored.reason) == ("forced_open", "upstream on fire")
    html = client.get("/e/production/live/").content.decode()
    row = html.split('id="live-breaker-payments"', 1)[1].split("</tr>", 1)[0]
    assert "forced open by olga" in row
    assert '<q class="override-reason" title="upstream on fire">upstream on fire</q>' in row
    assert f'until <time datetime="{override.expires_at.isoformat()}" data-expires>' in row
    assert Policy.objects.get(name="payments").version == 1


def test_override_without_a_reason_changes_nothing(
    client: Client, operator: User, production: Environment, policies: None
) -> None:
    client.force_login(operator)
    response = client.post(
        "/e/production/override/",
        {"kind": "breaker", "name": "payments", "action": "trip", "reason": ""},
        follow=True,
    )
    assert "Nothing was changed" in response.content.decode()
    assert current_override(production, "breaker", "payments") is None


def test_reset_lifts_the_override_and_closes_the_breaker_fleet_wide(
    client: Client,
    operator: User,
    production: Environment,
    policies: None,
    redis_client: redis.Redis,
) -> None:
    client.force_login(operator)
    client.post(
        "/e/production/override/",
        {"kind": "breaker", "name": "payments", "action": "trip", "reason": "x"},
    )
    client.post(
        "/e/production/override/",
        {"kind": "breaker", "name": "payments", "action": "reset", "reason": "recovered"},
    )
    assert current_override(production, "breaker", "payments") is None
    shared = json.loads(redis_client.hget(production.keys().breakers, "payments"))
    assert (shared["state"], shared["reason"], shared["instance"]) == (
        "closed",
        "reset",
        "controlplane",
    )
    assert AuditEntry.objects.filter(action="override.reset", reason="recovered").exists()


def test_limiter_block_and_cache_purge(
    client: Client, operator: User, production: Environment, policies: None
) -> None:
    client.force_login(operator)
    client.post(
        "/e/production/override/",
        {"kind": "rate_limit", "name": "api", "action": "block_all", "reason": "abuse"},
    )
    client.post(
        "/e/production/override/",
        {"kind": "cache", "name": "prices", "action": "purge", "reason": "bad prices"},
    )
    override = current_override(production, "rate_limit", "api")
    assert override is not None and override.state == "block_all"
    prices = Policy.objects.get(name="prices")
    assert prices.spec["generation"] == 1
    assert prices.versions.get(version=2).reason == "Purge: bad prices"


def test_viewer_cannot_override(
    client: Client, viewer: User, production: Environment, policies: None
) -> None:
    client.force_login(viewer)
    response = client.post(
        "/e/production/override/",
        {"kind": "breaker", "name": "payments", "action": "trip", "reason": "x"},
    )
    assert response.status_code == 403
    assert current_override(production, "breaker", "payments") is None


def test_adopt_creates_a_policy_from_code_defaults(
    client: Client, editor: User, production: Environment
) -> None:
    found = DiscoveredName.objects.create(
        environment=production,
        kind="breaker",
        name="search",
        defaults={"failure_rate_threshold": 30, "open_for": 15},
        last_seen="2026-11-27T00:00:00Z",
    )
    client.force_login(editor)
    assert "search" in client.get("/e/production/discovered/").content.decode()
    response = client.post(f"/e/production/discovered/{found.pk}/adopt/")
    assert response.status_code == 302
    policy = Policy.objects.get(name="search")
    assert (policy.spec["failure_rate_threshold"], policy.spec["open_for"]) == (30.0, 15.0)
    assert (
        'data-discovered="breaker:search"'
        not in client.get("/e/production/discovered/").content.decode()
    )
    assert AuditEntry.objects.get(action="policy.adopt", object_name="search").actor_name == "erin"


def test_instances_page_flags_instances_behind(
    client: Client,
    viewer: User,
    production: Environment,
    policies: None,
    redis_client: redis.Redis,
) -> None:
    _heartbeats(
        redis_client,
        production,
        fresh={"pid": 2, "revision": production.revision},
        stale={"pid": 2, "revision": 1},
    )
    # The change was published a minute ago: past every heartbeat timeout, so "stale"
    # is behind, not still applying it.
    _published_a_minute_ago(redis_client, production)
    client.force_login(viewer)
    html = client.get("/e/production/instances/").content.decode()
    assert 'data-instance="fresh"' in html and 'data-instance="stale"' in html
    assert html.count("data-behind") == 1


def test_policy_page_shows_live_state_per_instance_and_series(
    client: Client,
    viewer: User,
    production: Environment,
    policies: None,
    redis_client: redis.Redis,
) -> None:
    for instance, state in (("i1", "open"), ("i2", "closed")):
        redis_client.hset(
            production.keys().instances,
            instance,
            json.dumps(
                {
                    "service": "shop",
                    "host": "h",
                    "pid": 1,
                    "library_version": "0.1.0",
                    "revision": production.revision,
                    "connected": True,
                    "at": time.time(),
                }
            ),
        )
        process_entries(
            production,
            [
                (
                    "1-0",
                    {
                        "type": "counters",
                        "instance": instance,
                        "data": json.dumps(
                            {
                                "at": time.time() - 2,
                                "policies": {
                                    "breaker:payments": {"calls": 4, "failures": 2, "state": state}
                                },
                            }
                        ),
                    },
                )
            ],
        )
    client.force_login(viewer)

    html = client.get("/e/production/breaker/payments/").content.decode()

    assert 'id="policy-live"' in html
    assert html.count("data-instance-state=") == 2
    assert "1 open, 1 closed" in html or "1 closed, 1 open" in html
    assert 'ws-connect="/ws/live/production/?policy=breaker%3Apayments"' in html
    series = client.get("/e/production/breaker/payments/series.json?seconds=10").json()
    assert len(series["t"]) == 10 and sum(series["calls"]) == 8 and sum(series["failures"]) == 4


class OverrideForm(HTMLParser):
    """A page's override panel: its action, hidden inputs, and each radio's or button's values.

    ``choices`` are those shown; ``hidden`` those the page shows only once they apply
    (the lift, while no override is in force).
    """

    def __init__(self, html: str) -> None:
        super().__init__()
        self.action = ""
        self.inputs: dict[str, str] = {}
        self.choices: dict[str, list[str]] = {}
        self.hidden: dict[str, list[str]] = {}
        self._inside = False
        self._hidden = False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {name: value or "" for name, value in attrs}
        if tag == "span" and "data-lift" in found:
            self._hidden = "hidden" in found
        if tag == "form" and "override-form" in found.get("class", "").split():
            self._inside, self.action = True, found["action"]
        elif not self._inside or "name" not in found:
            return
        elif tag == "input" and found.get("type") == "hidden":
            self.inputs[found["name"]] = found.get("value", "")
        elif found.get("type") in ("radio", "submit"):
            shown = self.hidden if self._hidden else self.choices
            shown.setdefault(found["name"], []).append(found.get("value", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._inside = False
        elif tag == "span":
            self._hidden = False


# Every override an operator can place, and what it leaves behind.
OVERRIDES = [
    ("breaker:payments", "trip", "forced_open"),
    ("breaker:payments", "force_closed", "forced_closed"),
    ("breaker:payments", "disable", "disabled"),
    ("breaker:payments", "reset", None),
    ("breaker:payments", "lift", None),
    ("rate_limit:api", "block_all", "block_all"),
    ("rate_limit:api", "bypass", "bypass"),
    ("rate_limit:api", "lift", None),
    ("cache:prices", "purge", None),
]


@pytest.mark.parametrize("page", ["overview", "policy"])
@pytest.mark.parametrize(("field", "action", "state"), OVERRIDES)
def test_operator_places_every_override_from_the_overview_and_the_policy_page(
    client: Client,
    operator: User,
    production: Environment,
    policies: None,
    page: str,
    field: str,
    action: str,
    state: str | None,
) -> None:
    kind, _, name = field.partition(":")
    if action in ("reset", "lift"):
        first = "forced_open" if kind == "breaker" else "block_all"
        do_set_override(production, kind, name, first, Actor.system("olga"), "earlier")
    client.force_login(operator)
    url = "/e/production/live/" if page == "overview" else f"/e/production/{kind}/{name}/"
    html = client.get(url).content.decode()
    form = OverrideForm(html)
    if page == "overview":  # the row's Act button opens the panel below it (live.js) ...
        assert f'data-act="{field}" aria-expanded="false" aria-controls="act-live-' in html
        # ... and without scripts, as a link, opens the policy's page at its form.
        assert f'href="/e/production/{kind}/{name}/#override-form">Act</a>' in html
    else:
        assert form.inputs["policy"] == field
        assert 'id="override-form"' in html
    if page == "overview" and action == "lift":  # shown by live.js for a row with an override
        assert form.hidden["action"] == ["lift"]
    else:
        assert action in form.choices["action"]

    response = client.post(
        form.action,
        {
            **form.inputs,
            "policy": field,
            "action": action,
            "reason": "incident 7",
            "expires_in_minutes": "10",
        },
        follow=True,
    )

    assert response.redirect_chain[-1][0] == url
    done = DONE[action] + f": {kind} {name}"
    assert done + (" until 20" if state else ".") in response.content.decode()
    override = current_override(production, kind, name)
    assert (override.state if override else None) == state
    if state is not None:
        assert override is not None and override.expires_at is not None
        assert override.reason == "incident 7"
    if action == "reset":
        assert AuditEntry.objects.filter(action="override.reset", reason="incident 7").exists()
    if action == "purge":
        assert Policy.objects.get(name="prices").spec["generation"] == 1


def test_policy_page_offers_only_its_kinds_overrides(
    client: Client, operator: User, production: Environment, policies: None
) -> None:
    client.force_login(operator)
    html = client.get("/e/production/rate_limit/api/").content.decode()
    form = OverrideForm(html)
    assert form.choices["action"] == ["block_all", "bypass"]  # nothing to lift yet
    assert form.hidden["action"] == ["lift"]  # shown when a push brings one (live.js)
    assert "act-states" in html and "act-once" not in html  # no empty group
    assert form.choices["expires_in_minutes"] == ["10", "60", "240", "custom", ""]
    do_set_override(production, "rate_limit", "api", "bypass", Actor.system("olga"), "load test")
    form = OverrideForm(client.get("/e/production/rate_limit/api/").content.decode())
    assert form.choices["action"] == ["block_all", "bypass", "lift"]
    cache = OverrideForm(client.get("/e/production/cache/prices/").content.decode())
    assert cache.choices == {"action": ["purge"]}  # done once: no expiry to choose


def test_overview_override_form_lists_no_policies(
    client: Client, operator: User, production: Environment, policies: None, system: Actor
) -> None:
    for number in range(30):
        do_create_policy(production, "breaker", f"b{number}", {}, system)
    client.force_login(operator)

    html = client.get("/e/production/live/").content.decode()

    assert OverrideForm(html).inputs["policy"] == ""  # a row's Act button fills it
    assert "{#" not in html and "live.js opens a copy" not in html  # comments stay comments
    assert html.count(" data-act=") == 33


def test_override_without_a_policy_changes_nothing(
    client: Client, operator: User, production: Environment, policies: None
) -> None:
    client.force_login(operator)
    response = client.post(
        "/e/production/override/", {"policy": "", "action": "trip", "reason": "x"}, follow=True
    )
    assert "Nothing was changed. policy: Pick a policy" in response.content.decode()
    assert not Override.objects.exists()


def test_overview_page_queries_do_not_grow_with_the_policies(
    client: Client, operator: User, production: Environment, system: Actor
) -> None:
    client.force_login(operator)
    kinds = ["breaker", "breaker", "rate_limit", "cache"]
    queries: list[int] = []
    for total in (4, 40):
        for number in range(len(queries) * 4, total):
            spec = {"ttl": 30} if kinds[number % 4] == "cache" else {}
            do_create_policy(production, kinds[number % 4], f"p{number}", spec, system)
        do_set_override(production, "breaker", f"p{total - 4}", "disabled", system, "x")
        with CaptureQueriesContext(connection) as captured:
            html = client.get("/e/production/live/").content.decode()
        assert html.count("<tr id=") == total
        queries.append(len(captured))
    assert queries[0] == queries[1]


def _redis_contents(redis_client: redis.Redis, environment: Environment) -> dict[bytes, bytes]:
    """Every key of the environment, serialized: equal only if nothing was written."""
    prefix = environment.keys().policies.rsplit(":", 1)[0]
    keys = redis_client.scan_iter(match=prefix.replace("{", "\\{") + "*", count=1000)
    contents: dict[bytes, bytes] = {key: redis_client.dump(key) for key in keys}  # type: ignore[misc]
    assert contents  # the policies are published: the comparison means something
    return contents


@pytest.mark.parametrize(
    ("kind", "action"),
    [
        ("breaker", "reset"),
        ("breaker", "trip"),
        ("breaker", "force_closed"),
        ("breaker", "disable"),
        ("rate_limit", "block_all"),
        ("rate_limit", "bypass"),
        ("cache", "purge"),
        ("breaker", "lift"),
    ],
)
@pytest.mark.parametrize("name", ["a" * 250, "a{b}*", "pay ments"])
def test_live_action_on_a_name_outside_the_rule_changes_nothing(
    client: Client,
    operator: User,
    production: Environment,
    policies: None,
    redis_client: redis.Redis,
    kind: str,
    action: str,
    name: str,
) -> None:
    client.force_login(operator)
    before = _redis_contents(redis_client, production)
    audited = AuditEntry.objects.count()
    response = client.post(
        "/e/production/override/",
        {"policy": f"{kind}:{name}", "action": action, "reason": "incident 7"},
        follow=True,
    )
    assert response.status_code == 200
    assert "Nothing was changed. name: Use 1 to 100 letters" in response.content.decode()
    assert _redis_contents(redis_client, production) == before
    assert AuditEntry.objects.count() == audited
    assert not Override.objects.exists()


def test_lifting_an_override_needs_a_reason(
    client: Client, operator: User, production: Environment, policies: None
) -> None:
    client.force_login(operator)
    client.post(
        "/e/production/override/",
        {"policy": "breaker:payments", "action": "trip", "reason": "upstream on fire"},
    )
    response = client.post(
        "/e/production/override/",
        {"policy": "breaker:payments", "action": "lift", "reason": " "},
        follow=True,
    )
    assert "Nothing was changed. reason: Say why" in response.content.decode()
    override = current_override(production, "breaker", "payments")
    assert override is not None and override.state == "forced_open"
    client.post(
        "/e/production/override/",
        {"policy": "breaker:payments", "action": "lift", "reason": "upstream recovered"},
    )
    assert current_override(production, "breaker", "payments") is None
    assert AuditEntry.objects.filter(action="override.clear", reason="upstream recovered").exists()


def test_an_overlong_reason_changes_nothing(
    client: Client, operator: User, production: Environment, policies: None
) -> None:
    client.force_login(operator)
    response = client.post(
        "/e/production/override/",
        {"policy": "breaker:payments", "action": "reset", "reason": "x" * 1001},
        follow=True,
    )
    assert "Nothing was changed. reason: Use at most 1000 characters" in (response.content.decode())
    assert not AuditEntry.objects.filter(action="override.reset").exists()


def test_instances_page_shows_each_implementation_as_text(
    client: Client, viewer: User, production: Environment, redis_client: redis.Redis
) -> None:
    heartbeat = {"service": "shop", "library_version": "0.1.0", "revision": 0, "at": time.time()}
    python = {
        "name": "controlplane.client",
        "version": "0.1.0",
        "language": "python",
        "language_version": "3.11.7",
    }
    hostile = {"name": "<script>alert(1)</script>", "version": "1", "language": "<b>go</b>"}
    for name, implementation in (("py1", python), ("py2", python), ("hostile", hostile)):
        document = {**heartbeat, "implementation": implementation}
        redis_client.hset(production.keys().instances, name, json.dumps(document))
    redis_client.hset(production.keys().instances, "old", json.dumps(heartbeat))
    client.force_login(viewer)

    html = client.get("/e/production/instances/").content.decode()

    assert html.count("python 3.11.7 · controlplane.client 0.1.0</td>") == 2
    assert "unknown · library 0.1.0</td>" in html  # a 1.0 client says no implementation
    assert "<script>alert" not in html and "<b>go" not in html
    assert "&lt;b&gt;go&lt;/b&gt; · &lt;script&gt;alert(1)&lt;/script&gt; 1" in html
    assert "python 3.11.7 · controlplane.client 0.1.0 (2)" in html  # the fleet's summary


# Every action an operator takes from the panel, what it needs first, and its one audit row.
ACTIONS_AUDITED = [
    ("breaker:payments", "trip", None, "override.set"),
    ("breaker:payments", "lift", "forced_open", "override.clear"),
    ("breaker:payments", "reset", "forced_open", "override.reset"),  # lifts and resets
    ("breaker:payments", "reset", None, "override.reset"),
    ("rate_limit:api", "block_all", None, "override.set"),
    ("rate_limit:api", "lift", "bypass", "override.clear"),
    ("cache:prices", "purge", None, "policy.purge"),
]


@pytest.mark.parametrize(("field", "action", "before", "audited"), ACTIONS_AUDITED)
def test_each_action_writes_exactly_one_audit_row(
    client: Client,
    operator: User,
    production: Environment,
    policies: None,
    field: str,
    action: str,
    before: str | None,
    audited: str,
) -> None:
    kind, _, name = field.partition(":")
    if before is not None:
        do_set_override(production, kind, name, before, Actor.system("olga"), "earlier")
    client.force_login(operator)
    mark = AuditEntry.objects.count()

    client.post(
        "/e/production/override/",
        {"policy": field, "action": action, "reason": "incident 7", "expires_in_minutes": "10"},
    )

    entries = list(AuditEntry.objects.order_by("id")[mark:])
    assert [(e.action, e.object_name, e.reason) for e in entries] == [
        (audited, name, "Purge: incident 7" if action == "purge" else "incident 7")
    ]
    if before is not None:  # the lift a reset includes is in its one row
        assert entries[0].changes["state"] == [before, None]


def _trip(client: Client, **expiry: str) -> str:
    response = client.post(
        "/e/production/override/",
        {"policy": "breaker:payments", "action": "trip", "reason": "incident 7", **expiry},
        follow=True,
    )
    return response.content.decode()


@pytest.mark.parametrize(
    ("expiry", "minutes"),
    [
        ({"expires_in_minutes": "10"}, 10),
        ({"expires_in_minutes": "60"}, 60),
        ({"expires_in_minutes": "240"}, 240),
        ({"expires_in_minutes": "custom", "custom_minutes": "25"}, 25),
        ({"expires_in_minutes": "", "custom_minutes": "25"}, None),  # until lifted, chosen
        ({}, None),
    ],
)
def test_expiry_presets_custom_minutes_and_until_lifted(
    client: Client,
    operator: User,
    production: Environment,
    policies: None,
    expiry: dict[str, str],
    minutes: int | None,
) -> None:
    client.force_login(operator)
    start = datetime.now(UTC)
    html = _trip(client, **expiry)
    override = current_override(production, "breaker", "payments")
    assert override is not None and override.state == "forced_open"
    if minutes is None:
        assert override.expires_at is None
        assert "Force open: breaker payments until lifted." in html
    else:
        assert override.expires_at is not None
        ends = override.expires_at - start
        assert timedelta(minutes=minutes) <= ends < timedelta(minutes=minutes, seconds=30)
        assert f"Force open: breaker payments until {override.expires_at:%Y-%m-%d %H:%M}" in html


def test_an_absolute_expiry_needs_its_offset_and_a_future_time(
    client: Client, operator: User, production: Environment, policies: None
) -> None:
    client.force_login(operator)
    ends = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    naive = ends.replace(tzinfo=None).isoformat()
    assert "Nothing was changed. expires_at: Add the time zone offset" in _trip(
        client, expires_at=naive
    )
    past = (ends - timedelta(hours=3)).isoformat()
    assert "Nothing was changed. expires_at: Must be in the future." in _trip(
        client, expires_at=past
    )
    assert current_override(production, "breaker", "payments") is None
    _trip(client, expires_at=ends.isoformat())
    override = current_override(production, "breaker", "payments")
    assert override is not None and override.expires_at == ends


@pytest.mark.parametrize(
    ("expiry", "error"),
    [
        ({"expires_in_minutes": "soon"}, "expires_in_minutes: Enter a number of minutes above 0."),
        ({"expires_in_minutes": "0"}, "expires_in_minutes: Enter a number of minutes above 0."),
        ({"expires_in_minutes": "-5"}, "expires_in_minutes: Enter a number of minutes above 0."),
        ({"expires_in_minutes": "1e300"}, "expires_in_minutes: Enter a number of minutes above 0."),
        ({"expires_in_minutes": "custom"}, "custom_minutes: Enter a number of minutes, or pick"),
        (
            {"expires_in_minutes": "custom", "custom_minutes": "nan"},
            "custom_minutes: Enter a number of minutes above 0.",
        ),
        ({"expires_at": "tomorrow"}, "expires_at: Enter a date and time (ISO 8601)."),
    ],
)
def test_a_bad_expiry_names_its_field_and_changes_nothing(
    client: Client,
    operator: User,
    production: Environment,
    policies: None,
    expiry: dict[str, str],
    error: str,
) -> None:
    client.force_login(operator)
    audited = AuditEntry.objects.count()
    assert f"Nothing was changed. {error}" in _trip(client, **expiry)
    assert not Override.objects.exists()
    assert AuditEntry.objects.count() == audited


def test_the_row_shows_who_why_and_until_when_and_lifting_only_when_in_force(
    client: Client, operator: User, production: Environment, policies: None
) -> None:
    client.force_login(operator)
    long_reason = "DB failover: " + "primary lost, " * 20
    do_set_override(production, "rate_limit", "api", "block_all", Actor.system("olga"), long_reason)
    html = client.get("/e/production/live/").content.decode()
    row = html.split('id="live-rate_limit-api"', 1)[1].split("</tr>", 1)[0]
    # The whole reason is on the row (the page truncates it and shows it all on hover).
    assert f'<q class="override-reason" title="{long_reason}">{long_reason}</q>' in row
    assert "block all by olga" in row and "until lifted" in row
    page = OverrideForm(client.get("/e/production/rate_limit/api/").content.decode())
    assert "lift" in page.choices["action"]
    breaker = client.get("/e/production/breaker/payments/").content.decode()
    assert "lift" not in OverrideForm(breaker).choices["action"]


def test_overview_offers_a_filter_bar_set_from_the_query_string(
    client: Client, viewer: User, production: Environment, system: Actor
) -> None:
    do_create_policy(production, "breaker", "payments", {}, system, tags=["tier-1", "payments"])
    do_create_policy(production, "cache", "prices", {}, system, tags=["catalogue"])
    client.force_login(viewer)

    html = client.get("/e/production/live/?tag=tier-1&state=open&q=pay").content.decode()

    assert "data-live-filters hidden" in html  # shown by filter.js, which does the filtering
    assert '<option value="tier-1" selected>tier-1</option>' in html
    assert '<option value="catalogue">catalogue</option>' in html
    assert '<option value="open" selected>open</option>' in html
    assert 'name="q" value="pay"' in html
    assert 'data-kind-section="cache"' in html and "js/filter.js" in html
    assert "{#" not in html and "#}" not in html  # no template comment shown as text


def _heartbeats(
    redis_client: redis.Redis, environment: Environment, **instances: dict[str, Any]
) -> None:
    """Heartbeats of ``instances`` (name -> members over a fresh, in-sync default)."""
    for name, members in instances.items():
        document = {
            "service": "shop",
            "host": "h",
            "pid": 1,
            "library_version": "0.1.0",
            "revision": environment.revision,
            "connected": True,
            "at": time.time(),
            **members,
        }
        redis_client.hset(environment.keys().instances, name, json.dumps(document))


def _published_a_minute_ago(redis_client: redis.Redis, environment: Environment) -> None:
    """Say the environment's revision was published a minute ago: past every heartbeat
    timeout, so an instance on an older one is behind, not still applying it."""
    published = datetime.now(UTC) - timedelta(minutes=1)
    document = MetaDocument(environment.name, environment.revision, published.isoformat())
    redis_client.set(environment.keys().meta, document.encode())


def _listed(html: str) -> list[str]:
    return [part.split('"', 1)[0] for part in html.split('data-instance="')[1:]]


def test_instances_page_pages_a_large_fleet_problems_first(
    client: Client,
    viewer: User,
    production: Environment,
    policies: None,
    redis_client: redis.Redis,
) -> None:
    production.refresh_from_db()  # at the policies' revision
    fleet = {f"web-{n:03}": {"service": "web"} for n in range(230)}
    _heartbeats(redis_client, production, **fleet, lagging={"revision": 0, "service": "zz"})
    _published_a_minute_ago(redis_client, production)
    client.force_login(viewer)

    first = client.get("/e/production/instances/").content.decode()
    third = client.get("/e/production/instances/?page=3").content.decode()

    assert len(_listed(first)) == 100 and len(_listed(third)) == 31
    assert _listed(first)[:2] == ["lagging", "web-000"]  # behind comes first
    assert "Page 1 of 3 (231 instances)" in first and 'rel="next"' in first
    assert _listed(third)[-1] == "web-229" and 'rel="next"' not in third
    every = set()
    for page in (1, 2, 3):
        every |= set(_listed(client.get(f"/e/production/instances/?page={page}").content.decode()))
    assert len(every) == 231  # each instance on exactly one page


def test_instances_page_searches_and_filters_by_status(
    client: Client,
    viewer: User,
    production: Environment,
    policies: None,
    redis_client: redis.Redis,
) -> None:
    production.refresh_from_db()
    _heartbeats(
        redis_client,
        production,
        **{f"checkout-{n}": {"service": "checkout", "host": "rack-7"} for n in range(3)},
        **{f"search-{n}": {"service": "search"} for n in range(150)},
        **{"search-old": {"service": "search", "revision": 0}},
    )
    _published_a_minute_ago(redis_client, production)
    client.force_login(viewer)

    by_host = client.get("/e/production/instances/?q=RACK-7").content.decode()
    behind = client.get("/e/production/instances/?q=search&status=behind").content.decode()
    searched = client.get("/e/production/instances/?q=search&page=2").content.decode()
    nothing = client.get("/e/production/instances/?q=%3Cb%3Enope").content.decode()
    unknown_status = client.get("/e/production/instances/?status=bogus&page=x").content.decode()

    assert sorted(_listed(by_host)) == ["checkout-0", "checkout-1", "checkout-2"]
    assert "3 instances matching." in by_host
    assert _listed(behind) == ["search-old"]
    assert len(_listed(searched)) == 51  # 151 match "search": the second page's rest
    assert 'href="?q=search&amp;page=1"' in searched  # the pager keeps the search
    assert _listed(nothing) == [] and "No instance matches “&lt;b&gt;nope”" in nothing
    assert len(_listed(unknown_status)) == 100  # an unknown filter shows all, page 1
