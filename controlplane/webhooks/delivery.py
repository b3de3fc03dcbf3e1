"""The delivery worker: sends the outbox, in order per webhook, at least once.

Each round takes, per webhook, its oldest pending delivery (a later event waits
until the earlier one is delivered or failed) once its time has come. It is
claimed in a short transaction (the webhook's row locked with ``skip_locked``,
so replicas never send one delivery twice at once) by moving its next attempt
past the send's timeout; the send runs with no transaction open; its outcome is
written after. A sender that dies mid-send leaves a claim that runs out, and
the delivery is sent again: receivers de-duplicate by the event's id.
"""

from __future__ import annotations

import bisect
import logging
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from controlplane.ops.metrics import DATABASE_ERRORS
from controlplane.ops.outage import DATABASE_UNAVAILABLE, Outage
from controlplane.webhooks import http
from controlplane.webhooks.events import TEST, emit_to
from controlplane.webhooks.models import Delivery, Event, Webhook
from controlplane.webhooks.payloads import render
from controlplane.webhooks.retention import PRUNE_EVERY, prune
from controlplane.webhooks.signing import signature_header

logger = logging.getLogger(__name__)

CLAIM_MARGIN = 30.0  # seconds a claim outlives the send's timeout
PARALLEL_WEBHOOKS = 8  # webhooks served at once in a round
BATCH = 50  # deliveries sent to one webhook in one round, at most, while they succeed
EXCERPT = 200  # characters of a refusing receiver's answer kept in the error

_jitter = random.Random()


@dataclass(frozen=True)
class Outcome:
    """What one send gave: delivered, or why not (``final``: never worth retrying)."""

    delivered: bool
    status_code: int | None = None
    latency_ms: float | None = None
    error: str = ""
    final: bool = False


def retry_delay(attempts: int, rng: random.Random = _jitter) -> float:
    """Seconds before the next try after ``attempts`` tries: exponential, capped, full jitter.

    Full jitter (uniform from zero) spreads the retries of many deliveries that
    failed together, so a receiver that comes back is not hit by all at once.
    """
    exponent = min(max(attempts - 1, 0), 32)
    ceiling = min(settings.WEBHOOKS_BACKOFF_MAX, settings.WEBHOOKS_BACKOFF * 2**exponent)
    return rng.uniform(0, ceiling)


def deliver_due(now: datetime | None = None) -> int:
    """One round of the worker: send what is due, per webhook in order; return how many sends.

    Webhooks are served side by side (up to ``PARALLEL_WEBHOOKS`` at once), so a
    receiver that hangs until the timeout delays only its own deliveries.
    ``now`` fixes the clock for the whole round (tests); by default it is read at each step.
    """
    due = due_webhooks(now)
    if len(due) <= 1:
        return sum(deliver_to(webhook_id, now) for webhook_id in due)
    with ThreadPoolExecutor(min(len(due), PARALLEL_WEBHOOKS)) as pool:
        return sum(pool.map(partial(_deliver_in_thread, now=now), due))


def due_webhooks(now: datetime | None = None) -> list[int]:
    """The webhooks with a pending delivery whose time has come, by id."""
    return list(
        Delivery.objects.pending()
        .filter(next_attempt_at__lte=_at(now), webhook__enabled=True)
        .order_by("webhook_id")
        .values_list("webhook_id", flat=True)
        .distinct()
    )


def deliver_to(webhook_id: int, now: datetime | None = None) -> int:
    """Send one webhook's due deliveries, oldest first, stopping at the first failure."""
    sent = 0
    for _ in range(BATCH):
        delivery = claim_next(webhook_id, _at(now))
        if delivery is None:
            break
        sent += 1
        if not finish(delivery, send(delivery), _at(now)):
            break  # the next event waits for this one
    return sent


def _deliver_in_thread(webhook_id: int, now: datetime | None) -> int:
    """``deliver_to`` in a pool's thread, which closes its own database connection."""
    try:
        return deliver_to(webhook_id, now)
    finally:
        connection.close()


def _at(now: datetime | None) -> datetime:
    return now if now is not None else timezone.now()


def claim_next(webhook_id: int, now: datetime) -> Delivery | None:
    """Claim the webhook's oldest pending delivery if its time has come, else None.

    None too when another sender holds the webhook's row right now.
    """
    with transaction.atomic():
        webhook = (
            Webhook.objects.select_for_update(skip_locked=True)
            .filter(pk=webhook_id, enabled=True)
            .first()
        )
        if webhook is None:
            return None
        head = (
            Delivery.objects.pending()
            .filter(webhook=webhook)
            .select_related("event")
            .order_by("id")
            .first()
        )
        if head is None or head.next_attempt_at > now:
            return None
        head.attempts += 1
        head.next_attempt_at = now + timedelta(seconds=settings.WEBHOOKS_TIMEOUT + CLAIM_MARGIN)
        head.save(update_fields=["attempts", "next_attempt_at"])
        head.webhook = webhook
        return head


def headers_for(webhook: Webhook, event: Event, body: bytes) -> dict[str, str]:
    """The delivery's headers; the event's id is the same on every retry."""
    headers = {
        "Content-Type": "application/json",
        "X-Webhook-Event": event.type,
        "X-Webhook-Delivery": str(event.id),
    }
    if webhook.secret:
        headers["X-Signature"] = signature_header(webhook.secret, body, int(time.time()))
    return headers


