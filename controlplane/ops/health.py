"""Health, readiness and Prometheus endpoints: for load balancers and scrapers.

``/healthz`` says the process answers. ``/readyz`` checks the database, Redis
and that the reconciler is not behind; it names each check and nothing else.
``/metrics`` needs ``Authorization: Bearer $METRICS_TOKEN`` when that setting
is set, and otherwise answers only to addresses in ``METRICS_ALLOWED_IPS``
(loopback by default).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable

from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.module_loading import import_string
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from controlplane.redis_connection import redis_answers

logger = logging.getLogger(__name__)

# What the product adds, named in the settings: ops imports none of the apps.
for _collector in settings.METRICS_COLLECTORS:
    REGISTRY.register(import_string(_collector)())
READINESS_CHECKS: dict[str, Callable[[], bool]] = {
    name: import_string(path) for name, path in settings.READINESS_CHECKS.items()
}


@never_cache
@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok\n", content_type="text/plain")


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except DatabaseError:
        return False


@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    checks = {
        "database": _database_ok(),
        "redis": redis_answers(),
    }
    for name, check in READINESS_CHECKS.items():  # each needs both: not run without them
        checks[name] = checks["database"] and checks["redis"] and check()
    ready = all(checks.values())
    return JsonResponse(
        {
            "status": "ready" if ready else "not ready",
            "checks": {name: "ok" if ok else "failing" for name, ok in checks.items()},
        },
        status=200 if ready else 503,
    )


def _metrics_allowed(request: HttpRequest) -> bool:
    token: str = settings.METRICS_TOKEN
    if token:
        header = request.headers.get("Authorization", "")
        return hmac.compare_digest(header.encode(), f"Bearer {token}".encode())
    return request.META.get("REMOTE_ADDR", "") in settings.METRICS_ALLOWED_IPS


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if not _metrics_allowed(request):
        return HttpResponse("forbidden\n", status=403, content_type="text/plain")
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)


PROBES = {"/healthz": healthz, "/readyz": readyz, "/metrics": metrics}


class ProbeMiddleware:
    """Answer the probes first, before anything reads the ``Host`` header.

    Orchestrators and Prometheus reach each replica by its own address, which is
    not in ``ALLOWED_HOSTS``: checked as any request, the probes would answer 400.
    They reveal nothing that depends on the host, and ``/metrics`` has its own
    protection. Every other path goes through the whole middleware stack.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        probe = PROBES.get(request.path_info)
        if probe is not None:
            return probe(request)
        return self.get_response(request)
