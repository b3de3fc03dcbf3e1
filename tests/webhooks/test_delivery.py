"""The delivery worker against a real receiver on loopback: order, retries, claims, limits."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction

from controlplane.accounts.actors import Actor
from controlplane.policies.actions import do_create_policy, do_update_policy
from controlplane.policies.models import Environment
from controlplane.webhooks.actions import do_redeliver
from controlplane.webhooks.delivery import WebhookSender, deliver_due, retry_delay, send_test
from controlplane.webhooks.events import EVENT_TYPES, emit
from controlplane.webhooks.models import Delivery, Event, Webhook
from controlplane.webhooks.signing import verify
from controlplane.workers.runner import start_enabled_workers
from tests.conftest import wait_for
from tests.webhooks.receiver import Receiver

pytestmark = pytest.mark.django_db(transaction=True)

LIMIT = {"limit": 100, "period": 60}
DOWN_FOR = 30.0  # seconds a receiver stays down in the case


@pytest.fixture(autouse=True)
def fast(settings: Any) -> None:
    """Small timings, so retries and expiry happen within a test."""
    settings.WEBHOOKS_TIMEOUT = 2.0
    settings.WEBHOOKS_BACKOFF = 0.05
    settings.WEBHOOKS_BACKOFF_MAX = 0.2
    settings.WEBHOOKS_RETRY_FOR = 2.0


def _hook(receiver: Receiver, **fields: Any) -> Webhook:
    defaults: dict[str, Any] = {"name": "ops", "url": f"{receiver.url}/hook"}
    return Webhook.objects.create(environment="production", **{**defaults, **fields})


def _rounds_until(condition: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Run worker rounds until ``condition`` holds (the worker's thread, driven by the test)."""
    return wait_for(lambda: deliver_due() is not None and condition(), timeout=timeout)


def _delivery_ids(receiver: Receiver) -> list[str]:
    return [request.headers["x-webhook-delivery"] for request in receiver.requests]


def _event_ids() -> list[str]:
    return [str(event.id) for event in Event.objects.order_by("created_at")]


def test_a_receiver_down_for_30_s_gets_everything_afterwards_in_order_once(
    receiver: Receiver, production: Environment, system: Actor, settings: Any
) -> None:
    settings.WEBHOOKS_RETRY_FOR = 120.0
    _hook(receiver, secret="s3cret")
    receiver.reply(500, b"down for maintenance")
    policy = do_create_policy(production, "rate_limit", "api", LIMIT, system)
    for limit in (200, 300):
        policy = do_update_policy(policy, {"limit": limit}, system)
    ids = _event_ids()
    first = Delivery.objects.get(event_id=ids[0])
    _rounds_until(lambda: receiver.received(3))
    first.refresh_from_db()
    assert (first.last_status_code, first.status) == (500, "pending")
    assert "down for maintenance" in first.last_error
    receiver.down()
    down_at = time.monotonic()
    tries = len(receiver.requests)
    # Down for 30 s (the case): the worker keeps trying, with its backoff.
    _rounds_until(lambda: time.monotonic() - down_at >= DOWN_FOR, timeout=DOWN_FOR + 15)
    first.refresh_from_db()
    assert first.attempts >= tries + 2
    assert first.last_status_code is None and first.last_error
    policy = do_update_policy(policy, {"limit": 400}, system)  # news while it is down
    ids = _event_ids()
    receiver.reply(200)
    receiver.up()
    _rounds_until(lambda: not Delivery.objects.pending().exists())
    for _ in range(3):
        assert deliver_due() == 0  # an acknowledged delivery is never sent again
    seen = _delivery_ids(receiver)
    assert set(seen[:-4]) == {ids[0]}  # the later events waited for the first one
    assert seen[-4:] == ids  # then each once, in order
    assert all(
        verify("s3cret", r.body, r.headers["x-signature"], now=int(time.time()))
        for r in receiver.requests
    )
    assert set(Delivery.objects.values_list("status", flat=True)) == {"delivered"}


