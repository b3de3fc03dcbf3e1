"""The webhooks API: an environment's admins add, list, test and remove webhooks and
redeliver their deliveries; the secret is never read back."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.test import Client

from controlplane.accounts.actions import do_create_token
from controlplane.accounts.actors import Actor
from controlplane.accounts.roles import Role
from controlplane.audit.models import AuditEntry
from controlplane.policies.models import Environment
from controlplane.webhooks.delivery import deliver_due, send_test
from controlplane.webhooks.models import Delivery, Webhook
from tests.api.conftest import ApiClient
from tests.conftest import make_user
from tests.scoping import scoped_cast
from tests.webhooks import conftest as webhook_fixtures
from tests.webhooks.receiver import Receiver

pytestmark = pytest.mark.django_db(transaction=True)

HOOKS = "/environments/production/webhooks"
# The webhook tests' loopback receiver, for these tests too.
allow_private_targets = webhook_fixtures.allow_private_targets
receiver = webhook_fixtures.receiver


def test_an_admin_token_adds_tests_and_removes_a_webhook(
    api_as: Callable[..., ApiClient], receiver: Receiver, production: Environment
) -> None:
    api = api_as(Role.ADMIN)
    body = {
        "name": "ops",
        "url": f"{receiver.url}/hooks/s3cret-path",
        "events": ["policy.*", "test"],
        "payload_format": "slack",
        "generate_secret": True,
    }
    created = api.call("post", HOOKS, body)
    assert created.status_code == 201, created.content
    webhook = Webhook.objects.get()
    assert created.json()["secret"] == webhook.secret and webhook.secret
    assert created.json()["target"] == f"{receiver.url}/…"
    assert "s3cret-path" not in created.content.decode()
    listed = api.call("get", HOOKS).json()
    assert [(w["name"], w["signed"], w["events"], w["last_status"]) for w in listed] == [
        ("ops", True, ["policy.*", "test"], None)
    ]
    assert webhook.secret not in api.call("get", HOOKS).content.decode()
    test = api.call("post", f"{HOOKS}/ops/test")
    assert test.status_code == 202
    assert deliver_due() == 1
    assert receiver.requests[0].headers["x-webhook-delivery"] == test.json()["event_id"]
    deliveries = api.call("get", f"{HOOKS}/ops/deliveries").json()
    assert [(d["event_type"], d["status"], d["last_status_code"]) for d in deliveries] == [
        ("test", "delivered", 200)
    ]
    assert api.call("get", HOOKS).json()[0]["last_status"] == "delivered"
    again = api.call("post", f"/webhook-deliveries/{deliveries[0]['id']}/redeliver")
    assert again.status_code == 200 and again.json()["status"] == "pending"
    assert deliver_due() == 1 and len(receiver.requests) == 2
    assert api.call("delete", f"{HOOKS}/ops").status_code == 204
    assert not Webhook.objects.exists()
    actions = AuditEntry.objects.filter(action__startswith="webhook.").values_list("action")
    assert sorted(a for (a,) in actions) == [
        "webhook.create",
        "webhook.delete",
        "webhook.redeliver",
    ]


def test_a_given_secret_is_write_only(
    api_as: Callable[..., ApiClient], receiver: Receiver, production: Environment
) -> None:
    api = api_as(Role.ADMIN)
    body = {"name": "ops", "url": f"{receiver.url}/hook", "secret": "my-own-secret"}
    created = api.call("post", HOOKS, body)
    assert created.status_code == 201 and created.json()["secret"] is None
    assert Webhook.objects.get().secret == "my-own-secret"
    assert "my-own-secret" not in api.call("get", HOOKS).content.decode()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://[::1]/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
    ],
)
def test_a_private_target_is_refused_naming_the_url(
    api_as: Callable[..., ApiClient], production: Environment, url: str
) -> None:
    response = api_as(Role.ADMIN).call("post", HOOKS, {"name": "ops", "url": url})
    assert response.status_code == 422
    assert list(response.json()["errors"]) == ["url"]
    assert not Webhook.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "ops", "url": "https://x.example/", "events": ["nope"]}, "events.0"),
        ({"name": "ops", "url": "https://x.example/", "payload_format": "xml"}, "payload_format"),
        ({"name": "", "url": "https://x.example/"}, "name"),
        (
            {"name": "ops", "url": "https://x.example/", "secret": "s", "generate_secret": True},
            "secret",
        ),
    ],
)
def test_bad_fields_are_refused_naming_them(
    api_as: Callable[..., ApiClient], production: Environment, body: dict[str, object], field: str
) -> None:
    response = api_as(Role.ADMIN).call("post", HOOKS, body)
    assert response.status_code == 422
    assert field in response.json()["errors"], response.json()
    assert not Webhook.objects.exists()


def test_an_editor_token_is_refused(
    api_as: Callable[..., ApiClient], receiver: Receiver, production: Environment
) -> None:
    api = api_as(Role.EDITOR)
    response = api.call("post", HOOKS, {"name": "ops", "url": f"{receiver.url}/hook"})
    assert response.status_code == 403
    assert "needs the admin role in production" in response.json()["detail"]
    assert not Webhook.objects.exists()


def test_redelivering_needs_a_view_of_its_environment_then_the_admin_role_there(
    client: Client, production: Environment, system: Actor
) -> None:
    cast = scoped_cast(system)
    webhook = Webhook.objects.create(
        environment="production", name="hook", url="https://hooks.example.com/x"
    )
    send_test(webhook)
    delivery = Delivery.objects.get()
    Delivery.objects.filter(pk=delivery.pk).update(status=Delivery.Status.FAILED)
    _, scoped = do_create_token("scoped", Role.ADMIN, system, environments=["staging"])
    _, capped = do_create_token("capped", Role.ADMIN, Actor.of(cast.stella))
    path = f"/webhook-deliveries/{delivery.pk}/redeliver"
    assert ApiClient(client, scoped).call("post", path).status_code == 404
    refused = ApiClient(client, capped).call("post", path)
    assert refused.status_code == 403 and "admin role in production" in refused.json()["detail"]
    assert Delivery.objects.get().status == Delivery.Status.FAILED
    missing = ApiClient(client, scoped).call("post", "/webhook-deliveries/999999/redeliver")
    assert missing.status_code == 404


def test_a_redelivery_through_the_api_is_audited_for_the_tokens_creator(
    client: Client, production: Environment, system: Actor
) -> None:
    ada = make_user("ada", Role.ADMIN)
    webhook = Webhook.objects.create(
        environment="production", name="hook", url="https://hooks.example.com/x"
    )
    event = send_test(webhook)
    Delivery.objects.filter(event=event).update(status=Delivery.Status.FAILED)
    delivery = Delivery.objects.get()
    _, secret = do_create_token("deploys", Role.ADMIN, Actor.of(ada))

    answer = ApiClient(client, secret).call("post", f"/webhook-deliveries/{delivery.pk}/redeliver")

    assert answer.status_code == 200
    entry = AuditEntry.objects.get(action="webhook.redeliver")
    assert (entry.actor_name, entry.actor_user, entry.actor_token) == (
        "token:deploys",
        ada,
        "deploys",
    )
    assert (entry.environment, entry.object_kind, entry.object_name) == (
        "production",
        "webhook",
        "hook",
    )
    assert entry.changes == {"event": [None, f"test {event.id}"], "status": ["failed", "pending"]}
