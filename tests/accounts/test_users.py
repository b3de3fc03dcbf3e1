"""Users and their roles managed in the product's own pages (``/users/``)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.core import mail
from django.test import Client
from hypothesis import given
from hypothesis import strategies as st

from controlplane.accounts.actions import do_create_token
from controlplane.accounts.actors import Actor
from controlplane.accounts.roles import Role, grants_of, role_of
from controlplane.accounts.signals import user_deactivated
from controlplane.accounts.users import (
    do_create_user,
    do_deactivate_user,
    do_reactivate_user,
    do_set_roles,
)
from controlplane.audit.models import AuditEntry
from controlplane.policies.actions import do_create_environment
from controlplane.policies.models import Environment
from controlplane.protocol.schema import PolicyError
from tests.conftest import make_user
from tests.test_form_fuzz import FUZZ, assert_no_5xx, hostile

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "correct-horse-battery-9"


@pytest.fixture
def staging(system: Actor) -> Environment:
    return do_create_environment("staging", system)


def _create(client: Client, **fields: str) -> Any:
    data = {"username": "uma", "email": "uma@example.com", "role_everywhere": "", **fields}
    return client.post("/users/new/", data)


def _invite_link(response: Any) -> str:
    return response.content.decode().split('<code id="invite-link">')[1].split("</code>")[0]


def test_an_admin_creates_a_user_with_a_role_per_environment(
    client: Client, admin: User, production: Environment, staging: Environment
) -> None:
    client.force_login(admin)

    response = _create(client, role_in_staging="editor", role_in_production="viewer")

    assert response.status_code == 201, response.content.decode()
    assert _invite_link(response).startswith("http://testserver/users/invite/")
    uma = User.objects.get(username="uma")
    assert not uma.has_usable_password()
    grants = grants_of(uma)
    assert (grants.everywhere, grants.role_in("staging"), grants.role_in("production")) == (
        None,
        Role.EDITOR,
        Role.VIEWER,
    )
    entry = AuditEntry.objects.get(action="user.create")
    assert (entry.actor_name, entry.object_kind, entry.object_name) == ("adam", "user", "uma")
    assert entry.changes == {
        "email": [None, "uma@example.com"],
        "role_in_production": [None, "viewer"],
        "role_in_staging": [None, "editor"],
    }
    exported = client.get("/audit/export.csv").getvalue().decode()
    rows = {row["action"]: row for row in csv.DictReader(io.StringIO(exported))}
    assert json.loads(rows["user.create"]["changes"])["role_in_staging"] == [None, "editor"]


def test_the_invite_link_sets_a_password_once(
    client: Client, admin: User, production: Environment
) -> None:
    client.force_login(admin)
    link = _invite_link(_create(client, role_everywhere="viewer"))
    newcomer = Client()

    form = newcomer.get(link, follow=True)
    done = newcomer.post(
        form.redirect_chain[-1][0], {"new_password1": PASSWORD, "new_password2": PASSWORD}
    )

    assert done.status_code == 302 and done["Location"] == "/login/"
    assert Client().login(username="uma", password=PASSWORD)
    again = Client().get(link, follow=True)
    assert "This link does not work any more" in again.content.decode()


def test_a_lost_invite_is_made_again_until_a_password_is_chosen(
    client: Client, admin: User
) -> None:
    client.force_login(admin)
    _create(client)
    assert "New invite link" in client.get("/users/uma/").content.decode()

    again = client.post("/users/uma/invite/")

    assert again.status_code == 200
    newcomer = Client()
    form = newcomer.get(_invite_link(again), follow=True)
    newcomer.post(
        form.redirect_chain[-1][0], {"new_password1": PASSWORD, "new_password2": PASSWORD}
    )
    assert Client().login(username="uma", password=PASSWORD)
    assert AuditEntry.objects.filter(action="user.invite", object_name="uma").exists()
    refused = client.post("/users/uma/invite/")
    assert refused.status_code == 422
    assert 'data-error-for="password"' in refused.content.decode()
    assert "New invite link" not in client.get("/users/uma/").content.decode()


def test_an_invite_is_emailed_when_email_is_set_up(
    client: Client, admin: User, settings: Any
) -> None:
    settings.EMAIL_HOST = "smtp.example.com"
    client.force_login(admin)

    response = _create(client)

    assert [message.to for message in mail.outbox] == [["uma@example.com"]]
    assert _invite_link(response) in mail.outbox[0].body
    assert "It was also emailed to uma@example.com" in response.content.decode()


def test_an_invite_that_cannot_be_emailed_says_why_and_still_shows_the_link(
    client: Client, admin: User, settings: Any
) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 2
    client.force_login(admin)

    response = _create(client)

    html = response.content.decode()
    assert response.status_code == 201
    assert 'data-error-for="email"' in html and "Could not email the link" in html
    assert _invite_link(response).startswith("http://testserver/users/invite/")


def test_changing_roles_is_audited_with_each_role_before_and_after(
    client: Client, admin: User, viewer: User, production: Environment, staging: Environment
) -> None:
    client.force_login(admin)

    response = client.post(
        "/users/alice/",
        {"role_everywhere": "operator", "role_in_staging": "admin", "reason": "on call"},
    )

    assert response.status_code == 302
    fresh = User.objects.get(pk=viewer.pk)
    assert grants_of(fresh).role_in("staging") == Role.ADMIN
    assert grants_of(fresh).role_in("production") == Role.OPERATOR
    entry = AuditEntry.objects.get(action="user.roles")
    assert entry.reason == "on call"
    assert entry.changes == {
        "role_everywhere": ["viewer", "operator"],
        "role_in_staging": [None, "admin"],
    }
    page = client.get("/users/alice/").content.decode()
    assert 'value="admin" selected' in page


def test_the_changed_user_object_reads_its_new_roles(admin: User, viewer: User) -> None:
    assert (role_of(viewer), grants_of(viewer).everywhere) == (Role.VIEWER, Role.VIEWER)
    do_set_roles(viewer, "editor", {}, Actor.of(admin))
    assert (role_of(viewer), grants_of(viewer).everywhere) == (Role.EDITOR, Role.EDITOR)


def test_saving_the_same_roles_records_nothing(
    admin: User, viewer: User, production: Environment
) -> None:
    do_set_roles(viewer, "viewer", {"production": ""}, Actor.of(admin))
    assert not AuditEntry.objects.filter(action="user.roles").exists()


def test_deactivation_revokes_tokens_ends_sessions_and_closes_websockets(
    client: Client, admin: User, editor: User, production: Environment
) -> None:
    _, secret = do_create_token("erin-bot", Role.EDITOR, Actor.of(editor))
    erin = Client()
    erin.force_login(editor)
    assert erin.get("/policies/").status_code == 200
    signalled: list[int] = []

    def closed(sender: Any, user_id: int, **kwargs: Any) -> None:
        signalled.append(user_id)

    user_deactivated.connect(closed)
    try:
        client.force_login(admin)
        response = client.post("/users/erin/deactivate/", {"reason": "left the team"})
    finally:
        user_deactivated.disconnect(closed)

    assert response.status_code == 302
    assert signalled == [editor.pk]
    api = Client().get("/api/v1/environments", headers={"Authorization": f"Bearer {secret}"})
    assert api.status_code == 401
    sessions = [s.get_decoded().get("_auth_user_id") for s in Session.objects.all()]
    assert str(editor.pk) not in sessions and str(admin.pk) in sessions
    page = erin.get("/policies/")
    assert page.status_code == 302 and page["Location"].startswith("/login/")
    entry = AuditEntry.objects.get(action="user.deactivate")
    assert (entry.object_name, entry.reason, entry.changes) == (
        "erin",
        "left the team",
        {"is_active": [True, False]},
    )
    assert AuditEntry.objects.filter(action="token.revoke", object_name="erin-bot").exists()
    assert client.get("/policies/").status_code == 200  # the admin's own session lives on


def test_a_reactivated_user_logs_in_again_but_their_tokens_stay_revoked(
    admin: User, editor: User
) -> None:
    token, secret = do_create_token("erin-bot", Role.EDITOR, Actor.of(editor))
    do_deactivate_user(editor, Actor.of(admin), "on leave")

    do_reactivate_user(editor, Actor.of(admin), "back")

    assert Client().login(username="erin", password="password-erin")
    api = Client().get("/api/v1/environments", headers={"Authorization": f"Bearer {secret}"})
    assert api.status_code == 401
    entry = AuditEntry.objects.get(action="user.reactivate")
    assert (entry.reason, entry.changes) == ("back", {"is_active": [False, True]})


def test_deactivation_needs_a_reason(client: Client, admin: User, editor: User) -> None:
    client.force_login(admin)
    response = client.post("/users/erin/deactivate/", {"reason": "  "})
    assert response.status_code == 422
    assert 'data-error-for="reason"' in response.content.decode()
    assert User.objects.get(pk=editor.pk).is_active


def test_an_admin_cannot_deactivate_themselves(client: Client, admin: User, editor: User) -> None:
    make_user("another-admin", Role.ADMIN)
    client.force_login(admin)
    response = client.post("/users/adam/deactivate/", {"reason": "testing"})
    assert response.status_code == 422
    assert 'data-error-for="is_active"' in response.content.decode()
    assert User.objects.get(pk=admin.pk).is_active


def test_the_last_admin_cannot_be_deactivated_or_demoted(
    client: Client, admin: User, system: Actor
) -> None:
    with pytest.raises(PolicyError) as deactivating:
        do_deactivate_user(admin, system, "no one left")
    assert list(deactivating.value.errors) == ["is_active"]
    client.force_login(admin)
    response = client.post("/users/adam/", {"role_everywhere": "editor"})
    assert response.status_code == 422
    assert 'data-error-for="role_everywhere"' in response.content.decode()
    assert grants_of(User.objects.get(pk=admin.pk)).everywhere == Role.ADMIN

    make_user("another-admin", Role.ADMIN)
    assert client.post("/users/adam/", {"role_everywhere": "editor"}).status_code == 302
    assert grants_of(User.objects.get(pk=admin.pk)).everywhere == Role.EDITOR


def test_an_admin_who_demotes_themselves_lands_on_a_page_they_may_see(
    client: Client, admin: User
) -> None:
    make_user("another-admin", Role.ADMIN)
    client.force_login(admin)
    response = client.post("/users/adam/", {"role_everywhere": "editor"}, follow=True)
    assert response.status_code == 200
    assert response.redirect_chain == [("/policies/", 302)]
    assert [str(m) for m in response.context["messages"]] == [
        "Saved your roles: you no longer manage users."
    ]
    assert grants_of(User.objects.get(pk=admin.pk)).everywhere == Role.EDITOR


def test_only_a_superuser_changes_a_superuser(admin: User) -> None:
    root = User.objects.create_superuser("root", password="pw-root-123")
    with pytest.raises(PolicyError) as demoting:
        do_set_roles(root, "viewer", {}, Actor.of(admin))
    with pytest.raises(PolicyError) as deactivating:
        do_deactivate_user(root, Actor.of(admin), "takeover")
    assert list(demoting.value.errors) == ["role_everywhere"]
    assert list(deactivating.value.errors) == ["is_active"]
    assert User.objects.get(pk=root.pk).is_active


def test_every_bad_value_is_refused_naming_its_field(
    client: Client, admin: User, viewer: User, system: Actor, production: Environment
) -> None:
    with pytest.raises(PolicyError) as refused:
        do_create_user("bad name!", "not-an-email", "root", {"nowhere": "editor"}, system)
    assert set(refused.value.errors) == {"username", "email", "role_everywhere", "role_in_nowhere"}
    with pytest.raises(PolicyError) as taken:
        do_create_user("ALICE", "", None, {"production": "boss"}, system)
    assert set(taken.value.errors) == {"username", "role_in_production"}
    make_user("fi", None)
    with pytest.raises(PolicyError) as same_name:
        do_create_user("\ufb01", "", None, {}, system)  # the ligature: "fi" once stored
    assert list(same_name.value.errors) == ["username"]
    client.force_login(admin)
    response = _create(client, username="new")
    assert response.status_code == 422
    assert 'data-error-for="username"' in response.content.decode()
    assert not User.objects.filter(username="new").exists()
    assert not AuditEntry.objects.filter(action="user.create").exists()


def test_the_users_page_shows_roles_last_login_and_tokens(
    client: Client, admin: User, editor: User, production: Environment, staging: Environment
) -> None:
    do_set_roles(editor, "viewer", {"staging": "editor"}, Actor.of(admin))
    do_create_token("erin-bot", Role.VIEWER, Actor.of(editor))
    client.force_login(admin)

    html = client.get("/users/").content.decode()

    erin_row = html.split('data-user="erin"')[1].split("</tr>")[0]
    assert "viewer" in erin_row and "editor in staging" in erin_row
    assert "never" in erin_row and '<td data-sort-value="1">1</td>' in erin_row
    assert "ago" in html.split('data-user="adam"')[1].split("</tr>")[0]  # logged in just now


def test_a_user_page_shows_their_recent_actions_and_tokens(
    client: Client, admin: User, editor: User
) -> None:
    do_create_token("erin-bot", Role.VIEWER, Actor.of(editor))
    client.force_login(admin)
    html = client.get("/users/erin/").content.decode()
    assert 'data-action="token.create"' in html and 'data-token="erin-bot"' in html


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/users/"),
        ("get", "/users/new/"),
        ("post", "/users/new/"),
        ("get", "/users/alice/"),
        ("post", "/users/alice/"),
        ("post", "/users/alice/invite/"),
        ("post", "/users/alice/deactivate/"),
        ("post", "/users/alice/reactivate/"),
    ],
)
def test_non_admins_are_refused_every_user_page(
    client: Client, editor: User, viewer: User, method: str, path: str
) -> None:
    client.force_login(editor)
    response = getattr(client, method)(path, {"username": "x", "reason": "x"})
    assert response.status_code == 403
    assert User.objects.get(pk=viewer.pk).is_active
    assert not AuditEntry.objects.exists()


ROLE_VALUES = st.one_of(st.sampled_from(["", "none", "viewer", "admin"]), hostile)


def test_no_user_form_answers_a_5xx_whatever_is_posted(
    client: Client, admin: User, viewer: User, production: Environment
) -> None:
    client.raise_request_exception = False
    client.force_login(admin)

    @FUZZ
    @given(
        st.fixed_dictionaries(
            {},
            optional={
                "username": st.one_of(st.from_regex(r"\A[a-z][a-z0-9@.+-]{0,12}\Z"), hostile),
                "email": st.one_of(st.just("x@example.com"), hostile),
                "role_everywhere": ROLE_VALUES,
                "role_in_production": ROLE_VALUES,
                "reason": hostile,
            },
        ),
        st.sampled_from(["/users/new/", "/users/alice/", "/users/alice/deactivate/"]),
    )
    def post(data: dict[str, Any], path: str) -> None:
        assert_no_5xx(client, "post", path, data)
        if not User.objects.get(pk=viewer.pk).is_active:
            do_reactivate_user(viewer, Actor.of(admin))

    post()
