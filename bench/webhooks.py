"""Policy saves with webhooks: does a receiver that hangs slow a save down?

The same save the pages make (``do_update_policy``: commit, the outbox's event
and deliveries, the publish to Redis) is timed in three environments: one with no
webhook, one with 10 webhooks whose receivers answer at once (what the outbox's
rows cost), and one with 10 webhooks whose receivers never answer (a loopback
server that accepts connections and reads nothing), while the delivery worker
runs and sends (each send to those hangs for ``WEBHOOKS_TIMEOUT``). Saves take
turns between the environments, so load from elsewhere falls on all alike.
Bounded: 200 saves each, and the run stops at ``BUDGET`` seconds whatever it has.

Runs on SQLite by default, on PostgreSQL when ``DATABASE_URL`` names one.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import connection

from bench.common import Row, percentile
from controlplane.accounts.actors import Actor
from controlplane.policies.actions import do_create_environment, do_create_policy, do_update_policy
from controlplane.policies.models import Environment, Policy
from controlplane.webhooks.actions import do_create_webhook
from controlplane.webhooks.delivery import WebhookSender
from controlplane.webhooks.models import Delivery, Webhook

if TYPE_CHECKING:
    from bench.context import BenchContext

NAME = "policy save"
SAVES = 200  # per environment
WEBHOOKS = 10
BUDGET = 60.0  # seconds for all the saves, at most
NONE = "0 webhooks"
ANSWERING = f"{WEBHOOKS} webhooks, receivers answer"
HANGING = f"{WEBHOOKS} webhooks, receivers hang"
CONTENDERS = (NONE, ANSWERING, HANGING)
BASELINES = {f"{NAME} (p50)": NONE, f"{NAME} (p95)": NONE}


class HangingReceiver:
    """Accepts connections on loopback and never answers (nor reads) until closed."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self.server.getsockname()[1]
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> HangingReceiver:
        self._thread.start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                peer, _ = self.server.accept()
            except OSError:
                return  # closed
            self.held.append(peer)

    def close(self) -> None:
        self.server.close()
        for peer in self.held:
            with contextlib.suppress(OSError):
                peer.close()


class _Answer(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def _environment(name: str, actor: Actor) -> Policy:
    environment = Environment.objects.filter(name=name).first() or do_create_environment(
        name, actor
    )
    return Policy.objects.filter(environment=environment, name="api").first() or (
        do_create_policy(environment, "rate_limit", "api", {"limit": 100, "period": 60}, actor)
    )


def run(ctx: BenchContext) -> list[Row]:
    actor = Actor.system("bench")
    allowed = settings.WEBHOOKS_ALLOW_PRIVATE_TARGETS
    settings.WEBHOOKS_ALLOW_PRIVATE_TARGETS = True  # the receivers are on loopback
    hanging = HangingReceiver().start()
    answering = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    threading.Thread(target=answering.serve_forever, daemon=True).start()
    policies = {
        NONE: _environment("bench-no-webhooks", actor),
        ANSWERING: _environment("bench-webhooks-answer", actor),
        HANGING: _environment("bench-webhooks-hang", actor),
    }
    # A database kept from an earlier run (PostgreSQL) starts again without its webhooks.
    Webhook.objects.filter(environment__in=[p.environment.name for p in policies.values()]).delete()
    for contender, port in ((ANSWERING, answering.server_address[1]), (HANGING, hanging.port)):
        for index in range(WEBHOOKS):
            url = f"http://127.0.0.1:{port}/hook/{index}"
            do_create_webhook(policies[contender].environment.name, f"hook-{index}", url, actor)
    sender = WebhookSender(interval=0.05)
    sender.start()
    timings: dict[str, list[float]] = {contender: [] for contender in CONTENDERS}
    deadline = time.monotonic() + BUDGET
    try:
        for round_number in range(SAVES):
            if time.monotonic() > deadline:
                break
            shift = round_number % len(CONTENDERS)  # each goes first in turn
            for contender in CONTENDERS[shift:] + CONTENDERS[:shift]:
                spec = {"limit": 101 + round_number, "period": 60}
                started = time.perf_counter()
                policies[contender] = do_update_policy(policies[contender], spec, actor)
                timings[contender].append((time.perf_counter() - started) * 1000)
        outcomes = {
            contender: _deliveries(policies[contender].environment.name)
            for contender in (ANSWERING, HANGING)
        }
    finally:
        hanging.close()  # the hanging sends fail now, so the sender stops soon
        answering.shutdown()
        answering.server_close()
        sender.stop()
        settings.WEBHOOKS_ALLOW_PRIVATE_TARGETS = allowed
    database = connection.vendor
    notes = {
        NONE: f"the sender running; {database}",
        ANSWERING: f"{outcomes[ANSWERING]}; {database}",
        HANGING: f"{outcomes[HANGING]}, each send waits {settings.WEBHOOKS_TIMEOUT:g} s; "
        f"{database}",
    }
    rows = []
    for contender in CONTENDERS:
        samples = timings[contender]
        note = f"{len(samples)} saves; {notes[contender]}"
        rows.append(Row.of(f"{NAME} (p50)", contender, samples, "ms", note))
        p95 = percentile(samples, 0.95)
        rows.append(Row(f"{NAME} (p95)", contender, p95, "ms", note, samples=[p95]))
    return rows


def _deliveries(environment: str) -> str:
    deliveries = Delivery.objects.filter(webhook__environment=environment)
    delivered = deliveries.filter(status=Delivery.Status.DELIVERED).count()
    tried = deliveries.filter(attempts__gt=0).count()
    return f"{deliveries.count()} deliveries queued, {tried} sent, {delivered} delivered"
