"""A client started on a Redis it cannot use, or an environment Redis has never had, says
so once, loudly and specifically, counts it, and runs on its defaults without a word more
however many calls and resyncs follow."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from controlplane.client import Client
from controlplane.embedded_redis import RedisServer, free_port
from controlplane.policies.models import Policy
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

PROBLEMS = "controlplane_client_problems_total"


def problems(cause: str) -> float:
    return REGISTRY.get_sample_value(PROBLEMS, {"cause": cause}) or 0.0


def loud_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "controlplane.client" and record.levelno >= logging.WARNING
    ]


@pytest.fixture
def caplog_client(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger="controlplane.client"):
        yield caplog


def run_for_a_while(client: Client, calls: int = 200) -> None:
    """Calls through every kind of enforcer, and two seconds of background work."""
    limiter = client.limiter("api", limit=5, period=60, on_redis_error="allow")
    cache = client.cache("prices", ttl=60)
    breaker = client.breaker("payments")
    for n in range(calls):
        limiter.hit(f"user:{n % 3}")
        cache.set(f"sku-{n % 5}", n)
        assert cache.get(f"sku-{n % 5}", "missing") in (n, "missing")
        assert breaker.call(lambda: "passed") == "passed"
    threading.Event().wait(2.0)  # the follower, the reporter and the probe retry meanwhile


def test_a_wrong_port_is_one_line_naming_the_url_and_the_error(
    client_factory: Callable[..., Client], caplog_client: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    before = problems("unreachable")
    client = client_factory(redis_url=url, start_timeout=2, report_interval=0.05).start()
    run_for_a_while(client)
    assert loud_lines(caplog_client) == [
        f"Cannot reach Redis at {url}: Error 111 connecting to 127.0.0.1:{port}. Connection "
        "refused. Running on the last known policies (or the code defaults) until it answers."
    ]
    assert problems("unreachable") == before + 1
    assert client.health.down and not client.connected


def test_a_missing_ca_file_is_one_tls_line(
    client_factory: Callable[..., Client],
    disposable_redis: RedisServer,
    caplog_client: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    missing = tmp_path / "no-such-ca.pem"
    url = f"rediss://127.0.0.1:{disposable_redis.port}/0?ssl_ca_certs={missing}"
    before = problems("tls")
    client = client_factory(redis_url=url, start_timeout=2).start()
    run_for_a_while(client)
    [line] = loud_lines(caplog_client)
    assert line.startswith(f"TLS to Redis at {url}: a certificate file does not exist (")
    assert "check ssl_ca_certs, ssl_certfile and ssl_keyfile" in line
    assert problems("tls") == before + 1


def test_tls_to_a_plain_server_is_one_handshake_line(
    client_factory: Callable[..., Client],
    disposable_redis: RedisServer,
    caplog_client: pytest.LogCaptureFixture,
) -> None:
    url = f"rediss://127.0.0.1:{disposable_redis.port}/0"
    before = problems("tls")
    client = client_factory(redis_url=url, start_timeout=2).start()
    run_for_a_while(client, calls=20)
    [line] = loud_lines(caplog_client)
    assert line.startswith(f"TLS handshake with Redis at {url} failed (")
    assert "does the server speak TLS on that port" in line
    assert problems("tls") == before + 1


def test_an_unsupported_url_option_is_one_line_not_a_flood_of_tracebacks(
    client_factory: Callable[..., Client], caplog_client: pytest.LogCaptureFixture
) -> None:
    url = "redis://127.0.0.1:6379/0?ssl_ca_certs=/etc/ssl/ca.pem"
    before = problems("url")
    client = client_factory(redis_url=url, start_timeout=2, report_interval=0.01).start()
    run_for_a_while(client, calls=1000)
    assert loud_lines(caplog_client) == [
        f"The Redis URL {url} has an unsupported option 'ssl_ca_certs' (TLS options need a "
        "rediss:// URL). Running on the last known policies (or the code defaults) until it "
        "answers."
    ]
    assert not any(record.exc_info for record in caplog_client.records)
    assert problems("url") == before + 1


def test_a_refused_password_is_one_line_without_the_password(
    client_factory: Callable[..., Client],
    caplog_client: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "redis", password="right")
    server.start()
    try:
        url = f"redis://:wrong-secret@127.0.0.1:{server.port}/0"
        before = problems("auth")
        client = client_factory(redis_url=url, start_timeout=2).start()
        run_for_a_while(client, calls=20)
        lines = loud_lines(caplog_client)  # before the server stops: that would be news too
    finally:
        server.stop()
    [line] = lines
    assert line.startswith(
        f"Redis at redis://:***@127.0.0.1:{server.port}/0 refused to authenticate this client: "
    )
    assert "wrong-secret" not in line
    assert problems("auth") == before + 1


def test_an_environment_never_published_names_those_that_were(
    set_policy: Callable[..., Policy],
    client_factory: Callable[..., Client],
    caplog_client: pytest.LogCaptureFixture,
) -> None:
    set_policy("config", "banner", value="hello")  # publishes "production"
    before = problems("unpublished_environment")
    client = client_factory(environment="prodution").start()
    for _ in range(5):
        client.resync()
    client.limiter("api")  # not "unmanaged" on top: the environment line says it all
    assert loud_lines(caplog_client) == [
        f"Environment 'prodution' has never been published to {client.redis_url} (key prefix "
        f"{client.keys.prefix!r}); published environments: production. Running on code "
        "defaults."
    ]
    assert problems("unpublished_environment") == before + 1
    assert client.published is False


def test_an_unmanaged_limiter_is_one_line_with_its_code_defaults(
    set_policy: Callable[..., Policy],
    client_factory: Callable[..., Client],
    caplog_client: pytest.LogCaptureFixture,
) -> None:
    set_policy("rate_limit", "managed", limit=10, period=1)
    before = problems("unmanaged_policy")
    client = client_factory()
    client.limiter("api")  # created before the first snapshot: said once it is read
    client.start()
    client.limiter("managed")
    client.cache("prices", ttl=30)
    for _ in range(5):
        client.resync()
        client.limiter("api").hit("u")
    assert sorted(loud_lines(caplog_client)) == [
        "Cache 'prices' is not managed by the control plane in 'production': enforcing the "
        "code defaults ttl 30 s",
        "Rate limit 'api' is not managed by the control plane in 'production': enforcing the "
        "code defaults token_bucket 100/60 s keyed by user",
    ]
    assert problems("unmanaged_policy") == before + 2


def test_a_limiter_that_becomes_managed_is_no_longer_announced(
    set_policy: Callable[..., Policy],
    client_factory: Callable[..., Client],
    caplog_client: pytest.LogCaptureFixture,
) -> None:
    set_policy("config", "banner", value="hello")
    client = client_factory().start()
    client.limiter("api", limit=3, period=1, key="ip")
    set_policy("rate_limit", "api", limit=10, period=1)
    wait_for(lambda: client.limiter("api").settings.managed)
    for _ in range(3):
        client.resync()
    assert loud_lines(caplog_client) == [
        "Rate limit 'api' is not managed by the control plane in 'production': enforcing the "
        "code defaults token_bucket 3/1 s keyed by ip"
    ]


def test_each_lost_redis_cause_is_logged_once_per_window(
    set_policy: Callable[..., Policy],
    client_factory: Callable[..., Client],
    disposable_redis: RedisServer,
    caplog_client: pytest.LogCaptureFixture,
) -> None:
    set_policy("config", "banner", value="hello")
    client = client_factory().start()
    client.health.log_window = 1.0
    limiter = client.limiter("api", on_redis_error="allow")
    lost = "Lost Redis ("

    def outage() -> None:
        disposable_redis.stop()
        assert limiter.hit("u").source == "allow"
        assert client.health.down
        disposable_redis.start()
        wait_for(lambda: not client.health.down)

    outage()
    outage()  # within the window: quiet
    [line] = [line for line in loud_lines(caplog_client) if line.startswith(lost)]
    assert "Cannot reach Redis at" in line
    threading.Event().wait(1.1)  # the window (shortened for the test) has passed
    outage()
    lines = [line for line in loud_lines(caplog_client) if line.startswith(lost)]
    assert len(lines) == 2
    assert lines[1].endswith("(1 more since this was logged 1 s ago)")