def send(delivery: Delivery) -> Outcome:
    """POST the delivery's event to its webhook (no database transaction open)."""
    webhook, event = delivery.webhook, delivery.event
    body = render(webhook, event)
    try:
        response = http.post(
            webhook.url,
            body,
            headers_for(webhook, event, body),
            timeout=settings.WEBHOOKS_TIMEOUT,
        )
    except http.TargetRefused as exc:
        return Outcome(False, error=str(exc), final=True)  # it names the url
    except http.DeliveryError as exc:
        return Outcome(False, error=str(exc))
    if response.error is None:
        return Outcome(True, response.status, response.latency_ms)
    error = response.error
    if response.body_excerpt:
        error += f": {response.body_excerpt[:EXCERPT]}"
    return Outcome(False, response.status, response.latency_ms, error)


def finish(delivery: Delivery, outcome: Outcome, now: datetime) -> bool:
    """Write a send's outcome; True if delivered.

    A failure is retried after ``retry_delay`` until ``WEBHOOKS_RETRY_FOR`` after the
    event, then failed. Only the claim that sent writes: if the claim ran out and
    another sender took the delivery, this outcome is dropped.
    """
    deadline = delivery.event.created_at + timedelta(seconds=settings.WEBHOOKS_RETRY_FOR)
    fields: dict[str, object] = {
        "last_status_code": outcome.status_code,
        "last_latency_ms": outcome.latency_ms,
        "last_error": outcome.error,
    }
    if outcome.delivered:
        fields.update(status=Delivery.Status.DELIVERED, delivered_at=now)
    elif outcome.final or now >= deadline:
        fields.update(status=Delivery.Status.FAILED)
    else:
        retry_at = now + timedelta(seconds=retry_delay(delivery.attempts))
        fields.update(next_attempt_at=min(retry_at, deadline))
    Delivery.objects.filter(
        pk=delivery.pk, status=Delivery.Status.PENDING, attempts=delivery.attempts
    ).update(**fields)
    if not outcome.delivered:
        logger.warning(
            "Webhook %s: %s not delivered: %s", delivery.webhook, delivery.event, outcome.error
        )
    return outcome.delivered


def send_test(webhook: Webhook) -> Event:
    """A ``test`` event for ``webhook`` only (its "Send test" button), sent by the worker."""
    with transaction.atomic():
        payload = {"webhook": webhook.name, "message": "A test event from the control plane."}
        return emit_to([webhook], webhook.environment, TEST, payload)


class WebhookSender(threading.Thread):
    """Background thread: every ``WEBHOOKS_INTERVAL`` seconds, hands each webhook with
    deliveries due to a pool of ``PARALLEL_WEBHOOKS`` threads (``deliver_to``), and
    prunes old deliveries and events once an hour (the first an hour in).

    Unlike ``deliver_due``, it never waits for a round to end: a webhook whose
    receiver hangs holds one thread until the timeout, and the others are served
    meanwhile by the rest (a webhook is never in two threads at once).
    """

    def __init__(self, interval: float | None = None) -> None:
        super().__init__(name="controlplane-webhooks", daemon=True)
        self.interval = interval if interval is not None else settings.WEBHOOKS_INTERVAL
        self._stop_event = threading.Event()
        self._pool = ThreadPoolExecutor(
            PARALLEL_WEBHOOKS, thread_name_prefix="controlplane-webhook"
        )
        self._in_flight: set[int] = set()
        self._last_handed = 0
        self._in_flight_lock = threading.Lock()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=settings.WEBHOOKS_TIMEOUT + 10)

    def dispatch(self) -> int:
        """Hand the due webhooks that no thread is serving to free threads; how many."""
        handed = 0
        due = due_webhooks()
        # Round robin: start after the webhook handed out last, so that webhooks with a
        # long backlog never keep the ones with higher ids waiting for a thread.
        start = bisect.bisect_right(due, self._last_handed)
        for webhook_id in due[start:] + due[:start]:
            with self._in_flight_lock:
                if webhook_id in self._in_flight or len(self._in_flight) >= PARALLEL_WEBHOOKS:
                    continue
                self._in_flight.add(webhook_id)
            future = self._pool.submit(_deliver_in_thread, webhook_id, None)
            future.add_done_callback(partial(self._served, webhook_id))
            self._last_handed = webhook_id
            handed += 1
        return handed

    def _served(self, webhook_id: int, future: Future[int]) -> None:
        with self._in_flight_lock:
            self._in_flight.discard(webhook_id)
        error = future.exception()
        if error is not None:
            logger.warning("Webhook %s: sending failed (%s); will retry", webhook_id, error)

    def run(self) -> None:
        database_outage = Outage(
            logger,
            DATABASE_ERRORS.labels("webhooks"),
            "The webhook sender cannot reach the database",
            "The database answers again; the webhook sender is running",
        )
        next_prune = time.monotonic() + PRUNE_EVERY
        while not self._stop_event.is_set():
            close_old_connections()
            try:
                self.dispatch()
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + PRUNE_EVERY
                    logger.info("Webhook retention: deleted %s", prune())
                database_outage.answered()
            except DATABASE_UNAVAILABLE as exc:
                database_outage.failed(exc)
            except Exception:
                logger.exception("Webhook round failed; will retry")
            self._stop_event.wait(self.interval)
        self._pool.shutdown(wait=True)  # sends under way end within WEBHOOKS_TIMEOUT
        close_old_connections()


_sender: WebhookSender | None = None
_sender_lock = threading.Lock()


def start_webhook_sender() -> WebhookSender:
    """Start this process's webhook sender once."""
    global _sender
    with _sender_lock:
        if _sender is None or not _sender.is_alive():
            _sender = WebhookSender()
            _sender.start()
        return _sender
