"""The webhook sender over real sockets: what it refuses (SSRF), what it delivers, and how
it fails (redirect, hang, trickle, closed port, not HTTP, TLS)."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trustme

from controlplane.webhooks.http import (
    EXCERPT_BYTES,
    DeliveryError,
    Response,
    TargetRefused,
    check_target,
    post,
    refusal_reason,
)
from tests.webhooks.receiver import Receiver

HEADERS = {"Content-Type": "application/json", "X-Webhook-Event": "test"}
BODY = b'{"type": "test"}'
MARGIN = 1.5  # seconds a timed-out post may take beyond its timeout on a busy machine

RealGetaddrinfo = Callable[..., list[Any]]


def _deliver(url: str, **kwargs: Any) -> Response:
    return post(url, BODY, HEADERS, timeout=kwargs.pop("timeout", 5.0), **kwargs)


# --- what is refused ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:{port}/hook", "127.0.0.1 is a loopback address"),
        ("http://localhost:{port}/hook", "localhost resolves to .*, a loopback address"),
        ("http://[::ffff:127.0.0.1]:{port}/hook", "a loopback address"),
        ("http://2130706433:{port}/hook", "resolves to 127.0.0.1, a loopback address"),
        ("http://[::1]:{port}/hook", "::1 is a loopback address"),
        ("http://10.1.2.3/hook", "a private address"),
        ("http://192.168.1.1/hook", "a private address"),
        ("http://172.16.0.1/hook", "a private address"),
        ("http://[fd00::1]/hook", "a private address"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fe80::1]/hook", "link-local"),
        ("http://100.64.0.1/hook", "a carrier-grade NAT address"),
        ("http://0.0.0.0:{port}/hook", "the unspecified address"),
        ("http://224.0.0.1/hook", "a multicast address"),
        ("http://240.0.0.1/hook", "a reserved address"),
    ],
)
def test_non_public_targets_are_refused_before_any_connection(
    receiver: Receiver, settings: Any, url: str, reason: str
) -> None:
    settings.WEBHOOKS_ALLOW_PRIVATE_TARGETS = False
    url = url.format(port=receiver.port)
    with pytest.raises(TargetRefused, match=f"^url: .*{reason}"):
        check_target(url)
    with pytest.raises(TargetRefused, match="webhooks are only sent to public addresses"):
        _deliver(url)
    assert receiver.requests == []


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700::1111"])
def test_public_addresses_are_allowed(settings: Any, address: str) -> None:
    settings.WEBHOOKS_ALLOW_PRIVATE_TARGETS = False
    assert refusal_reason(ipaddress.ip_address(address)) is None
    host = f"[{address}]" if ":" in address else address
    check_target(f"https://{host}/hooks/controlplane")  # an address literal: no DNS needed


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("::ffff:10.1.2.3", "a private address"),
        ("64:ff9b::a01:203", "a private address"),  # NAT64 to 10.1.2.3
        ("64:ff9b::a9fe:a9fe", "a link-local address (such as the cloud metadata service)"),
        ("2002:7f00:1::", "a loopback address"),  # 6to4 of 127.0.0.1
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "a private address"),  # Teredo
        ("ff02::1", "a multicast address"),
        ("2001:db8::1", "a private address"),  # documentation
        ("::", "the unspecified address"),
    ],
)
def test_ipv6_ways_to_non_public_addresses_are_refused(address: str, reason: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) == reason


def test_nat64_to_a_public_address_is_allowed_for_ipv6_only_networks() -> None:
    assert refusal_reason(ipaddress.ip_address("64:ff9b::808:808")) is None  # 8.8.8.8


def test_a_name_is_refused_if_any_of_its_addresses_is_not_public(
    settings: Any, fake_dns: dict[str, list[str]]
) -> None:
    settings.WEBHOOKS_ALLOW_PRIVATE_TARGETS = False
    fake_dns["mixed.example"] = ["93.184.215.14", "10.0.0.7"]
    with pytest.raises(TargetRefused, match=r"mixed\.example resolves to 10\.0\.0\.7"):
        check_target("https://mixed.example/hook")


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/hook", "file:///etc/passwd", "gopher://example.com/", "javascript:1"],
)
def test_schemes_other_than_http_and_https_are_refused(url: str) -> None:
    with pytest.raises(TargetRefused, match="^url: only http and https are allowed"):
        check_target(url)
    with pytest.raises(TargetRefused, match="^url: only http and https are allowed"):
        _deliver(url)


def test_a_url_with_credentials_is_refused_and_nothing_is_sent(receiver: Receiver) -> None:
    url = f"http://user:secret@127.0.0.1:{receiver.port}/hook"
    with pytest.raises(TargetRefused, match="^url: must not contain a user name or password"):
        check_target(url)
    with pytest.raises(TargetRefused, match="^url: must not contain a user name or password"):
        _deliver(url)
    assert receiver.requests == []


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://example.com/a b", "spaces or control characters"),
        ("http://example.com/\r\nX-Injected: 1", "spaces or control characters"),
        ("http:///hook", "has no host"),
        ("http://example.com:99999/", "Port out of range"),
        ("http://example.com/ünïcode", "must be ASCII"),
    ],
)
def test_malformed_urls_are_refused_naming_the_field(url: str, message: str) -> None:
    with pytest.raises(TargetRefused, match=f"^url: .*{message}"):
        check_target(url)


def test_a_name_that_does_not_resolve_is_refused_on_save_and_fails_a_delivery(
    fake_dns: dict[str, list[str]],
) -> None:
    fake_dns["gone.example"] = []
    with pytest.raises(TargetRefused, match=r"^url: host 'gone\.example' does not resolve"):
        check_target("https://gone.example/hook")
    with pytest.raises(DeliveryError, match=r"^url: host 'gone\.example' does not resolve"):
        _deliver("https://gone.example/hook")


def test_a_slow_dns_lookup_counts_against_the_timeout(
    allow_private_targets: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    answered = threading.Event()
    real: RealGetaddrinfo = socket.getaddrinfo

    def slow_getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host == "slow.example":
            answered.wait(10)  # a resolver retrying an unreachable server
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow_getaddrinfo)
    started = time.monotonic()
    try:
        with pytest.raises(DeliveryError, match=r"^url: looking up host 'slow\.example' took"):
            _deliver("http://slow.example/hook", timeout=0.5)
    finally:
        answered.set()
    assert time.monotonic() - started < 0.5 + MARGIN


# --- delivering --------------------------------------------------------------------------


def test_with_private_targets_allowed_a_post_reaches_the_receiver(receiver: Receiver) -> None:
    receiver.reply(201, b"thanks")
    response = _deliver(f"{receiver.url}/hooks/in?team=ops#ignored")
    assert response.status == 201
    assert response.ok and response.error is None
    assert response.body_excerpt == "thanks"
    assert 0 < response.latency_ms < 5000
    [request] = receiver.requests
    assert (request.method, request.path, request.body) == ("POST", "/hooks/in?team=ops", BODY)
    assert request.headers["host"] == f"127.0.0.1:{receiver.port}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-webhook-event"] == "test"
    assert request.headers["content-length"] == str(len(BODY))
    assert request.headers["user-agent"].startswith("controlplane-webhooks/")


def test_a_name_is_resolved_once_and_its_host_header_kept(
    receiver: Receiver, count_lookups: dict[str, int]
) -> None:
    response = _deliver(f"http://localhost:{receiver.port}/hook")
    assert response.status == 200
    assert receiver.requests[0].headers["host"] == f"localhost:{receiver.port}"
    assert count_lookups["localhost"] == 1  # http.client did not look it up again


def test_the_connection_goes_to_the_checked_address_not_to_a_rebound_name(
    receiver: Receiver, fake_dns: dict[str, list[str]], count_lookups: dict[str, int]
) -> None:
    """A rebinding DNS server answers a checked address first and another one next."""
    fake_dns["rebind.example"] = ["127.0.0.1"]
    fake_dns_next = ["10.9.9.9"]

    def rebind(host: str) -> None:
        if host == "rebind.example":
            fake_dns["rebind.example"] = fake_dns_next

    count_lookups.on_lookup = rebind
    response = _deliver(f"http://rebind.example:{receiver.port}/hook")
    assert response.status == 200
    assert receiver.requests[0].headers["host"] == f"rebind.example:{receiver.port}"
    assert count_lookups["rebind.example"] == 1


def test_the_next_address_is_tried_when_one_refuses_the_connection(
    receiver: Receiver, fake_dns: dict[str, list[str]]
) -> None:
    # The receiver listens on 127.0.0.1 only: 127.0.0.2 refuses the connection.
    fake_dns["two.example"] = ["127.0.0.2", "127.0.0.1"]
    assert _deliver(f"http://two.example:{receiver.port}/hook").status == 200
    assert len(receiver.requests) == 1


def test_only_the_first_kibibyte_of_the_answer_is_read(receiver: Receiver) -> None:
    receiver.reply(500, b"e" * (EXCERPT_BYTES * 5))
    response = _deliver(f"{receiver.url}/hook")
    assert response.status == 500
    assert response.body_excerpt == "e" * EXCERPT_BYTES
    assert response.error == "the receiver answered 500"


def test_a_redirect_is_not_followed(receiver: Receiver) -> None:
    receiver.redirect(f"{receiver.url}/elsewhere")
    response = _deliver(f"{receiver.url}/hook")
    assert response.status == 302
    assert not response.ok
    assert response.error is not None and "302, a redirect" in response.error
    assert [request.path for request in receiver.requests] == ["/hook"]
    assert receiver.requests_to("/elsewhere") == []


def test_each_post_is_a_new_exchange_so_retries_see_the_receiver_as_it_is_now(
    receiver: Receiver,
) -> None:
    receiver.queue(500, 503)
    url = f"{receiver.url}/hook"
    assert [_deliver(url).status for _ in range(3)] == [500, 503, 200]
    receiver.down()
    with pytest.raises(DeliveryError, match="refused"):
        _deliver(url)
    receiver.up()
    assert _deliver(url).status == 200
    assert len(receiver.requests) == 4


# --- failing -----------------------------------------------------------------------------


def test_a_hanging_receiver_times_out_within_the_timeout(receiver: Receiver) -> None:
    receiver.hang()
    started = time.monotonic()
    with pytest.raises(DeliveryError, match=r"no answer within the timeout \(0\.5 s\)"):
        _deliver(f"{receiver.url}/hook", timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 0.5 + MARGIN
    assert len(receiver.requests) == 1


def test_a_receiver_trickling_its_answer_is_cut_at_the_total_timeout(
    allow_private_targets: None,
) -> None:
    """Each byte comes well within a socket timeout; the whole answer never would."""

    def trickle(connection: socket.socket, stop: threading.Event) -> None:
        connection.recv(65536)
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000:
            if stop.wait(0.05):
                return
            connection.sendall(bytes([byte]))

    with _raw_server(trickle) as port:
        started = time.monotonic()
        with pytest.raises(DeliveryError, match="no answer within the timeout"):
            _deliver(f"http://127.0.0.1:{port}/hook", timeout=0.6)
        assert time.monotonic() - started < 0.6 + MARGIN


def test_a_closed_port_is_a_delivery_error(receiver: Receiver) -> None:
    receiver.down()
    with pytest.raises(DeliveryError, match=rf"127\.0\.0\.1 port {receiver.port}: .*refused"):
        _deliver(f"{receiver.url}/hook")


def test_an_answer_that_is_not_http_is_a_delivery_error(allow_private_targets: None) -> None:
    def babble(connection: socket.socket, stop: threading.Event) -> None:
        connection.recv(65536)
        connection.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")

    with _raw_server(babble) as port, pytest.raises(DeliveryError, match="^not an HTTP answer"):
        _deliver(f"http://127.0.0.1:{port}/hook")


# --- HTTPS -------------------------------------------------------------------------------


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_receiver(allow_private_targets: None, ca: trustme.CA) -> Iterator[TlsReceiver]:
    """An HTTPS receiver for ``localhost`` whose certificate our test CA issued."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_context)
    names: list[str | None] = []
    server_context.sni_callback = lambda _socket, name, _context: names.append(name)
    server = TlsReceiver(ssl_context=server_context, host="localhost")
    server.server_names = names
    server.start()
    try:
        yield server
    finally:
        server.stop()


