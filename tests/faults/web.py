"""A logged-in user's requests to a Daphne server, over plain HTTP with cookies."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlencode

from django.contrib.auth.models import User
from django.test import Client

from tests.daphne import HOST

# The form the tests post to change the config entry "banner".
BANNER_EDIT = "/e/production/config/banner/edit/"


def banner_form(value: str, version: int, reason: str) -> dict[str, str]:
    """Save ``value`` over version ``version`` of the banner, with ``reason``."""
    return {
        "value_type": "string",
        "value": value,
        "expected_version": str(version),
        "reason": reason,
        "action": "save",
    }


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


class WebSession:
    """One user's cookies (session, CSRF) and messages, against the server on ``port``."""

    def __init__(self, port: int, user: User | None = None) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}
        if user is not None:
            client = Client()
            client.force_login(user)
            self.cookies["sessionid"] = client.cookies["sessionid"].value

    def request(
        self, method: str, path: str, body: str | None = None, headers: dict[str, str] | None = None
    ) -> Answer:
        sent = dict(headers or {})
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        connection = http.client.HTTPConnection(HOST, self.port, timeout=60)
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            text = response.read().decode()
        finally:
            connection.close()
        jar: SimpleCookie = SimpleCookie()
        for header in response.headers.get_all("Set-Cookie") or []:
            jar.load(header)
        for name, morsel in jar.items():
            if morsel.value:
                self.cookies[name] = morsel.coded_value
            else:
                self.cookies.pop(name, None)
        return Answer(response.status, response.headers, text)

    def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        return self.request("GET", path, headers=headers)

    def post(
        self, path: str, fields: dict[str, str], headers: dict[str, str] | None = None
    ) -> Answer:
        """A form post with the CSRF token of an earlier page (fetch one with ``get`` first)."""
        token = self.cookies["csrftoken"]
        return self.request(
            "POST",
            path,
            body=urlencode(fields),
            headers={
                "X-CSRFToken": token,
                "Content-Type": "application/x-www-form-urlencoded",
                **(headers or {}),
            },
        )

    def follow(self, answer: Answer) -> Answer:
        """The page a redirect leads to (where the flash messages of a post show)."""
        assert answer.status == 302, (answer.status, answer.text[:500])
        return self.get(answer.headers["Location"])
