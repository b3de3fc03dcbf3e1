"""A tiny Celery application run by a real ``celery worker`` in tests/client/test_servers.py.

The documented recipe: the client is created and configured at import (in the
main worker process too, which never starts it), started in each prefork child
by ``worker_process_init`` and closed by ``worker_process_shutdown``.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown

from controlplane.client import Client, configure

app = Celery("controlplane-tests", broker=os.environ["CP_BROKER_URL"])
app.conf.update(
    task_default_queue=os.environ["CP_QUEUE"],
    worker_enable_remote_control=False,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)

client = configure(
    Client(
        os.environ["CP_REDIS_URL"],
        environment="production",
        service="billing-worker",
        key_prefix=os.environ["CP_KEY_PREFIX"],
        heartbeat_interval=float(os.environ.get("CP_HEARTBEAT", "5")),
        start_timeout=5.0,
    )
)


def start_client(**kwargs: Any) -> None:
    client.start()


def close_client(**kwargs: Any) -> None:
    client.close()


def limited_job(outcomes_key: str) -> None:
    decision = client.limiter("jobs").hit()
    client.redis.rpush(outcomes_key, f"{os.getpid()}:{int(decision.allowed)}")


# Connected without decorator syntax: celery is untyped, and mypy --strict refuses
# untyped decorators. In a project of yours, @worker_process_init.connect reads better.
worker_process_init.connect(start_client, weak=False)
worker_process_shutdown.connect(close_client, weak=False)
app.task(name="controlplane_tests.limited_job")(limited_job)
