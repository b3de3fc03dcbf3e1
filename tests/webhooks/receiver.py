"""A real HTTP receiver on loopback for the webhook tests: it records every request and
answers what the test asks (a status, a redirect, a hang), or is down altogether."""

from __future__ import annotations

import collections
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HANG = -1  # a Reply status meaning: never answer (until the receiver stops)


@dataclass(frozen=True)
class Reply:
    """What the receiver answers to one request."""

    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as the receiver saw it; header names are lower-case."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
        self._handle()

    def do_GET(self) -> None:  # noqa: N802
        self._handle()

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        receiver = self.server.receiver
        reply = receiver._record_and_pick(
            ReceivedRequest(
                method=self.command,
                path=self.path,
                headers={name.lower(): value for name, value in self.headers.items()},
                body=body,
                received_at=time.monotonic(),
            )
        )
        if reply.status == HANG:
            receiver._released.wait()
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(reply.body)
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Keep test output clean: the test reads ``requests`` instead."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: Receiver


class Receiver:
    """A threaded HTTP(S) server bound to 127.0.0.1 on a free port.

    ``reply(...)`` sets the default answer, ``queue(...)`` answers the next requests first
    (e.g. two 500s and then the default), ``hang()`` never answers, ``redirect(location)``
    answers 302, ``down()`` closes the port (connection refused) and ``up()`` reopens it.
    """

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None, host: str = "127.0.0.1"):
        self._ssl_context = ssl_context
        self._host = host
        self._lock = threading.Lock()
        self._default = Reply()
        self._queued: collections.deque[Reply] = collections.deque()
        self._released = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.requests: list[ReceivedRequest] = []
        self.port = _free_port()

    @property
    def url(self) -> str:
        """The receiver's base URL (no trailing slash); append a path to it."""
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self.port}"

    def start(self) -> None:
        server = _Server(("127.0.0.1", self.port), _Handler, bind_and_activate=False)
        server.allow_reuse_address = True
        server.server_bind()
        server.server_activate()
        if self._ssl_context is not None:
            server.socket = self._ssl_context.wrap_socket(server.socket, server_side=True)
        server.receiver = self
        self._released.clear()
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the port; hanging requests end without an answer."""
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    down = stop

    def up(self) -> None:
        """Serve again on the same port after ``down()``."""
        self.start()

    def reply(self, status: int = 200, body: bytes = b"ok", **headers: str) -> None:
        with self._lock:
            self._default = Reply(status, body, dict(headers))

    def queue(self, *replies: Reply | int) -> None:
        """Answer the next requests with these (a bare int is a status), then the default."""
        with self._lock:
            for reply in replies:
                self._queued.append(Reply(reply) if isinstance(reply, int) else reply)

    def hang(self) -> None:
        self.reply(HANG)

    def redirect(self, location: str, status: int = 302) -> None:
        self.reply(status, b"", Location=location)

    def requests_to(self, path: str) -> list[ReceivedRequest]:
        with self._lock:
            return [request for request in self.requests if request.path == path]

    def received(self, count: int = 1) -> list[ReceivedRequest] | None:
        """The requests so far once there are at least ``count`` (for ``wait_for``), else None."""
        with self._lock:
            return list(self.requests) if len(self.requests) >= count else None

    def _record_and_pick(self, request: ReceivedRequest) -> Reply:
        with self._lock:
            self.requests.append(request)
            return self._queued.popleft() if self._queued else self._default


def _free_port() -> int:
    """A port free on 127.0.0.1 now (the OS picks it; the receiver binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
