"""Done when (issue 16): a breaker opening across 20 client processes is ONE
``breaker.opened`` delivered to a real receiver, and its closing ONE ``breaker.closed``.

Twenty real processes run ``controlplane.client`` with one breaker, payments,
whose calls fail until the test heals the upstream (a file appears). They report
to the control plane's Redis; the ingest and the alert evaluator run as the
workers do; the delivery worker's ``deliver_due`` sends the outbox to a receiver
on loopback.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from controlplane.alerts.evaluator import AlertEvaluator
from controlplane.alerts.models import FleetBreaker
from controlplane.live.history import read_snapshot
from controlplane.live.ingest import Ingestor
from controlplane.policies.models import Environment
from controlplane.webhooks.delivery import deliver_due
from controlplane.webhooks.events import BREAKER_CLOSED, BREAKER_OPENED
from controlplane.webhooks.models import Event, Webhook
from controlplane.webhooks.signing import verify
from tests.conftest import wait_for
from tests.webhooks.receiver import Receiver

pytestmark = pytest.mark.django_db(transaction=True)

PROCESSES = 20
BOUND = 60.0  # seconds the whole story may take, start-up of the processes included

CHILD = """
import os, sys, time
from controlplane.client import Client

redis_url, prefix, healed, stop = sys.argv[1:5]
client = Client(
    redis_url, environment="production", service="checkout", key_prefix=prefix,
    heartbeat_interval=1.0, report_interval=0.25,
).start()
breaker = client.breaker(
    "payments", failure_rate_threshold=50, minimum_calls=2, window_size=4, open_for=1.0
)

def upstream():
    if not os.path.exists(healed):
        raise ConnectionError("payments upstream down")
    return "ok"

print("ready", flush=True)
deadline = time.monotonic() + 90
while not os.path.exists(stop) and time.monotonic() < deadline:
    try:
        breaker.call(upstream)
    except Exception:
        pass
    time.sleep(0.02)  # a service's traffic, not a wait: about 50 calls a second
client.close()
"""


def _events(receiver: Receiver, secret: str) -> list[dict[str, Any]]:
    bodies = []
    for request in receiver.requests_to("/hooks/fleet"):
        assert verify(secret, request.body, request.headers["x-signature"], now=int(time.time()))
        bodies.append(json.loads(request.body))
    return bodies


def _delivered(receiver: Receiver, secret: str, type: str) -> list[dict[str, Any]]:
    deliver_due()
    return [body for body in _events(receiver, secret) if body["type"] == type]


def _fleet(client: redis.Redis, environment: Environment) -> dict[str, int]:
    return read_snapshot(client, environment.keys()).breaker_states.get("payments", {})


def test_a_breaker_opening_across_20_processes_is_one_opened_event_and_one_closed(
    production: Environment,
    receiver: Receiver,
    redis_client: redis.Redis,
    settings: Any,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    secret = "fleet-secret"
    Webhook.objects.create(
        environment="production",
        name="ops",
        url=f"{receiver.url}/hooks/fleet",
        events=["breaker.*"],
        secret=secret,
    )
    healed, stop = tmp_path / "healed", tmp_path / "stop"
    ingestor = Ingestor(block_ms=100)
    evaluator = AlertEvaluator(interval=0.1)
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                CHILD,
                settings.REDIS_URL,
                settings.REDIS_KEY_PREFIX,
                str(healed),
                str(stop),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    ingestor.start()
    evaluator.start()
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"

        # Every process reports the breaker open (or probing) fleet-wide...
        def all_open() -> bool:
            states = _fleet(redis_client, production)
            return states.get("open", 0) + states.get("half_open", 0) == PROCESSES

        wait_for(all_open, timeout=BOUND - (time.monotonic() - started))
        # ... and the receiver gets one opening, told once.
        opened = wait_for(lambda: _delivered(receiver, secret, BREAKER_OPENED), timeout=10)
        assert len(opened) == 1
        data = opened[0]["data"]
        assert data["name"] == "payments" and data["state"] == "open"
        assert 1 <= data["instances_open"] <= data["instances_reporting"] <= PROCESSES
        assert len(data["instances"]) == data["instances_open"]

        healed.touch()  # the upstream answers again: probes succeed, every breaker closes
        wait_for(
            lambda: _fleet(redis_client, production).get("closed", 0) == PROCESSES,
            timeout=BOUND - (time.monotonic() - started),
        )
        closed = wait_for(lambda: _delivered(receiver, secret, BREAKER_CLOSED), timeout=10)
        assert len(closed) == 1 and closed[0]["data"]["instances_open"] == 0
        # More rounds of the evaluator and the sender change nothing.
        rounds = evaluator.rounds
        wait_for(lambda: evaluator.rounds >= rounds + 5, timeout=10)
        deliver_due()
    finally:
        stop.touch()
        evaluator.stop()
        ingestor.stop()
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    types = [body["type"] for body in _events(receiver, secret)]
    assert types == [BREAKER_OPENED, BREAKER_CLOSED]
    assert list(Event.objects.values_list("type", flat=True)) == types
    assert FleetBreaker.objects.get().state == "closed"
    assert time.monotonic() - started < BOUND
