from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.db.models import CharField
from django.test import Client

from controlplane.audit.models import AuditEntry

pytestmark = pytest.mark.django_db(transaction=True)


def test_login_attempts_are_throttled_per_ip_and_the_burst_audited(
    client: Client, viewer: User
) -> None:
    statuses = [
        client.post("/login/", {"username": "alice", "password": "wrong"}).status_code
        for _ in range(12)
    ]
    assert statuses == [200] * 10 + [429, 429]
    refused = client.post("/login/", {"username": "alice", "password": "password-alice"})
    assert refused.status_code == 429
    assert int(refused["Retry-After"]) >= 1
    assert "Too many login attempts" in refused.content.decode()
    bursts = AuditEntry.objects.filter(action="login.failed_burst")
    assert [(e.object_name, e.source_ip) for e in bursts] == [("alice", "127.0.0.1")]


def test_another_address_is_not_throttled(client: Client, viewer: User) -> None:
    for _ in range(11):
        client.post("/login/", {"username": "alice", "password": "wrong"})
    other = Client(REMOTE_ADDR="10.1.2.3")
    response = other.post("/login/", {"username": "alice", "password": "password-alice"})
    assert response.status_code == 302


def test_a_burst_with_an_overlong_username_is_refused_and_audited_within_the_columns(
    client: Client,
) -> None:
    for _ in range(10):
        client.post("/login/", {"username": "alice", "password": "wrong"})
    username = "m" * 300
    refused = client.post("/login/", {"username": username, "password": "wrong"})
    assert refused.status_code == 429
    entry = AuditEntry.objects.get(action="login.failed_burst")
    assert entry.actor_name == "m" * 149 + "…"
    assert entry.object_name == "m" * 199 + "…"
    for field in AuditEntry._meta.get_fields():
        if isinstance(field, CharField) and field.max_length is not None:
            assert len(getattr(entry, field.attname)) <= field.max_length, field.name


def test_a_client_address_that_is_not_an_ip_is_counted_as_unknown(client: Client) -> None:
    odd = Client(REMOTE_ADDR="x" * 500)
    statuses = [
        odd.post("/login/", {"username": "alice", "password": "wrong"}).status_code
        for _ in range(11)
    ]
    assert statuses == [200] * 10 + [429]
    entry = AuditEntry.objects.get(action="login.failed_burst")
    assert entry.source_ip is None and "from unknown" in entry.reason
    assert client.post("/login/", {"username": "alice", "password": "x"}).status_code == 200
