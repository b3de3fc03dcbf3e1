"""``manage.py webhooks``: admins add, list, test and remove webhooks, audited."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from controlplane.audit.models import AuditEntry
from controlplane.policies.models import Environment
from controlplane.webhooks.delivery import deliver_due
from controlplane.webhooks.models import Delivery, Webhook
from tests.conftest import wait_for
from tests.webhooks.receiver import Receiver

pytestmark = pytest.mark.django_db(transaction=True)

SLACK_URL = "https://hooks.slack.com/services/T000/B000/secret-path"


def _run(*args: str) -> str:
    out = StringIO()
    call_command("webhooks", *args, stdout=out)
    return out.getvalue()


def test_an_admin_adds_tests_lists_and_removes_a_webhook(
    receiver: Receiver, production: Environment
) -> None:
    url = f"{receiver.url}/hook"
    added = _run("--actor", "ada", "add", "production", "ops", url, "--generate-secret")
    webhook = Webhook.objects.get()
    assert (webhook.environment, webhook.name, webhook.url, webhook.events) == (
        "production",
        "ops",
        url,
        [],
    )
    assert webhook.secret and webhook.secret in added and webhook.created_by_name == "ada"
    entry = AuditEntry.objects.get(action="webhook.create")
    assert (entry.actor_name, entry.environment, entry.object_name) == ("ada", "production", "ops")
    assert entry.changes["url"] == [None, f"{receiver.url}/…"]
    assert webhook.secret not in str(entry.changes) and "secret:" in str(entry.changes)
    assert "Test event" in _run("test", "production", "ops")
    wait_for(lambda: deliver_due() is not None and receiver.received(1))
    assert receiver.requests[0].headers["x-webhook-event"] == "test"
    assert (
        _run("list") == f"production/ops {receiver.url}/… (json, all events): 0 pending, 0 failed\n"
    )
    _run("remove", "production", "ops")
    assert not Webhook.objects.exists() and not Delivery.objects.exists()
    assert AuditEntry.objects.filter(action="webhook.delete", object_name="ops").exists()


def test_the_audit_log_and_listing_never_show_an_incoming_webhook_urls_path(
    production: Environment, settings: Any
) -> None:
    settings.WEBHOOKS_ALLOW_PRIVATE_TARGETS = True
    _run(
        "add",
        "production",
        "chat",
        "http://127.0.0.1:9/services/T000/B000/secret-path",
        "--format",
        "slack",
        "--event",
        "override.*",
    )
    assert Webhook.objects.get().payload_format == "slack"
    entry = AuditEntry.objects.get(action="webhook.create")
    shown = _run("list", "production") + str(entry.changes)
    assert "secret-path" not in shown and "override.*" in shown


@pytest.mark.parametrize(
    ("args", "field", "allow_private"),
    [
        (("staging", "ops", "http://127.0.0.1:9/"), "environment", True),
        (("production", "ops", "ftp://127.0.0.1:9/"), "url", True),
        (("production", "ops", "http://127.0.0.1:9/hook"), "url", False),
        (("production", "ops", "http://169.254.169.254/latest"), "url", False),
        (("production", "ops", "http://127.0.0.1:9/", "--event", "policy.renamed"), "events", True),
    ],
)
def test_a_bad_webhook_is_refused_naming_the_field(
    production: Environment, args: tuple[str, ...], field: str, allow_private: bool, settings: Any
) -> None:
    settings.WEBHOOKS_ALLOW_PRIVATE_TARGETS = allow_private
    with pytest.raises(CommandError) as refused:
        _run("add", *args)
    assert str(refused.value).startswith(f"{field}: ")
    assert (
        not Webhook.objects.exists()
        and not AuditEntry.objects.filter(object_kind="webhook").exists()
    )


def test_a_second_webhook_of_the_same_name_is_refused(
    receiver: Receiver, production: Environment
) -> None:
    _run("add", "production", "ops", f"{receiver.url}/a")
    with pytest.raises(CommandError, match="^name: production already has a webhook 'ops'"):
        _run("add", "production", "ops", f"{receiver.url}/b")
    with pytest.raises(CommandError, match="^name: production has no webhook 'other'"):
        _run("remove", "production", "other")
    assert Webhook.objects.count() == 1


def test_a_secret_comes_from_an_environment_variable_never_the_command_line(
    receiver: Receiver, production: Environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_SECRET", "from-the-environment")
    out = _run("add", "production", "ops", f"{receiver.url}/hook", "--secret-env", "HOOK_SECRET")
    assert Webhook.objects.get().secret == "from-the-environment"
    assert "from-the-environment" not in out
    with pytest.raises(CommandError, match="^secret-env: UNSET_SECRET is not set"):
        _run("add", "production", "two", f"{receiver.url}/hook", "--secret-env", "UNSET_SECRET")
