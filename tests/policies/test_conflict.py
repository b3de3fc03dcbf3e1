"""A save refused because someone else saved first: nothing is lost, theirs and mine are
shown side by side against the version loaded, and the form holds mine re-applied on
top of theirs, previewed before it is saved."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from django.contrib.auth.models import User
from django.test import Client

from controlplane.accounts.actors import Actor
from controlplane.policies.actions import do_create_policy, do_update_policy
from controlplane.policies.models import Environment, Policy

pytestmark = pytest.mark.django_db(transaction=True)

EDIT = "/e/production/rate_limit/api/edit/"
BOB = Actor.system("bob")


@pytest.fixture
def api(production: Environment, system: Actor) -> Policy:
    return do_create_policy(
        production,
        "rate_limit",
        "api",
        {"limit": 100, "period": 60},
        system,
        "initial",
        tags=["payments"],
        team="platform",
    )


class _FormValues(HTMLParser):
    """What a browser would send for the page's policy form (without a button's value)."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self._in_form = False
        self._select: str | None = None
        self._textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {key: value or "" for key, value in attrs}
        if tag == "form" and attr.get("id") == "policy-form":
            self._in_form = True
        if tag == "option" and self._select and "selected" in attr:
            self.values[self._select] = attr.get("value", "")
        if not self._in_form or "name" not in attr:
            return
        if tag == "input" and attr.get("type") == "checkbox":
            if "checked" in attr:
                self.values[attr["name"]] = "on"
        elif tag == "input":
            self.values[attr["name"]] = attr.get("value", "")
        elif tag == "select":
            self._select = attr["name"]
        elif tag == "textarea":
            self._textarea = attr["name"]
            self.values[self._textarea] = ""

    def handle_data(self, data: str) -> None:
        if self._textarea:
            self.values[self._textarea] += data.removeprefix("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False
        elif tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None


def form_values(html: str) -> dict[str, str]:
    parser = _FormValues()
    parser.feed(html)
    parser.close()
    return parser.values


def row(html: str, field: str) -> str:
    """The three-way table's row of ``field``."""
    table = html[html.index('<table class="three-way"') : html.index("</table>")]
    start = table.index(f'<tr data-field="{field}"')
    return table[start : table.index("</tr>", start)]


def test_a_refused_save_keeps_mine_takes_theirs_and_saves_both_when_sent_again(
    client: Client, editor: User, api: Policy
) -> None:
    client.force_login(editor)
    loaded = form_values(client.get(EDIT).content.decode())
    assert (loaded["expected_version"], loaded["loaded_tags"]) == ("1", "payments")
    do_update_policy(api, {"period": 30}, BOB, "shorter window")

    mine = {**loaded, "limit": "250", "reason": "launch day", "action": "save"}
    response = client.post(EDIT, mine)

    assert response.status_code == 409
    api.refresh_from_db()
    assert (api.version, api.spec["limit"], api.spec["period"]) == (2, 100, 30)
    html = response.content.decode()
    assert "bob saved version 2 while you were editing" in html
    assert "Theirs (v2 by bob, “shorter window”)" in html
    assert "Base (v1, what you loaded)" in html
    limit, period = row(html, "limit"), row(html, "period")
    assert '<td class="base">100 requests</td>' in limit
    assert '<td class="theirs">100 requests <span class="muted">(unchanged)</span>' in limit
    assert '<td class="mine changed">250 requests</td>' in limit
    assert '<td class="base">60 s</td>' in period
    assert '<td class="theirs changed">30 s</td>' in period
    assert '<td class="mine">60 s <span class="muted">(unchanged)</span>' in period
    assert "Conflict" not in limit + period  # each side changed its own field
    # The form holds mine on top of theirs, the reason kept, against their version.
    rebased = form_values(html)
    assert (rebased["limit"], rebased["period"]) == ("250", "30")
    assert (rebased["reason"], rebased["expected_version"]) == ("launch day", "2")
    # What saving would change, against their version: mine only.
    yours = html[html.index('data-conflict="yours"') :]
    assert "What saving these values would change against version 2" in yours
    assert '<tr data-field="limit">' in yours and 'data-field="period"' not in yours

    again = client.post(EDIT, {**rebased, "action": "save"})

    assert again.status_code == 302
    api.refresh_from_db()
    assert (api.version, api.spec["limit"], api.spec["period"]) == (3, 250, 30)
    assert api.versions.get(version=3).reason == "launch day"


def test_a_field_both_changed_is_marked_a_conflict_and_mine_wins(
    client: Client, editor: User, api: Policy
) -> None:
    client.force_login(editor)
    loaded = form_values(client.get(EDIT).content.decode())
    do_update_policy(api, {"limit": 120}, BOB, "")

    response = client.post(EDIT, {**loaded, "limit": "300", "action": "save"})

    assert response.status_code == 409
    html = response.content.decode()
    limit = row(html, "limit")
    assert "data-both-changed" in limit
    assert "Conflict: both changed it, yours is kept" in limit
    assert '<td class="theirs changed">120 requests</td>' in limit
    assert '<td class="mine changed">300 requests</td>' in limit
    assert "Theirs (v2 by bob)" in html  # no reason given, none quoted
    assert form_values(html)["limit"] == "300"


def test_the_same_change_on_both_sides_is_no_conflict(
    client: Client, editor: User, api: Policy
) -> None:
    client.force_login(editor)
    loaded = form_values(client.get(EDIT).content.decode())
    do_update_policy(api, {"limit": 120}, BOB, "")

    response = client.post(EDIT, {**loaded, "limit": "120", "action": "save"})

    html = response.content.decode()
    assert response.status_code == 409
    assert "data-both-changed" not in row(html, "limit")
    assert "no change" in html[html.index('data-conflict="yours"') :]


def test_tags_and_team_keep_mine_where_i_changed_them_else_take_theirs(
    client: Client, editor: User, api: Policy
) -> None:
    client.force_login(editor)
    loaded = form_values(client.get(EDIT).content.decode())
    assert (loaded["tags"], loaded["team"]) == ("payments", "platform")
    do_update_policy(api, {"limit": 120}, BOB, "", tags=["payments", "tier-1"])

    response = client.post(EDIT, {**loaded, "team": "checkout", "action": "save"})

    assert response.status_code == 409
    html = response.content.decode()
    assert '<td class="theirs changed">payments, tier-1</td>' in row(html, "tags")
    assert '<td class="mine changed">checkout</td>' in row(html, "team")
    rebased = form_values(html)
    assert (rebased["tags"], rebased["team"]) == ("payments, tier-1", "checkout")
    # Their tags are now what the form started from: a later conflict counts from them.
    assert (rebased["loaded_tags"], rebased["loaded_team"]) == ("payments, tier-1", "platform")
    yours = html[html.index('data-conflict="yours"') :]
    assert '<tr data-field="team">' in yours and 'data-field="tags"' not in yours

    assert client.post(EDIT, {**rebased, "action": "save"}).status_code == 302
    api.refresh_from_db()
    assert (api.tags, api.team, api.spec["limit"]) == (["payments", "tier-1"], "checkout", 120)


def test_re_apply_previews_against_their_version_before_saving(
    client: Client, editor: User, api: Policy
) -> None:
    client.force_login(editor)
    loaded = form_values(client.get(EDIT).content.decode())
    do_update_policy(api, {"period": 30}, BOB, "")
    conflict = client.post(EDIT, {**loaded, "limit": "250", "action": "save"}).content.decode()
    assert (
        '<button type="submit" name="action" value="preview">Re-apply mine on top of v2</button>'
        in conflict
    )
    assert f'href="{EDIT}">Start again from version 2</a>' in conflict
    assert 'value="save"' not in conflict  # first the preview, then the save

    preview = client.post(EDIT, {**form_values(conflict), "action": "preview"})

    assert preview.status_code == 200
    html = preview.content.decode()
    assert "What will change" in html and 'value="save"' in html
    assert '<tr data-field="limit"><th>Limit</th><td class="old">100 requests</td>' in html
    assert 'data-field="period"' not in html[html.index("What will change") :]


def test_a_save_refused_over_htmx_still_gets_the_whole_page(
    client: Client, editor: User, api: Policy
) -> None:
    client.force_login(editor)
    loaded = form_values(client.get(EDIT).content.decode())
    do_update_policy(api, {"period": 30}, BOB, "")

    response = client.post(
        EDIT, {**loaded, "limit": "250", "action": "save"}, headers={"HX-Request": "true"}
    )

    assert response.status_code == 409
    html = response.content.decode()
    assert '<main id="content">' in html and '<table class="three-way"' in html
    assert "Edit api <small>v2</small>" in html
    assert "HX-Request" in response["Vary"]


def test_a_rebased_form_that_no_longer_validates_shows_why_and_keeps_the_reason(
    client: Client, editor: User, api: Policy
) -> None:
    client.force_login(editor)
    loaded = form_values(client.get(EDIT).content.decode())
    do_update_policy(api, {"algorithm": "fixed_window", "burst": None}, BOB, "")

    response = client.post(
        EDIT, {**loaded, "burst": "500", "reason": "spiky traffic", "action": "save"}
    )

    assert response.status_code == 409
    html = response.content.decode()
    rebased = form_values(html)
    assert (rebased["algorithm"], rebased["burst"]) == ("fixed_window", "500")
    assert 'data-error-for="burst"' in html
    assert rebased["reason"] == "spiky traffic"
    assert "What saving these values" not in html


def test_a_conflict_on_a_secret_config_never_shows_its_value(
    client: Client, editor: User, production: Environment, system: Actor
) -> None:
    policy = do_create_policy(
        production, "config", "api.key", {"value": "first-s3cr3t", "secret": True}, system
    )
    path = "/e/production/config/api.key/edit/"
    client.force_login(editor)
    loaded = form_values(client.get(path).content.decode())
    assert loaded["value"] == ""
    do_update_policy(policy, {"value": "second-s3cr3t"}, BOB, "rotated")

    response = client.post(path, {**loaded, "description": "the partner key", "action": "save"})

    assert response.status_code == 409
    html = response.content.decode()
    assert "s3cr3t" not in html
    value = row(html, "value")
    assert '<td class="theirs changed">secret:' in value and '<td class="base">secret:' in value
    assert '<td class="mine changed">the partner key</td>' in row(html, "description")

    assert client.post(path, {**form_values(html), "action": "save"}).status_code == 302
    policy.refresh_from_db()
    assert (policy.spec["value"], policy.spec["description"]) == (
        "second-s3cr3t",
        "the partner key",
    )
