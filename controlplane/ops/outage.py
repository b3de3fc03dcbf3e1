"""Outages of the database and Redis: said once, counted, never a 500.

``Outage`` is what a background loop (reconciler, ingest, websockets) keeps per
dependency it retries: one warning when it goes away, one line when it is back.

The database out of reach: a 503 that says so, instead of a 500.

The database is the source of truth, so while it cannot be reached no page can
be shown and no change can be saved. Every request that fails for that reason
gets a 503 with ``Retry-After``: a page saying the database is unreachable and
that nothing was changed, or a JSON error under ``/api/``. The error is logged
and counted (``controlplane_database_errors_total``). ``/healthz`` and
``/readyz`` need no database to answer. Services are not affected: their
clients read the policies from Redis.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string

from controlplane.ops.metrics import DATABASE_ERRORS

logger = logging.getLogger(__name__)

# What a lost, refused or broken database connection raises (a locked SQLite
# file and a deadlock too: all of them worth a retry, none a bug of ours).
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError)
MESSAGE = "The database cannot be reached. Nothing was changed: try again in a moment."
RETRY_AFTER_SECONDS = 10


class DatabaseUnavailableMiddleware:
    """Answer 503 when a view (or its template) cannot reach the database."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, DATABASE_UNAVAILABLE):
            return None
        DATABASE_ERRORS.labels("request").inc()
        logger.error(
            "Database unreachable; answered %s %s with 503: %s",
            request.method,
            request.path,
            " ".join(str(exception).split()),  # one line: libpq's messages span several
        )
        response: HttpResponse
        if request.path_info.startswith("/api/"):
            response = JsonResponse({"detail": MESSAGE}, status=503)
        else:
            # Rendered without the request: context processors would query the database.
            response = HttpResponse(
                render_to_string("errors/database.html", {"message": MESSAGE}), status=503
            )
            if request.headers.get("HX-Request"):
                # htmx swaps no 5xx answer: reload the page, which shows this one.
                response["HX-Refresh"] = "true"
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response


class Outage:
    """A dependency a background loop retries: every failure counted, logged once.

    ``failed`` counts and logs one warning when the outage starts; ``answered``
    logs one line when it ends. A loop retrying every interval thus leaves one
    warning per outage in the log, not a line (or a stack trace) per attempt.
    """

    def __init__(self, log: logging.Logger, counter: Any, failing: str, back: str) -> None:
        self.log = log
        self.counter = counter  # a Prometheus counter with its labels applied
        self.failing = failing
        self.back = back
        self.down = False

    def failed(self, exc: Exception) -> None:
        self.counter.inc()
        if not self.down:
            self.log.warning("%s (%s); will retry", self.failing, exc)
        self.down = True

    def answered(self) -> None:
        if self.down:
            self.log.info(self.back)
        self.down = False
