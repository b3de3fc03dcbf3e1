"""Retention: old delivered and failed deliveries and their events go; pending ones stay."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone

from controlplane.accounts.actors import Actor
from controlplane.policies.models import Environment
from controlplane.webhooks import delivery
from controlplane.webhooks.actions import do_redeliver
from controlplane.webhooks.models import Delivery, Event, Webhook
from controlplane.webhooks.retention import prune
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

PENDING, DELIVERED, FAILED = (
    Delivery.Status.PENDING,
    Delivery.Status.DELIVERED,
    Delivery.Status.FAILED,
)


@pytest.fixture(autouse=True)
def keep_thirty_days(settings: Any) -> None:
    settings.WEBHOOKS_KEEP_DAYS = 30


def _event(age_days: float, *statuses: str, webhooks: list[Webhook]) -> Event:
    """An event made ``age_days`` ago with one delivery per status, to the webhooks in turn."""
    made = timezone.now() - timedelta(days=age_days)
    event = Event.objects.create(environment="production", type="test", created_at=made)
    for webhook, status in zip(webhooks, statuses, strict=False):
        Delivery.objects.create(
            webhook=webhook,
            event=event,
            status=status,
            created_at=made,
            delivered_at=made if status == DELIVERED else None,
        )
    return event


@pytest.fixture
def hooks(production: Environment) -> list[Webhook]:
    return [
        Webhook.objects.create(environment="production", name=name, url="http://127.0.0.1:9/")
        for name in ("a", "b")
    ]


def test_prune_deletes_what_is_old_and_done_and_keeps_the_rest(hooks: list[Webhook]) -> None:
    old_delivered = _event(31, DELIVERED, webhooks=hooks)
    old_failed = _event(40, FAILED, webhooks=hooks)
    old_done = _event(45, DELIVERED, FAILED, webhooks=hooks)
    old_pending = _event(90, PENDING, webhooks=hooks)
    old_half_pending = _event(35, DELIVERED, PENDING, webhooks=hooks)
    young = _event(29, DELIVERED, FAILED, webhooks=hooks)
    young_pending = _event(1, PENDING, webhooks=hooks)

    counts = prune()

    assert counts == {"deliveries": 5, "events": 3}
    left = set(Event.objects.values_list("pk", flat=True))
    assert left == {old_pending.pk, old_half_pending.pk, young.pk, young_pending.pk}
    assert not left & {old_delivered.pk, old_failed.pk, old_done.pk}
    assert sorted(Delivery.objects.values_list("event_id", "status")) == sorted(
        [
            (old_pending.pk, PENDING),
            (old_half_pending.pk, PENDING),  # its delivered sibling went, it stays
            (young.pk, DELIVERED),
            (young.pk, FAILED),
            (young_pending.pk, PENDING),
        ]
    )
    assert prune() == {"deliveries": 0, "events": 0}


def test_an_old_event_whose_delivery_was_just_redelivered_is_kept(hooks: list[Webhook]) -> None:
    event = _event(60, FAILED, webhooks=hooks)
    do_redeliver(Delivery.objects.get(event=event), Actor.system("tests"))

    assert prune() == {"deliveries": 0, "events": 0}
    Delivery.objects.filter(event=event).update(
        status=DELIVERED, delivered_at=timezone.now() - timedelta(days=2)
    )
    assert prune() == {"deliveries": 0, "events": 0}  # delivered two days ago: young
    assert prune(now=timezone.now() + timedelta(days=29)) == {"deliveries": 1, "events": 1}


def test_the_keep_days_setting_moves_the_cut_off(settings: Any, hooks: list[Webhook]) -> None:
    settings.WEBHOOKS_KEEP_DAYS = 7
    week_old = _event(8, DELIVERED, webhooks=hooks)
    _event(6, DELIVERED, webhooks=hooks)

    assert prune() == {"deliveries": 1, "events": 1}
    assert not Event.objects.filter(pk=week_old.pk).exists()


def test_the_command_prunes_and_says_how_much(hooks: list[Webhook]) -> None:
    _event(31, DELIVERED, FAILED, webhooks=hooks)
    kept = _event(31, PENDING, webhooks=hooks)
    out = StringIO()

    call_command("webhooks", "prune", stdout=out)

    assert "Deleted 2 deliveries and 1 events older than 30 days" in out.getvalue()
    assert list(Event.objects.values_list("pk", flat=True)) == [kept.pk]


def test_the_sender_prunes_by_itself_once_its_period_is_up(
    hooks: list[Webhook], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "PRUNE_EVERY", 0.3)
    old = _event(31, DELIVERED, webhooks=hooks)
    kept = _event(31, PENDING, webhooks=hooks[1:])  # hook b: off, so it stays pending
    Webhook.objects.filter(name="b").update(enabled=False)
    sender = delivery.WebhookSender(interval=0.05)
    sender.start()
    try:
        wait_for(lambda: not Event.objects.filter(pk=old.pk).exists())
    finally:
        sender.stop()

    assert list(Event.objects.values_list("pk", flat=True)) == [kept.pk]
