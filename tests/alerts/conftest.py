"""Live state for the alert tests, written through the ingest's own functions."""

from __future__ import annotations

import time
from typing import Any

import redis

from controlplane.live.ingest import process_entries
from controlplane.policies.models import Environment
from controlplane.protocol import reports
from controlplane.webhooks.models import Webhook
from tests.webhooks.conftest import allow_private_targets, receiver


def heartbeat(
    client: redis.Redis,
    environment: Environment,
    instance: str,
    *,
    revision: int = 0,
    at: float | None = None,
    interval: float = 5.0,
) -> None:
    """An instance's heartbeat document in the instances hash, as a client writes it."""
    document = {
        "service": "checkout",
        "host": "h",
        "pid": 1,
        "library_version": "0.1.0",
        "revision": revision,
        "connected": True,
        "at": time.time() if at is None else at,
        "heartbeat_interval": interval,
    }
    client.hset(environment.keys().instances, instance, reports.encode_data(document))


def report(environment: Environment, instance: str, policies: dict[str, Any], at: float) -> None:
    """One counters report of ``instance``, protocol-encoded, through the ingest."""
    entry = reports.encode_entry("counters", instance, "checkout", {"at": at, "policies": policies})
    process_entries(environment, [(f"{int(at * 1000)}-0", entry)])


def breaker_states(
    client: redis.Redis, environment: Environment, states: dict[str, str], at: float
) -> None:
    """Each instance (alive) reports breaker payments in its state, with some traffic."""
    for instance, state in states.items():
        heartbeat(client, environment, instance)
        failures = 0 if state == "closed" else 4
        report(
            environment,
            instance,
            {"breaker:payments": {"calls": 10, "failures": failures, "state": state}},
            at,
        )


def outbox_webhook(environment: Environment) -> Webhook:
    """A webhook that wants every event, so each emitted one is written to the outbox."""
    return Webhook.objects.create(
        environment=environment.name, name="outbox", url="http://127.0.0.1:9/"
    )


__all__ = ["allow_private_targets", "receiver"]
