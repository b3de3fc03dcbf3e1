"""403, 404, 500 and 503 are pages of the product: styled, with a way back, the right status."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import path

from controlplane.ops.outage import MESSAGE
from controlplane.policies.models import Environment
from controlplane.urls import urlpatterns as product_urls

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]


def _broken(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("a bug of ours")


urlpatterns = [
    path("broken/", _broken),
    *product_urls,
]


@pytest.fixture(autouse=True)
def production_settings(settings: Any) -> None:
    settings.DEBUG = False


def test_404_keeps_the_navigation_of_a_signed_in_user(client: Client, viewer: User) -> None:
    client.force_login(viewer)

    response = client.get("/e/nowhere/live/")

    assert response.status_code == 404
    html = response.content.decode()
    assert 'data-error="not-found"' in html
    assert '<nav id="site-nav" aria-label="Main">' in html
    assert '<a href="/audit/">Audit log</a>' in html
    assert "<code>/e/nowhere/live/</code>" in html
    assert '<a class="button" href="/">Home</a>' in html
    assert 'href="/static/css/app.css"' in html


def test_404_signed_out_still_links_home(client: Client) -> None:
    response = client.get("/no-such-page/")

    assert response.status_code == 404
    html = response.content.decode()
    assert 'data-error="not-found"' in html
    assert 'class="brand" href="/"' in html
    assert "Audit log" not in html  # nothing offered that needs a login


def test_403_says_which_role_is_needed_and_links_back(
    client: Client, viewer: User, production: Environment
) -> None:
    client.force_login(viewer)

    response = client.get("/e/production/breaker/new/")

    assert response.status_code == 403
    html = response.content.decode()
    assert 'data-error="forbidden"' in html
    assert "This needs the editor role." in html
    assert "<strong>alice</strong> (viewer)" in html
    assert '<nav id="site-nav" aria-label="Main">' in html
    assert 'class="button" href="/"' in html


def test_a_form_without_its_csrf_token_gets_a_styled_403(viewer: User) -> None:
    client = Client(enforce_csrf_checks=True)

    response = client.post("/login/", {"username": "alice", "password": "password-alice"})

    assert response.status_code == 403
    html = response.content.decode()
    assert 'data-error="csrf-failure"' in html
    assert "Nothing was changed." in html
    assert "CSRF verification failed." in html  # Django's words, which people search for
    assert '<a href="/">Home</a>' in html


def test_500_is_styled_and_links_home() -> None:
    client = Client(raise_request_exception=False)

    response = client.get("/broken/")

    assert response.status_code == 500
    html = response.content.decode()
    assert 'data-error="server-error"' in html
    assert '<a href="/">Home</a>' in html
    assert 'href="/static/css/app.css"' in html
    assert "a bug of ours" not in html and "Traceback" not in html


def test_500_page_renders_without_a_request_or_the_database() -> None:
    with CaptureQueriesContext(connection) as queries:
        html = render_to_string("500.html")

    assert len(queries) == 0
    assert "Something went wrong on our side" in html


def test_503_page_links_home_and_needs_no_database() -> None:
    # Its status and Retry-After are tested under a real outage (tests/faults/
    # test_database_outage.py), whose metrics a request through the middleware
    # here would skew.
    with CaptureQueriesContext(connection) as queries:
        html = render_to_string("errors/database.html", {"message": MESSAGE})

    assert len(queries) == 0
    assert 'data-error="database-unreachable"' in html
    assert MESSAGE in html
    assert '<a href="/">Home</a>' in html
    assert 'href="/static/css/app.css"' in html
