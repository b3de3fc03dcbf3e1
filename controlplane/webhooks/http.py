"""The only way a webhook leaves the product: one POST, guarded against server-side request
forgery.

A webhook URL is typed by a user, and the control plane sits inside the network: without a
guard, a webhook could make it call the cloud's metadata service (169.254.169.254), Redis on
loopback or an internal admin page. So the host is resolved once and every address checked;
the connection then goes to a checked address (no second lookup a rebinding DNS server could
answer differently), while the Host header, TLS SNI and certificate check use the name.
Redirects are never followed (a 302 to an internal address would undo the check), proxies
from the environment are not used, the whole exchange has one deadline and at most 1 KiB of
the answer is read.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

EXCERPT_BYTES = 1024
LOOKUP_TIMEOUT = 5.0  # seconds check_target waits for DNS when a webhook is saved
USER_AGENT = "controlplane-webhooks/1"
DEFAULT_PORTS = {"http": 80, "https": 443}
# Shared address space (RFC 6598): carrier-grade NAT, inside some clouds' networks.
CGNAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052's well-known prefix

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetRefused(Exception):
    """The URL may not be called: a scheme, credentials or an address we do not send to."""


class DeliveryError(Exception):
    """The request did not get an HTTP answer: DNS, connection, TLS, timeout or not HTTP."""


@dataclass(frozen=True)
class Response:
    """The receiver's answer: its status, the time to its headers, and its body's start."""

    status: int
    latency_ms: float
    body_excerpt: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def error(self) -> str | None:
        """Why this answer is a failed delivery (None for 2xx), in words for the page."""
        if self.ok:
            return None
        if 300 <= self.status < 400:
            return f"the receiver answered {self.status}, a redirect; redirects are not followed"
        return f"the receiver answered {self.status}"


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str  # the name (or address literal) as in the URL, for Host, SNI and certificate
    port: int
    path: str


def check_target(url: str) -> None:
    """Raise TargetRefused unless ``url`` may receive webhooks now (when a webhook is saved).

    ``post`` checks again at each delivery, since what a name resolves to may change.
    """
    target = _parse(url)
    try:
        _resolve_checked(target, timeout=LOOKUP_TIMEOUT)
    except DeliveryError as exc:
        raise TargetRefused(str(exc)) from None


def post(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    timeout: float,
    ssl_context: ssl.SSLContext | None = None,
) -> Response:
    """POST ``body`` to ``url`` within ``timeout`` seconds in all, and return the answer.

    Raises TargetRefused if the URL or any address of its host is refused, DeliveryError if
    no HTTP answer came in time. A 3xx is returned like any other status, never followed.
    """
    deadline = time.monotonic() + timeout
    target = _parse(url)
    addresses = _resolve_checked(target, timeout=timeout)
    if target.scheme == "https" and ssl_context is None:
        ssl_context = ssl.create_default_context()
    last_error: DeliveryError | None = None
    for address in addresses:
        connection = _PinnedConnection(target, address, deadline, timeout, ssl_context)
        try:
            return connection.exchange(body, {"User-Agent": USER_AGENT, **headers})
        except _Unreachable as exc:
            last_error = DeliveryError(str(exc))  # try the host's next address, if any
        finally:
            connection.close()
    assert last_error is not None  # _resolve_checked never returns no address
    raise last_error


def _parse(url: str) -> _Target:
    """Split ``url`` into what we connect to, refusing what we never send to."""
    if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in url.strip()):
        raise TargetRefused("url: must not contain spaces or control characters")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"url: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise TargetRefused(f"url: only http and https are allowed, not {scheme or 'none'!r}")
    if parts.username is not None or parts.password is not None:
        raise TargetRefused(
            "url: must not contain a user name or password (put a token in the path instead)"
        )
    if not parts.hostname:
        raise TargetRefused("url: has no host")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not path.isascii():
        raise TargetRefused("url: the path must be ASCII (percent-encode other characters)")
    return _Target(scheme, parts.hostname, port or DEFAULT_PORTS[scheme], path)


def _resolve_checked(target: _Target, *, timeout: float) -> list[tuple[str, int]]:
    """Every address of the host, each allowed, as socket addresses to connect to."""
    found = _lookup(target, timeout)
    addresses = list(dict.fromkeys(str(sockaddr[0]) for *_, sockaddr in found))
    if not addresses:
        raise DeliveryError(f"url: host {target.host!r} has no address")
    if not settings.WEBHOOKS_ALLOW_PRIVATE_TARGETS:
        for address in addresses:
            reason = refusal_reason(_ip(address))
            if reason:
                literal = address == target.host
                where = f"{address} is" if literal else f"{target.host} resolves to {address},"
                raise TargetRefused(
                    f"url: {where} {reason}; webhooks are only sent to public addresses"
                )
    return [(address, target.port) for address in addresses]


def _lookup(target: _Target, timeout: float) -> list[Any]:
    """getaddrinfo within ``timeout``: the resolver's own retries can take far longer.

    The look-up runs in a daemon thread; one that outlives the timeout is left to end on
    its own (getaddrinfo cannot be interrupted) and its answer is ignored.
    """
    answer: list[Any] = []
    failure: list[BaseException] = []

    def resolve() -> None:
        try:
            answer.extend(socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM))
        except (OSError, UnicodeError) as exc:
            failure.append(exc)

    thread = threading.Thread(target=resolve, name="webhook-dns", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise DeliveryError(f"url: looking up host {target.host!r} took over {timeout:g} s")
    if failure:
        raise DeliveryError(f"url: host {target.host!r} does not resolve ({failure[0]})")
    return answer


def refusal_reason(ip: IPAddress) -> str | None:
    """Why webhooks may not go to ``ip`` (None if they may): not a public address."""
    ip = _embedded_ipv4(ip) or ip
    checks = [
        (ip.is_loopback, "a loopback address"),
        (ip.is_unspecified, "the unspecified address"),
        (ip.is_link_local, "a link-local address (such as the cloud metadata service)"),
        (ip.is_multicast, "a multicast address"),
        (ip.version == 4 and ip in CGNAT, "a carrier-grade NAT address"),
        (ip.is_reserved, "a reserved address"),
        (ip.is_private, "a private address"),
        (not ip.is_global, "not a public address"),
    ]
    return next((reason for refused, reason in checks if refused), None)


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address reaches, if it is a way to an IPv4 one.

    ::ffff:127.0.0.1 reaches 127.0.0.1 directly; NAT64 (64:ff9b::/96, what DNS64 answers on
    IPv6-only networks) and 6to4 (2002::/16) lead to the IPv4 address inside them too.
    """
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.ipv4_mapped or ip.sixtofour


