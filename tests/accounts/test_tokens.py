from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from controlplane.accounts.models import ApiToken, hash_token
from controlplane.audit.models import AuditEntry

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