def test_a_hanging_receiver_never_delays_a_save(
    receiver: Receiver, production: Environment, system: Actor, settings: Any
) -> None:
    settings.WEBHOOKS_TIMEOUT = 3.0
    settings.WEBHOOKS_RETRY_FOR = 60.0
    for number in range(10):
        _hook(receiver, name=f"hook{number}")
    receiver.hang()
    policy = do_create_policy(production, "rate_limit", "api", LIMIT, system)
    sender = threading.Thread(target=_one_round)
    sender.start()
    try:
        wait_for(lambda: receiver.received(1))  # the worker is stuck on the receiver now
        started = time.monotonic()
        do_update_policy(policy, {"limit": 5}, system, "during the hang")
        took = time.monotonic() - started
        changes = Delivery.objects.filter(event__type="policy.changed")
        assert changes.count() == 10
        assert {(d.status, d.attempts) for d in changes} == {("pending", 0)}
        assert took < 1.0  # the webhook timeout is 3 s: the save waited on no receiver
    finally:
        sender.join(timeout=30)
        took_round = time.monotonic() - started
    assert took_round < 3.0 * 2 + 2  # ten hanging webhooks are waited on side by side
    stuck = Delivery.objects.filter(event__type="policy.created")
    assert {(d.status, d.attempts, bool(d.last_error)) for d in stuck} == {("pending", 1, True)}


def _one_round() -> None:
    try:
        deliver_due()
    finally:
        connection.close()