class TlsReceiver(Receiver):
    server_names: list[str | None]


def _trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def test_https_sends_the_name_for_sni_and_checks_the_certificate_against_it(
    tls_receiver: TlsReceiver, ca: trustme.CA
) -> None:
    response = _deliver(f"{tls_receiver.url}/hook", ssl_context=_trusting(ca))
    assert response.status == 200
    assert tls_receiver.server_names == ["localhost"]
    assert tls_receiver.requests[0].headers["host"] == f"localhost:{tls_receiver.port}"


def test_https_refuses_a_certificate_from_an_unknown_authority(
    tls_receiver: TlsReceiver,
) -> None:
    with pytest.raises(DeliveryError, match="^TLS: the certificate was refused"):
        _deliver(f"{tls_receiver.url}/hook")  # the system's authorities: not our test CA
    assert tls_receiver.requests == []


def test_https_refuses_a_certificate_for_another_name(
    allow_private_targets: None, ca: trustme.CA
) -> None:
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("other.example").configure_cert(server_context)
    server = Receiver(ssl_context=server_context, host="localhost")
    server.start()
    try:
        with pytest.raises(DeliveryError, match="^TLS: the certificate was refused.*mismatch"):
            _deliver(f"{server.url}/hook", ssl_context=_trusting(ca))
        assert server.requests == []
    finally:
        server.stop()


