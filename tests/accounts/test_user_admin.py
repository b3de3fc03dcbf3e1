from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from controlplane.audit.models import AuditEntry

pytestmark = pytest.mark.django_db(transaction=True)


def test_granting_a_role_in_the_admin_is_audited(client: Client, viewer: User) -> None:
    root = User.objects.create_superuser("root", password="pw-root-123")
    client.force_login(root)
    editor_group = Group.objects.get(name="Editor")
    response = client.post(
        f"/admin/auth/user/{viewer.pk}/change/",
        {
            "username": "alice",
            "email": "alice@example.com",
            "is_active": "on",
            "groups": [str(editor_group.pk)],
            "date_joined_0": "2026-01-01",
            "date_joined_1": "00:00:00",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    roles = AuditEntry.objects.get(action="user.roles")
    assert (roles.actor_name, roles.object_name) == ("root", "alice")
    assert roles.changes == {"groups": [["Viewer"], ["Editor"]]}
    update = AuditEntry.objects.get(action="user.update")
    assert update.changes["email"] == ["", "alice@example.com"]


def test_deleting_a_user_is_audited(client: Client, viewer: User) -> None:
    root = User.objects.create_superuser("root", password="pw-root-123")
    client.force_login(root)
    response = client.post(f"/admin/auth/user/{viewer.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    entry = AuditEntry.objects.get(action="user.delete")
    assert (entry.actor_name, entry.object_name) == ("root", "alice")
