"""The webhook pages: an admin of the environment adds, tests, redelivers, switches and
removes webhooks; nobody else, and no private target, changes anything."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from controlplane.audit.models import AuditEntry
from controlplane.policies.models import Environment
from controlplane.webhooks.delivery import deliver_due
from controlplane.webhooks.models import Delivery, Webhook
from tests.webhooks.receiver import Receiver

pytestmark = pytest.mark.django_db(transaction=True)

PAGE = "/e/production/webhooks/"


def _add(client: Client, url: str, **fields: object) -> Any:
    data = {"name": "ops", "url": url, "payload_format": "json", **fields}
    return client.post(PAGE, data)


def test_an_admin_adds_a_webhook_and_sees_its_secret_once(
    client: Client, admin: User, receiver: Receiver, production: Environment
) -> None:
    client.force_login(admin)
    response = client.post(
        PAGE,
        {
            "name": "ops",
            "url": f"{receiver.url}/hooks/s3cret-path",
            "events": ["policy.*", "test"],
            "payload_format": "slack",
            "generate_secret": "on",
        },
    )
    assert response.status_code == 200
    webhook = Webhook.objects.get()
    assert (webhook.name, webhook.events, webhook.payload_format) == (
        "ops",
        ["policy.*", "test"],
        "slack",
    )
    page = response.content.decode()
    assert webhook.secret and f'<code id="new-secret">{webhook.secret}</code>' in page
    assert "s3cret-path" not in page and f"{receiver.url}/…" in page
    assert AuditEntry.objects.get(action="webhook.create").actor_name == admin.username
    listing = client.get(PAGE).content.decode()
    assert webhook.secret not in listing and 'data-webhook="ops"' in listing
    assert "none yet" in listing


def test_send_test_then_the_delivery_shows_on_its_page_and_can_be_redelivered(
    client: Client, admin: User, receiver: Receiver, production: Environment
) -> None:
    client.force_login(admin)
    _add(client, f"{receiver.url}/hook")
    response = client.post(PAGE + "ops/test/")
    assert response.status_code == 302 and response["Location"] == PAGE + "ops/"
    assert deliver_due() == 1
    assert [r.headers["x-webhook-event"] for r in receiver.requests] == ["test"]
    delivery = Delivery.objects.get()
    page = client.get(PAGE + "ops/").content.decode()
    assert f'data-delivery="{delivery.pk}" data-status="delivered"' in page
    assert str(delivery.event_id) in page and "<td>200</td>" in page
    assert "delivered," in client.get(PAGE).content.decode()  # the list's last status
    response = client.post(PAGE + f"ops/deliveries/{delivery.pk}/redeliver/")
    assert response.status_code == 302
    assert Delivery.objects.get().status == Delivery.Status.PENDING
    entry = AuditEntry.objects.get(action="webhook.redeliver")
    assert (entry.actor_user, entry.environment, entry.object_name) == (admin, "production", "ops")
    assert entry.changes["event"] == [None, f"test {delivery.event_id}"]
    log = client.get("/audit/").content.decode()
    assert "Webhook delivery sent again" in log and str(delivery.event_id) in log
    assert deliver_due() == 1
    ids = [r.headers["x-webhook-delivery"] for r in receiver.requests]
    assert ids == [str(delivery.event_id)] * 2  # the same event, sent again


def test_an_admin_switches_a_webhook_off_and_on_audited(
    client: Client, admin: User, receiver: Receiver, production: Environment
) -> None:
    client.force_login(admin)
    _add(client, f"{receiver.url}/hook")
    client.post(PAGE + "ops/enabled/", {"enabled": "off"})
    assert not Webhook.objects.get().enabled
    client.post(PAGE + "ops/test/")
    assert deliver_due() == 0 and not receiver.requests  # waits while off
    client.post(PAGE + "ops/enabled/", {"enabled": "on"})
    assert Webhook.objects.get().enabled
    assert deliver_due() == 1 and len(receiver.requests) == 1
    actions = list(
        AuditEntry.objects.filter(action__startswith="webhook.").values_list("action", flat=True)
    )
    assert sorted(actions) == ["webhook.create", "webhook.disable", "webhook.enable"]


def test_an_admin_removes_a_webhook_after_confirming(
    client: Client, admin: User, receiver: Receiver, production: Environment
) -> None:
    client.force_login(admin)
    _add(client, f"{receiver.url}/hook")
    confirm = client.get(PAGE + "ops/remove/")
    assert confirm.status_code == 200 and Webhook.objects.exists()
    response = client.post(PAGE + "ops/remove/")
    assert response.status_code == 302 and not Webhook.objects.exists()
    assert AuditEntry.objects.filter(action="webhook.delete", object_name="ops").exists()


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1/hook", "http://[::1]/hook", "http://10.1.2.3/", "http://169.254.169.254/"],
)
def test_a_private_target_is_refused_naming_the_url(
    client: Client, admin: User, production: Environment, url: str
) -> None:
    client.force_login(admin)
    response = client.post(PAGE, {"name": "ops", "url": url, "payload_format": "json"})
    assert response.status_code == 422
    assert 'data-error-for="url"' in response.content.decode()
    assert not Webhook.objects.exists()
    assert not AuditEntry.objects.filter(action__startswith="webhook.").exists()


def test_an_editor_is_refused_and_nothing_changes(
    client: Client, admin: User, editor: User, receiver: Receiver, production: Environment
) -> None:
    client.force_login(admin)
    _add(client, f"{receiver.url}/hook")
    client.force_login(editor)
    assert client.get(PAGE).status_code == 403
    assert _add(client, f"{receiver.url}/other", name="other").status_code == 403
    assert client.post(PAGE + "ops/remove/").status_code == 403
    assert client.post(PAGE + "ops/test/").status_code == 403
    assert list(Webhook.objects.values_list("name", flat=True)) == ["ops"]
    assert not Delivery.objects.exists()


def test_an_unknown_environment_or_webhook_is_not_found(
    client: Client, admin: User, production: Environment
) -> None:
    client.force_login(admin)
    assert client.get("/e/nowhere/webhooks/").status_code == 404
    assert client.get(PAGE + "nobody/").status_code == 404


def test_the_policy_list_links_webhooks_for_admins_only(
    client: Client, admin: User, editor: User, production: Environment
) -> None:
    client.force_login(admin)
    assert f'href="{PAGE}"' in client.get("/policies/").content.decode()
    client.force_login(editor)
    assert f'href="{PAGE}"' not in client.get("/policies/").content.decode()


def test_a_name_with_a_slash_is_refused_naming_the_name(
    client: Client, admin: User, receiver: Receiver, production: Environment
) -> None:
    client.force_login(admin)
    response = _add(client, f"{receiver.url}/hook", name="a/b")
    assert response.status_code == 422
    assert 'data-error-for="name"' in response.content.decode()
    assert not Webhook.objects.exists()
