from __future__ import annotations

from typing import Any

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


def _grant_editor(client: Client, user: User) -> Any:
    return client.post(
        f"/admin/auth/user/{user.pk}/change/",
        {
            "username": user.username,
            "is_active": "on",
            "is_superuser": "on",
            "groups": [str(Group.objects.get(name="Editor").pk)],
            "date_joined_0": "2026-01-01",
            "date_joined_1": "00:00:00",
        },
    )


def test_an_admin_by_role_manages_users_without_is_staff(
    client: Client, admin: User, viewer: User
) -> None:
    assert not admin.is_staff
    client.force_login(admin)
    assert client.get("/admin/auth/user/").status_code == 200

    response = _grant_editor(client, viewer)

    assert response.status_code == 302, response.content.decode()[:2000]
    viewer.refresh_from_db()
    assert [g.name for g in viewer.groups.all()] == ["Editor"]
    assert not viewer.is_superuser  # only a superuser makes superusers
    roles = AuditEntry.objects.get(action="user.roles")
    assert (roles.actor_name, roles.object_name) == ("adam", "alice")


def test_an_admin_by_role_cannot_change_a_superuser(client: Client, admin: User) -> None:
    root = User.objects.create_superuser("root", password="pw-root-123")
    client.force_login(admin)
    response = client.post(f"/admin/auth/user/{root.pk}/change/", {"username": "owned"})
    assert response.status_code == 403
    assert client.post(f"/admin/auth/user/{root.pk}/delete/", {"post": "yes"}).status_code == 403
    root.refresh_from_db()
    assert root.username == "root"


def test_user_management_is_refused_to_other_roles_and_changes_nothing(
    client: Client, editor: User, viewer: User
) -> None:
    anonymous = client.get("/admin/auth/user/")
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/login/?next=")
    client.force_login(editor)
    assert client.get("/admin/").status_code == 403
    assert client.get("/admin/auth/user/").status_code == 403
    assert _grant_editor(client, viewer).status_code == 403
    assert [g.name for g in viewer.groups.all()] == ["Viewer"]
    assert not AuditEntry.objects.exists()
