"""A Content-Security-Policy header on every response (Django 5.2 has none built in),
and no NUL character past the door."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest

POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# Django's admin styles some elements inline.
ADMIN_POLICY = POLICY.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if "Content-Security-Policy" not in response:
            admin = request.path.startswith("/admin/")
            response["Content-Security-Policy"] = ADMIN_POLICY if admin else POLICY
        return response


class NullCharacterMiddleware:
    """Refuse a request with a NUL character in its path, query or form fields (400).

    No text of ours may hold one, and PostgreSQL refuses it in a query with an
    error that would otherwise be a 500 wherever a view looks a value up.
    Forms already refuse it field by field; this covers the path, the query
    string and the fields views read directly (a reason, say). The API is left
    to its own validation, which answers in its documented format.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info.startswith("/api/"):  # the API validates its own input (422)
            return self.get_response(request)
        where = None
        if "\x00" in request.path_info:
            where = "The address"
        else:
            fields = [("query parameter", request.GET)]
            if request.content_type in _FORMS:
                fields.append(("field", request.POST))
            where = next(
                (
                    f'The {label} "{name}"'.replace("\x00", "\\0")
                    for label, values in fields
                    for name, value in values.lists()
                    if "\x00" in name or any("\x00" in item for item in value)
                ),
                None,
            )
        if where is not None:
            return HttpResponseBadRequest(
                f"{where} holds a NUL character, which no value may hold. Nothing was changed.",
                content_type="text/plain",
            )
        return self.get_response(request)


_FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")
