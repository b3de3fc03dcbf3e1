from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from controlplane.accounts.actors import Actor
from controlplane.accounts.models import ApiToken, hash_token
from controlplane.accounts.roles import Role, group_name
from controlplane.audit.models import AuditEntry
from controlplane.policies.actions import do_create_environment
from controlplane.policies.models import Environment
from tests.conftest import make_user
from tests.scoping import grant

pytestmark = pytest.mark.django_db(transaction=True)


def test_token_is_shown_once_and_stored_hashed(client: Client, admin: User) -> None:
    client.force_login(admin)
    response = client.post(
        "/tokens/", {"label": "deploy-bot", "role": "editor", "expires_in_days": "30"}
    )
    html = response.content.decode()
    secret = html.split('<code id="new-token">')[1].split("</code>")[0]
    token = ApiToken.objects.get(label="deploy-bot")
    assert token.token_hash == hash_token(secret)
    assert secret not in token.prefix + token.token_hash
    assert secret not in client.get("/tokens/").content.decode()
    entry = AuditEntry.objects.get(action="token.create")
    assert (entry.actor_name, entry.changes["role"]) == ("adam", [None, "editor"])
    api = client.get("/api/v1/environments", headers={"Authorization": f"Bearer {secret}"})
    assert api.status_code == 200


def test_revoked_token_stops_working_and_is_audited(client: Client, admin: User) -> None:
    client.force_login(admin)
    html = client.post("/tokens/", {"label": "ci", "role": "viewer"}).content.decode()
    secret = html.split('<code id="new-token">')[1].split("</code>")[0]
    token = ApiToken.objects.get(label="ci")

    client.post(f"/tokens/{token.pk}/revoke/")

    token.refresh_from_db()
    assert token.status == "revoked"
    assert AuditEntry.objects.filter(action="token.revoke", object_name="ci").exists()
    api = client.get("/api/v1/environments", headers={"Authorization": f"Bearer {secret}"})
    assert api.status_code == 401


def test_bad_role_is_refused_naming_the_field(client: Client, admin: User) -> None:
    client.force_login(admin)
    response = client.post("/tokens/", {"label": "x", "role": "root"})
    assert response.status_code == 422
    assert 'data-error-for="role"' in response.content.decode()
    assert not ApiToken.objects.exists()


def _token_of(client: Client, creator: User, role: str) -> str:
    client.force_login(creator)
    html = client.post("/tokens/", {"label": f"{role}-bot", "role": role}).content.decode()
    client.logout()
    return html.split('<code id="new-token">')[1].split("</code>")[0]


def _environments(client: Client, secret: str) -> int:
    return client.get(
        "/api/v1/environments", headers={"Authorization": f"Bearer {secret}"}
    ).status_code


def test_token_stops_working_when_its_creator_is_deactivated(client: Client, admin: User) -> None:
    secret = _token_of(client, admin, "viewer")
    assert _environments(client, secret) == 200
    admin.is_active = False
    admin.save(update_fields=["is_active"])
    assert _environments(client, secret) == 401
    admin.is_active = True
    admin.save(update_fields=["is_active"])
    assert _environments(client, secret) == 200


def test_token_acts_with_no_more_than_its_creators_current_role(
    client: Client, admin: User, production: Environment
) -> None:
    secret = _token_of(client, admin, "editor")
    admin.groups.set([Group.objects.get(name=group_name(Role.VIEWER))])
    headers = {"Authorization": f"Bearer {secret}"}
    created = client.post(
        "/api/v1/environments/production/policies",
        {"kind": "cache", "name": "prices", "spec": {}},
        content_type="application/json",
        headers=headers,
    )
    assert created.status_code == 403
    assert "acts as viewer" in created.json()["detail"]
    assert not production.policies.exists()
    assert _environments(client, secret) == 200
    admin.groups.clear()
    assert _environments(client, secret) == 401


def test_deleting_a_user_revokes_their_tokens(client: Client, admin: User) -> None:
    secret = _token_of(client, admin, "viewer")
    admin.delete()
    assert _environments(client, secret) == 401
    token = ApiToken.objects.get(label="viewer-bot")
    assert token.status == "revoked"
    entry = AuditEntry.objects.get(action="token.revoke", object_name="viewer-bot")
    assert entry.reason == "Its creator adam was deleted."


def test_a_token_is_limited_to_the_environments_ticked(
    client: Client, admin: User, production: Environment, system: Actor
) -> None:
    do_create_environment("staging", system)
    client.force_login(admin)
    html = client.post(
        "/tokens/", {"label": "stager", "role": "editor", "environments": ["staging"]}
    ).content.decode()
    secret = html.split('<code id="new-token">')[1].split("</code>")[0]

    token = ApiToken.objects.get(label="stager")
    assert [e.name for e in token.environments.all()] == ["staging"]
    entry = AuditEntry.objects.get(action="token.create")
    assert entry.changes["environments"] == [None, ["staging"]]
    listing = client.get("/tokens/").content.decode()
    assert "<td data-environments>staging</td>" in listing
    headers = {"Authorization": f"Bearer {secret}"}
    assert client.get("/api/v1/environments/staging/policies", headers=headers).status_code == 200
    assert (
        client.get("/api/v1/environments/production/policies", headers=headers).status_code == 403
    )


def test_a_token_with_no_environment_ticked_acts_in_every_one(
    client: Client, admin: User, production: Environment
) -> None:
    client.force_login(admin)
    client.post("/tokens/", {"label": "everywhere", "role": "viewer"})
    assert not ApiToken.objects.get(label="everywhere").environments.exists()
    assert "every environment" in client.get("/tokens/").content.decode()


def test_an_unknown_environment_is_refused_naming_the_field(
    client: Client, admin: User, production: Environment
) -> None:
    client.force_login(admin)
    response = client.post(
        "/tokens/", {"label": "x", "role": "viewer", "environments": ["nowhere"]}
    )
    assert response.status_code == 422
    assert 'data-error-for="environments"' in response.content.decode()
    assert not ApiToken.objects.exists()


def test_an_admin_of_one_environment_cannot_manage_tokens(
    client: Client, production: Environment, system: Actor
) -> None:
    staging = do_create_environment("staging", system)
    user = make_user("stan", Role.VIEWER)
    grant(user, staging, Role.ADMIN)
    client.force_login(user)
    assert client.get("/tokens/").status_code == 403
    assert client.post("/tokens/", {"label": "x", "role": "viewer"}).status_code == 403
    assert "API tokens" not in client.get("/").content.decode()
    assert not ApiToken.objects.exists()