# --- helpers -----------------------------------------------------------------------------


@contextmanager
def _raw_server(serve: Callable[[socket.socket, threading.Event], None]) -> Iterator[int]:
    """A TCP server on 127.0.0.1 that runs ``serve`` on each connection; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            # OSError: the client went away, which is what the test wanted, usually.
            with connection, contextlib.suppress(OSError):
                serve(connection, stop)

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


class _Lookups(dict[str, int]):
    """How often each name was looked up; ``on_lookup`` runs after each look-up."""

    def __init__(self) -> None:
        super().__init__()
        self.on_lookup: Callable[[str], None] = lambda host: None


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Names the test resolves itself (DNS only: the connections stay real)."""
    names: dict[str, list[str]] = {}
    real: RealGetaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in names:
            return real(host, port, *args, **kwargs)
        if not names[host]:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [entry for address in names[host] for entry in real(address, port, *args, **kwargs)]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return names


@pytest.fixture
def count_lookups(monkeypatch: pytest.MonkeyPatch, fake_dns: dict[str, list[str]]) -> _Lookups:
    """Count look-ups of names (address literals are not counted: they need no DNS)."""
    lookups = _Lookups()
    inner: RealGetaddrinfo = socket.getaddrinfo  # fake_dns's, if the test uses it too

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        answer = inner(host, port, *args, **kwargs)
        if isinstance(host, str) and not _is_address(host):
            lookups[host] = lookups.get(host, 0) + 1
            lookups.on_lookup(host)
        return answer

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lookups


def _is_address(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True
