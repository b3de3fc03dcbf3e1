"""The database unreachable for a while, with the app served by Daphne.

Pages and the API answer 503 and say so, probes tell the truth, services keep
enforcing their policies from Redis, nothing saved before is lost, and the app
answers again as soon as the database does, without a restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connections
from django.utils import timezone
from prometheus_client import REGISTRY

from controlplane.accounts.actions import do_create_token
from controlplane.accounts.actors import Actor
from controlplane.accounts.roles import Role
from controlplane.audit.models import AuditEntry
from controlplane.client import CircuitOpenError, Client
from controlplane.live.ingest import Ingestor
from controlplane.ops.outage import MESSAGE
from controlplane.policies.models import Environment, Policy
from controlplane.policies.overrides import do_set_override
from controlplane.policies.reconcile import Reconciler
from tests.conftest import wait_for
from tests.daphne import HOST, daphne_servers
from tests.faults.network import DatabaseLink
from tests.faults.web import BANNER_EDIT, WebSession, banner_form

pytestmark = pytest.mark.django_db(transaction=True)


class Records(logging.Handler):
    """Everything one logger emits, whatever its propagation."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def reconciler_log() -> Iterator[Records]:
    """What the reconciler and the ingest log."""
    loggers = [
        logging.getLogger(f"controlplane.{name}") for name in ("policies.reconcile", "live.ingest")
    ]
    handler = Records()
    for logger in loggers:
        logger.addHandler(handler)
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)


def _failures(operation: str) -> float:
    value = REGISTRY.get_sample_value(
        "controlplane_database_errors_total", {"operation": operation}
    )
    return value or 0.0


def _audit() -> list[tuple[Any, ...]]:
    return list(
        AuditEntry.objects.order_by("pk").values_list("pk", "action", "object_name", "reason")
    )


def test_database_outage_answers_503_keeps_services_running_and_loses_nothing(
    database_link: DatabaseLink,
    production: Environment,
    system: Actor,
    editor: User,
    client_factory: Callable[..., Client],
    set_policy: Callable[..., Policy],
    reconciler_log: Records,
    settings: Any,
) -> None:
    settings.ALLOWED_HOSTS = [HOST, "localhost"]
    set_policy("rate_limit", "api", algorithm="fixed_window", limit=3, period=60, key="global")
    set_policy("breaker", "payments")
    set_policy("config", "banner", value="first")
    _, token = do_create_token(
        "automation", Role.EDITOR, system, timezone.now() + timedelta(hours=1)
    )
    bearer = {"Authorization": f"Bearer {token}"}
    reconciler = Reconciler(interval=0.05, full_interval=0.5)
    ingestor = Ingestor(block_ms=100)
    try:
        with daphne_servers(1) as (port,):
            # Threads with connections start after the fork: SQLite must not cross it.
            reconciler.start()
            ingestor.start()
            do_set_override(production, "breaker", "payments", "forced_open", system, "down")
            service = client_factory().start()
            limiter = service.limiter("api", limit=1000)  # code defaults; the policy wins
            web = WebSession(port, editor)
            assert web.get(BANNER_EDIT).status == 200  # also sets the CSRF cookie
            saved = web.post(BANNER_EDIT, banner_form("second", 1, "before the outage"))
            assert saved.status == 302, saved.text[:500]
            wait_for(lambda: service.config.get("banner") == "second")
            before = _audit()
            connections.close_all()

            failures_before = _failures("reconcile")
            ingest_failures_before = _failures("ingest")
            database_link.cut()
            refused = []
            for path in ("/", "/e/production/config/banner/", "/e/production/live/", "/audit/"):
                refused.append(web.get(path))
            refused.append(web.post(BANNER_EDIT, banner_form("third", 2, "during the outage")))
            from_htmx = web.post(
                BANNER_EDIT, banner_form("third", 2, "during"), headers={"HX-Request": "true"}
            )
            for page in [*refused, from_htmx]:
                assert page.status == 503
                assert page.headers["Content-Type"].startswith("text/html")
                assert page.headers["Retry-After"] == "10"
                assert "<h1>Database unreachable</h1>" in page.text
                assert MESSAGE in page.text
                assert "Traceback" not in page.text and "OperationalError" not in page.text
            assert from_htmx.headers["HX-Refresh"] == "true"
            assert "HX-Refresh" not in refused[0].headers

            api_read = web.get("/api/v1/environments", headers=bearer)
            api_write = web.request(
                "PATCH",
                "/api/v1/environments/production/policies/config/banner",
                body='{"spec": {"value": "from the api"}}',
                headers={**bearer, "Content-Type": "application/json"},
            )
            for answer in (api_read, api_write):
                assert (answer.status, answer.headers["Content-Type"]) == (503, "application/json")
                assert answer.json() == {"detail": MESSAGE}

            ready = web.get("/readyz")
            assert ready.status == 503
            assert ready.json()["checks"]["database"] == "failing"
            assert web.get("/healthz").status == 200
            metrics = web.get("/metrics")
            assert metrics.status == 200
            assert 'controlplane_database_errors_total{operation="request"} 8.0' in metrics.text

            # Services keep enforcing what the control plane published.
            decisions = [limiter.hit() for _ in range(4)]
            assert [d.allowed for d in decisions] == [True, True, True, False]
            assert {d.source for d in decisions} == {"redis"}
            with pytest.raises(CircuitOpenError):
                service.breaker("payments")(lambda: None)()
            assert service.config.get("banner") == "second"
            wait_for(lambda: _failures("reconcile") >= failures_before + 3)
            wait_for(lambda: _failures("ingest") >= ingest_failures_before + 2, timeout=30)

            database_link.restore()
            restored_at = time.monotonic()
            wait_for(lambda: web.get("/").status == 200)
            assert web.get("/readyz").status == 200
            wait_for(lambda: reconciler.last_success > restored_at)
            assert reconciler.is_alive()
            processed = ingestor.processed  # the service's reports flow again
            wait_for(lambda: ingestor.processed > processed, timeout=30)
    finally:
        if reconciler.is_alive():
            reconciler.stop()
        if ingestor.is_alive():
            ingestor.stop()

    connections.close_all()
    banner = Policy.objects.get(environment=production, kind="config", name="banner")
    assert (banner.version, banner.spec["value"]) == (2, "second")
    assert _audit() == before
    assert before[-1][1:] == ("policy.update", "banner", "before the outage")
    # One warning for the whole outage, and no stack trace every interval.
    failures = [r.getMessage() for r in reconciler_log.records if r.levelno >= logging.WARNING]
    assert [m.split(" (")[0] for m in failures if m.startswith("Reconciler")] == [
        "Reconciler cannot reach the database"
    ]
    assert [m.split(" (")[0] for m in failures if m.startswith("Ingest")] == [
        "Ingest cannot reach the database"
    ]
    assert not any(r.exc_info for r in reconciler_log.records)