def _ip(address: str) -> IPAddress:
    return ipaddress.ip_address(address.partition("%")[0])  # drop an IPv6 scope (fe80::1%eth0)


class _Unreachable(Exception):
    """This address did not accept a connection; another address of the host may."""


class _PinnedConnection:
    """One exchange with one checked address, under one deadline for all of it.

    Socket timeouts bound each read; a timer closes the socket at the deadline, so a
    receiver trickling its answer byte by byte cannot hold a delivery longer.
    """

    def __init__(
        self,
        target: _Target,
        address: tuple[str, int],
        deadline: float,
        timeout: float,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self._target = target
        self._address = address
        self._timeout = timeout
        self._deadline = deadline
        self._ssl_context = ssl_context
        self._socket: socket.socket | None = None
        self._expired = threading.Event()
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def exchange(self, body: bytes, headers: Mapping[str, str]) -> Response:
        started = time.monotonic()
        self._timer = threading.Timer(max(self._deadline - started, 0.0), self._expire)
        self._timer.daemon = True
        self._timer.start()
        try:
            return self._exchange(body, headers, started)
        except (OSError, http.client.HTTPException) as exc:  # TLS and timeouts are OSErrors
            raise DeliveryError(self._describe(exc)) from None

    def _exchange(self, body: bytes, headers: Mapping[str, str], started: float) -> Response:
        client = _client_on(self._connect(), self._target)
        try:
            client.request("POST", self._target.path, body=body, headers=dict(headers))
            response = client.getresponse()
            latency_ms = (time.monotonic() - started) * 1000
            excerpt = response.read(EXCERPT_BYTES)  # the rest is never read
        finally:
            client.close()
        if self._expired.is_set():  # the timer closed the socket: what was read is cut short
            raise TimeoutError
        return Response(response.status, latency_ms, excerpt.decode("utf-8", "replace"))

    def _connect(self) -> socket.socket:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        try:
            sock = socket.create_connection(self._address, timeout=remaining)
        except OSError as exc:
            if isinstance(exc, TimeoutError) or self._expired.is_set():
                raise TimeoutError from None
            host, port = self._address
            raise _Unreachable(
                f"could not connect to {host} port {port}: {exc.strerror or exc}"
            ) from None
        self._hold(sock)
        if self._ssl_context is not None:
            sock = self._ssl_context.wrap_socket(sock, server_hostname=self._target.host)
            self._hold(sock)
        return sock

    def _hold(self, sock: socket.socket) -> None:
        """Keep ``sock`` as the one the deadline closes (closing it now if already past)."""
        with self._lock:
            self._socket = sock
            if self._expired.is_set():
                _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self._expired.set()
            if self._socket is not None:
                _shut(self._socket)

    def _describe(self, exc: Exception) -> str:
        """A failed exchange in words, naming what failed."""
        if self._expired.is_set() or isinstance(exc, TimeoutError):
            return f"no answer within the timeout ({self._timeout:g} s)"
        if isinstance(exc, ssl.SSLCertVerificationError):
            return f"TLS: the certificate was refused ({exc.verify_message})"
        if isinstance(exc, ssl.SSLError):
            return f"TLS: {exc.reason or exc}"
        if isinstance(exc, http.client.HTTPException):
            return f"not an HTTP answer ({type(exc).__name__}: {exc})"
        return f"connection failed: {getattr(exc, 'strerror', None) or exc}"

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None


def _client_on(sock: socket.socket, target: _Target) -> http.client.HTTPConnection:
    """An http.client connection that speaks over ``sock`` (already connected, maybe TLS)."""
    client = http.client.HTTPConnection(target.host, target.port)
    client.default_port = DEFAULT_PORTS[target.scheme]  # Host: example.com, not example.com:443
    client.sock = sock
    return client


def _shut(sock: socket.socket) -> None:
    """End any read or write on ``sock`` at once, from another thread."""
    # Already closed or never connected: nothing to interrupt.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)  # bypasses SSLSocket's, on the raw fd
