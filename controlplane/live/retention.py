"""Keep the database's history for ``HISTORY_KEEP_DAYS`` days, not forever.

Breaker events (one row per transition of every instance) and discovered names
no client has reported for that long are deleted, in batches so that no delete
holds its table for long; expired sessions are cleared as Django's
``clearsessions`` does. The ingest runs it once an hour in every replica (each
delete is idempotent); ``manage.py prune_history`` runs it at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import import_module

from django.conf import settings
from django.db.models import Model, QuerySet
from django.utils import timezone

from controlplane.live.models import BreakerEvent, DiscoveredName

BATCH = 5_000  # rows deleted per statement


@dataclass
class Pruned:
    breaker_events: int = 0
    discovered_names: int = 0

    @property
    def any(self) -> bool:
        return bool(self.breaker_events or self.discovered_names)


def prune_history(now: datetime | None = None) -> Pruned:
    """Delete the history older than ``HISTORY_KEEP_DAYS`` days and expired sessions."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.HISTORY_KEEP_DAYS)
    pruned = Pruned(
        breaker_events=_delete_in_batches(BreakerEvent.objects.filter(at__lt=cutoff)),
        discovered_names=_delete_in_batches(DiscoveredName.objects.filter(last_seen__lt=cutoff)),
    )
    engine = import_module(settings.SESSION_ENGINE)
    engine.SessionStore.clear_expired()
    return pruned


def _delete_in_batches(rows: QuerySet[Model]) -> int:
    deleted = 0
    while True:
        ids = list(rows.order_by("pk").values_list("pk", flat=True)[:BATCH])
        if not ids:
            return deleted
        deleted += rows.model._default_manager.filter(pk__in=ids).delete()[0]
