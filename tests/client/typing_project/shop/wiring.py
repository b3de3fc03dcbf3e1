"""Start-up: the client, its options, its lifecycle and the default client."""

from __future__ import annotations

from pathlib import Path
from typing import Any, assert_type

from prometheus_client import CollectorRegistry

from controlplane.client import Client, configure
from controlplane.client.metrics import ClientMetrics


def make_client(registry: CollectorRegistry, snapshots: Path) -> Client:
    client = Client(
        "redis://127.0.0.1:6379/0",
        "production",
        "shop",
        key_prefix="rcp",
        timeout=0.25,
        resync_interval=30.0,
        heartbeat_interval=5.0,
        report_interval=1.0,
        snapshot_path=snapshots / "policies.json",
        start_timeout=1.0,
        metrics=ClientMetrics(registry),
    )
    assert_type(client.start(), Client)
    assert_type(configure(client), Client)
    synced: bool = client.wait_synced(1.0)
    spec: dict[str, Any] | None = client.policy_spec("breaker", "payments")
    client.on_resync(lambda: None)
    client.watch("config", "checkout.max_items", lambda kind, name: None)
    client.request_resync()
    environments: list[str] = client.published_environments()
    print(environments, client.health)
    print(synced, spec, client.instance_id, client.connected, client.redis.ping())
    return client


def from_the_environment() -> Client:
    # CONTROLPLANE_REDIS_URL, CONTROLPLANE_ENVIRONMENT, CONTROLPLANE_SERVICE
    return Client()


def run_once() -> str:
    with Client(redis_url="redis://127.0.0.1:6379/0", environment="staging") as client:
        assert_type(client, Client)
        environment: str = client.environment
        service: str = client.service
    client.close()
    shared: ClientMetrics = ClientMetrics.shared()
    assert shared is not None
    return f"{environment}/{service}"


async def start_in_a_loop(client: Client) -> Client:
    return await client.astart()
