"""URLs and the WSGI application of the tiny Django project (tests/client/test_servers.py)."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, HttpResponse
from django.urls import path


def hello(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"hello from {os.getpid()}")


urlpatterns = [
    path("api/hello/", hello),
    path("login/", hello),
    path("ready/", hello),
]

application = get_wsgi_application()