class _Highest(random.Random):
    """The top of every jitter range: the backoff's ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_the_backoff_grows_exponentially_up_to_its_cap_with_jitter_below(settings: Any) -> None:
    settings.WEBHOOKS_BACKOFF_MAX = 1.0
    ceilings = [retry_delay(attempts, _Highest()) for attempts in range(1, 10)]
    assert ceilings == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]
    assert retry_delay(10_000, _Highest()) == 1.0
    delays = [retry_delay(6) for _ in range(200)]
    assert all(0 <= delay <= 1.0 for delay in delays)
    assert len(set(delays)) > 100  # jittered, not one value for every delivery


def test_a_delivery_failing_past_the_retry_time_is_failed(
    receiver: Receiver, production: Environment, system: Actor
) -> None:
    _hook(receiver)
    receiver.reply(503)
    do_create_policy(production, "rate_limit", "api", LIMIT, system)
    event = Event.objects.get()
    soon = event.created_at + timedelta(seconds=0.5)
    assert deliver_due(now=soon) == 1
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("pending", 1, 503)
    assert soon <= delivery.next_attempt_at <= soon + timedelta(seconds=0.05)
    late = event.created_at + timedelta(seconds=2.5)
    assert deliver_due(now=late) == 1
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("failed", 2)
    assert deliver_due(now=late + timedelta(hours=1)) == 0
    assert len(receiver.requests) == 2


def test_a_refused_target_fails_at_once(production: Environment, system: Actor) -> None:
    # No receiver fixture: loopback targets are refused, as in production.
    Webhook.objects.create(environment="production", name="local", url="http://127.0.0.1:9/")
    do_create_policy(production, "rate_limit", "api", LIMIT, system)
    assert deliver_due() == 1
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempts) == ("failed", 1)
    assert delivery.last_error.startswith("url: ")
    assert deliver_due() == 0


def test_two_workers_never_send_one_delivery_twice(
    receiver: Receiver, production: Environment, system: Actor
) -> None:
    _hook(receiver)
    for number in range(6):
        do_create_policy(production, "rate_limit", f"api{number}", LIMIT, system)
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            start.wait()
            _rounds_until(lambda: not Delivery.objects.pending().exists())
        except BaseException as exc:  # noqa: BLE001 - reported by the test's thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert _delivery_ids(receiver) == _event_ids()


def test_slack_format_deliveries_have_text_and_a_verifiable_signature(
    receiver: Receiver, production: Environment, system: Actor
) -> None:
    _hook(receiver, payload_format=Webhook.Format.SLACK, secret="chat-secret")
    do_create_policy(production, "rate_limit", "api", LIMIT, system, "launch")
    _rounds_until(lambda: receiver.received(1))
    [request] = receiver.requests
    assert json.loads(request.body)["text"] == (
        f"{system.name} created rate_limit api in production (version 1): launch"
    )
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-webhook-event"] == "policy.created"
    assert verify("chat-secret", request.body, request.headers["x-signature"], now=int(time.time()))
    assert not verify("other", request.body, request.headers["x-signature"], now=int(time.time()))


def test_an_unsigned_webhook_gets_no_signature_header(
    receiver: Receiver, production: Environment, system: Actor
) -> None:
    _hook(receiver)
    do_create_policy(production, "rate_limit", "api", LIMIT, system)
    _rounds_until(lambda: receiver.received(1))
    assert "x-signature" not in receiver.requests[0].headers
    assert json.loads(receiver.requests[0].body)["type"] == "policy.created"


def test_a_test_event_and_a_redelivery_reach_the_webhook_with_one_id(
    receiver: Receiver, production: Environment
) -> None:
    hook = _hook(receiver)
    other = _hook(receiver, name="other", url=f"{receiver.url}/other")
    event = send_test(hook)
    _rounds_until(lambda: receiver.received(1))
    delivery = Delivery.objects.get()
    assert (delivery.webhook, delivery.status) == (hook, "delivered")
    do_redeliver(delivery, Actor.system("tests"))
    _rounds_until(lambda: receiver.received(2))
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("delivered", 2)
    assert _delivery_ids(receiver) == [str(event.id)] * 2
    assert {r.headers["x-webhook-event"] for r in receiver.requests} == {"test"}
    assert not receiver.requests_to("/other") and not other.deliveries.exists()


@pytest.fixture
def workers(settings: Any) -> Iterator[dict[str, Any]]:
    settings.WEBHOOKS_ENABLED = True
    settings.WEBHOOKS_INTERVAL = 0.05
    started = start_enabled_workers()
    yield dict(started)
    for worker in started.values():
        worker.stop()


def test_the_workers_runner_starts_the_sender_that_delivers(
    receiver: Receiver, production: Environment, system: Actor, workers: dict[str, Any]
) -> None:
    assert list(workers) == ["webhooks"] and workers["webhooks"].is_alive()
    _hook(receiver)
    do_create_policy(production, "rate_limit", "api", LIMIT, system)
    wait_for(lambda: receiver.received(1))
    wait_for(lambda: Delivery.objects.get().status == "delivered")


def test_the_sender_serves_other_webhooks_while_one_receiver_hangs(
    receiver: Receiver, production: Environment, settings: Any
) -> None:
    settings.WEBHOOKS_TIMEOUT = 4.0
    settings.WEBHOOKS_RETRY_FOR = 60.0
    stuck = Receiver()
    stuck.start()
    stuck.hang()
    try:
        hanging = _hook(stuck, name="hangs")
        answering = _hook(receiver, name="answers")
        sender = WebhookSender(interval=0.05)
        sender.start()
        try:
            send_test(hanging)
            wait_for(lambda: stuck.received(1))  # a thread of the sender waits on it now
            started = time.monotonic()
            send_test(answering)
            wait_for(lambda: receiver.received(1), timeout=3.0)
            took = time.monotonic() - started
            send_test(answering)
            wait_for(lambda: receiver.received(2), timeout=3.0)
        finally:
            stuck.stop()  # the hanging send ends now, so the sender stops soon
            sender.stop()
        assert took < 2.0  # the timeout is 4 s: the answering webhook did not wait for it
        assert len(stuck.requests) == 1  # a webhook is never in two threads at once
    finally:
        stuck.stop()


def test_the_sender_hands_out_webhooks_in_turn(production: Environment, settings: Any) -> None:
    hooks = [
        Webhook.objects.create(environment="production", name=f"h{n}", url="http://127.0.0.1:9/")
        for n in range(12)
    ]
    for hook in hooks:
        send_test(hook)
    sender = WebhookSender()  # not started: its dispatch is called here
    ids = [hook.pk for hook in hooks]
    sender._last_handed = ids[5]
    sender._in_flight = set(ids[8:10])  # two still being served

    assert sender.dispatch() == 6  # the 8 threads: 2 busy, 6 handed out

    sender._pool.shutdown(wait=True)
    served = Delivery.objects.filter(attempts__gt=0).values_list("webhook_id", flat=True)
    assert sorted(served) == sorted([*ids[6:8], *ids[10:12], *ids[0:2]])


@pytest.mark.parametrize("payload_format", ["json", "slack"])
def test_every_event_type_arrives_signed_verifiable_and_said_in_a_sentence(
    receiver: Receiver, production: Environment, payload_format: str
) -> None:
    _hook(receiver, secret="s3cret", payload_format=payload_format)
    data = {"name": "payments", "kind": "breaker", "actor": "alice", "summary": "it happened"}
    with transaction.atomic():
        for type in EVENT_TYPES:
            emit("production", type, {**data, "type_sent": type})

    _rounds_until(lambda: receiver.received(len(EVENT_TYPES)))

    assert _delivery_ids(receiver) == _event_ids()  # in order, each once
    for request, type in zip(receiver.requests, EVENT_TYPES, strict=True):
        assert verify("s3cret", request.body, request.headers["x-signature"], now=int(time.time()))
        body = json.loads(request.body)
        if payload_format == "json":
            assert (body["type"], body["data"]["type_sent"]) == (type, type)
        else:
            assert body["text"] != f"{type} in production"  # a sentence of its own
            assert "production" in body["text"] and body["blocks"]
