"""Scale-out: two Daphne processes sharing the channels-redis layer behave as one.

An override made through one process shows on a websocket connected to the
other: the override is posted over HTTP to process A, its announcement goes
through the channel layer in Redis, and process B pushes the re-rendered row
to its viewer.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import socket
import struct
import time
from collections.abc import Iterator
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlencode

import pytest
from channels.layers import channel_layers
from django.contrib.auth.models import User
from django.test import Client

from controlplane.accounts.actors import Actor
from controlplane.policies.actions import do_create_policy
from controlplane.policies.models import Environment
from tests.daphne import daphne_servers

pytestmark = pytest.mark.django_db(transaction=True)

HOST = "127.0.0.1"
WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _layers(redis_url: str, key_prefix: str) -> dict[str, Any]:
    """The channel layer every process of the test uses: the test's Redis and key prefix."""
    return {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [redis_url], "prefix": f"{key_prefix}:asgi"},
        }
    }


@pytest.fixture(params=["configured", "own-tcp-server"])
def redis_url(request: pytest.FixtureRequest, settings: Any) -> str:
    """The suite's Redis (often a unix socket), or a server of the test's own on a TCP port."""
    if request.param == "own-tcp-server":
        request.getfixturevalue("disposable_redis")
    url: str = settings.REDIS_URL
    return url


@pytest.fixture
def two_servers(
    transactional_db: None, settings: Any, key_prefix: str, redis_url: str
) -> Iterator[list[int]]:
    """Two Daphne processes on loopback ports, same database, same Redis, same channel layer."""
    layers = _layers(redis_url, key_prefix)
    settings.CHANNEL_LAYERS = layers
    settings.ALLOWED_HOSTS = [HOST, "localhost"]
    channel_layers.backends.clear()
    with daphne_servers(2, CHANNEL_LAYERS=layers) as ports:
        yield ports


def _session_cookie(user: User) -> str:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


class Websocket:
    """Just enough of an RFC 6455 client to read a server's text messages."""

    def __init__(self, port: int, path: str, cookie: str) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=10)
        self.buffer = b""
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nOrigin: http://{HOST}:{port}\r\n"
                f"Cookie: {cookie}\r\n\r\n"
            ).encode()
        )
        head = self._read_until(b"\r\n\r\n", time.monotonic() + 10).decode("latin-1")
        status, *header_lines = head.split("\r\n")
        assert status.startswith("HTTP/1.1 101"), f"handshake refused: {status}"
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines if line)
        }
        expected = base64.b64encode(hashlib.sha1((key + WEBSOCKET_GUID).encode()).digest())
        assert headers.get("sec-websocket-accept") == expected.decode()

    def close(self) -> None:
        self.sock.close()

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("nothing received before the deadline")
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def _read_until(self, marker: bytes, deadline: float) -> bytes:
        while marker not in self.buffer:
            self._fill(deadline)
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def _read_exactly(self, size: int, deadline: float) -> bytes:
        while len(self.buffer) < size:
            self._fill(deadline)
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def receive(self, deadline: float) -> str:
        """The next text message (fragments joined); fails on close or at ``deadline``."""
        parts: list[bytes] = []
        while True:
            first, second = self._read_exactly(2, deadline)
            opcode, length = first & 0x0F, second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", self._read_exactly(2, deadline))
            elif length == 127:
                (length,) = struct.unpack("!Q", self._read_exactly(8, deadline))
            payload = self._read_exactly(length, deadline)  # servers never mask
            if opcode == 0x8:
                raise ConnectionError(f"websocket closed: {payload!r}")
            if opcode in (0x0, 0x1):
                parts.append(payload)
                if first & 0x80:
                    return b"".join(parts).decode()
            # ping/pong: nothing to do for a reader this short-lived


def _csrf_token(port: int, cookie: str) -> str:
    connection = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        connection.request("GET", "/e/production/live/", headers={"Cookie": cookie})
        response = connection.getresponse()
        response.read()
        assert response.status == 200
        jar: SimpleCookie = SimpleCookie()
        for header in response.headers.get_all("Set-Cookie") or []:
            jar.load(header)
        return jar["csrftoken"].value
    finally:
        connection.close()


def _post_override(port: int, cookie: str, fields: dict[str, str]) -> int:
    token = _csrf_token(port, cookie)
    connection = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        connection.request(
            "POST",
            "/e/production/override/",
            body=urlencode(fields),
            headers={
                "Cookie": f"{cookie}; csrftoken={token}",
                "X-CSRFToken": token,
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_override_through_one_process_reaches_a_viewer_of_the_other(
    two_servers: list[int],
    production: Environment,
    system: Actor,
    viewer: User,
    operator: User,
) -> None:
    port_a, port_b = two_servers
    assert port_a != port_b
    do_create_policy(production, "breaker", "payments", {}, system)
    websocket = Websocket(port_b, "/ws/live/production/", _session_cookie(viewer))
    try:
        status = _post_override(
            port_a,
            _session_cookie(operator),
            {
                "kind": "breaker",
                "name": "payments",
                "action": "trip",
                "reason": "scale-out test",
            },
        )
        assert status == 302

        deadline = time.monotonic() + 10
        while True:
            html = websocket.receive(deadline)
            if 'id="live-breaker-payments"' in html and "forced open" in html:
                break
        row = html.split('id="live-breaker-payments"', 1)[1].split("</tr>", 1)[0]
        assert "forced open by olga" in row
    finally:
        websocket.close()
