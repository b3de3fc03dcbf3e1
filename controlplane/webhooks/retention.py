"""Retention: old deliveries and events are deleted, pending ones never.

The outbox would otherwise grow with every change for ever. The sender prunes
at most once an hour (``PRUNE_EVERY``); ``manage.py webhooks prune`` does it now.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone

from controlplane.webhooks.models import Delivery, Event

PRUNE_EVERY = 3600.0  # seconds between two prunes of one sender
CHUNK = 1000  # rows deleted per statement, so no prune holds a long transaction


def prune(now: datetime | None = None) -> dict[str, int]:
    """Delete what is older than ``WEBHOOKS_KEEP_DAYS``; return how many of each.

    Gone: deliveries delivered or failed that were made before the cut-off (and,
    when delivered, delivered before it too: a redelivery of last week is kept),
    then events made before it that have no delivery left. A pending delivery is
    kept whatever its age, and so is its event.
    """
    cutoff = (now or timezone.now()) - timedelta(days=settings.WEBHOOKS_KEEP_DAYS)
    done = Delivery.objects.filter(
        ~Q(status=Delivery.Status.PENDING),
        Q(delivered_at__isnull=True) | Q(delivered_at__lt=cutoff),
        created_at__lt=cutoff,
    )
    # An event goes only once none of its deliveries is left, pending or kept.
    spent = Event.objects.filter(created_at__lt=cutoff, deliveries__isnull=True)
    return {"deliveries": _delete_in_chunks(done), "events": _delete_in_chunks(spent)}


def _delete_in_chunks(rows: QuerySet[Delivery] | QuerySet[Event]) -> int:
    """Delete ``rows`` a chunk at a time; each delete re-applies their filter, so a
    delivery redelivered meanwhile (pending again) is not deleted."""
    deleted = 0
    while True:
        chunk = list(rows.order_by().values_list("pk", flat=True)[:CHUNK])
        if not chunk:
            return deleted
        deleted += rows.filter(pk__in=chunk).delete()[1].get(rows.model._meta.label, 0)
        if len(chunk) < CHUNK:
            return deleted
