"""Errors inside the client are logged once per cause and window, and every one counted."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY

from controlplane.client import Client, limiter
from controlplane.client.error_log import ErrorLog
from tests.conftest import wait_for

INTERNAL_ERRORS = "controlplane_client_internal_errors_total"


def internal_errors(component: str) -> float:
    return REGISTRY.get_sample_value(INTERNAL_ERRORS, {"component": component}) or 0.0


class Bug(Exception):
    """A bug of the library, raised where a check reads Redis's reply."""


@pytest.fixture
def buggy_limiter(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(reply: object) -> limiter.Decision:
        raise Bug("cannot read the reply")

    monkeypatch.setattr(limiter, "_redis_decision", broken)


def client_lines(caplog: pytest.LogCaptureFixture, module: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "controlplane.client" and r.module == module]


def test_a_thousand_failing_checks_log_one_traceback_and_count_them_all(
    client_factory: Callable[..., Client], buggy_limiter: None, caplog: pytest.LogCaptureFixture
) -> None:
    checks = client_factory().limiter("api", limit=1_000_000, period=1, on_redis_error="local")
    before = internal_errors("rate_limit")
    with caplog.at_level(logging.DEBUG, logger="controlplane.client"):
        decisions = [checks.hit(f"user:{n % 10}") for n in range(1_000)]
    assert {d.source for d in decisions} == {"local"}  # the policy's on_redis_error
    lines = client_lines(caplog, "limiter")
    assert len(lines) == 1
    assert lines[0].exc_info is not None and lines[0].exc_info[0] is Bug
    assert internal_errors("rate_limit") - before == 1_000


async def test_a_thousand_failing_async_checks_log_one_traceback(
    client_factory: Callable[..., Client], buggy_limiter: None, caplog: pytest.LogCaptureFixture
) -> None:
    checks = client_factory().limiter("api", limit=1_000_000, period=1, on_redis_error="allow")
    with caplog.at_level(logging.DEBUG, logger="controlplane.client"):
        for n in range(1_000):
            assert (await checks.ahit(f"user:{n}")).source == "allow"
    assert len(client_lines(caplog, "limiter")) == 1


def test_the_next_line_after_the_window_counts_the_repeats(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = ErrorLog(logging.getLogger("controlplane.client"), window=0.2)
    with caplog.at_level(logging.DEBUG, logger="controlplane.client"):
        for _ in range(5):
            try:
                raise Bug("again")
            except Bug:
                log.exception("Component %s failed", "x")
        assert len(caplog.records) == 1

        def log_again() -> bool:
            try:
                raise Bug("again")
            except Bug:
                return log.exception("Component %s failed", "x")

        wait_for(log_again)
    first, second = (record.getMessage() for record in caplog.records)
    assert first == "Component x failed"
    repeats = re.fullmatch(
        r"Component x failed \((\d+) more since this was logged 0 s ago\)", second
    )
    assert repeats is not None and int(repeats[1]) >= 4
    assert log.count == len(caplog.records) + int(repeats[1])
    assert all(record.module == "test_error_logging" for record in caplog.records)


def test_each_cause_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    log = ErrorLog(logging.getLogger("controlplane.client"))
    with caplog.at_level(logging.DEBUG, logger="controlplane.client"):
        for _ in range(100):
            for error in (Bug("a"), ValueError("b")):
                log.log(logging.WARNING, "Reading failed (%s)", error, exc=error)
            log.log(logging.WARNING, "Writing failed")
    assert sorted(r.getMessage() for r in caplog.records) == [
        "Reading failed (a)",
        "Reading failed (b)",
        "Writing failed",
    ]
    assert log.count == 300


def test_a_url_redis_py_cannot_use_is_logged_once_and_retried_slowly(
    client_factory: Callable[..., Client], caplog: pytest.LogCaptureFixture
) -> None:
    # Not a RedisError: redis-py fails to build the TLS context with a TypeError.
    url = "rediss://127.0.0.1:6379/0?ssl_min_version=unusable"
    before = internal_errors("report") + internal_errors("client")
    with caplog.at_level(logging.DEBUG, logger="controlplane.client"):
        client = client_factory(redis_url=url, start_timeout=1, report_interval=0.05).start()
        limiter = client.limiter("api", on_redis_error="allow")
        for _ in range(100):
            assert limiter.hit("u").source == "allow"
        threading.Event().wait(2.0)  # two seconds of running, whatever it does
    lines = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert [line.getMessage() for line in lines] == [
        f"Cannot connect with the Redis URL {url}: TypeError: 'str' object cannot be "
        "interpreted as an integer. Running on the last known policies (or the code "
        "defaults) until it answers."
    ]
    assert client.health.down and client.health.cause == "url"
    # Neither the reporter nor the follower retries on its own: no internal error either.
    assert internal_errors("report") + internal_errors("client") == before


@pytest.mark.django_db(transaction=True)
def test_a_malformed_shared_breaker_state_is_logged_once_however_often_it_is_read(
    cp_client: Client, redis_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = cp_client.breaker("payments")
    redis_client.hset(cp_client.keys.breakers, "payments", b'{"schema": 1, "state": [')
    with caplog.at_level(logging.DEBUG, logger="controlplane.client"):
        for _ in range(5):
            cp_client.resync()
    lines = [r for r in caplog.records if "malformed shared breaker state" in r.getMessage()]
    assert len(lines) == 1
    assert breaker.state == "closed"  # garbage is no shared state, not an error
