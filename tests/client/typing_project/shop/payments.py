"""Circuit breakers: decorator (sync and async), context manager, call and acall."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, assert_type

from controlplane.client import CircuitOpenError, Client, with_circuit_breaker
from controlplane.client.breaker import CircuitBreaker


class PaymentDeclined(Exception):
    pass


def payments_breaker(client: Client) -> CircuitBreaker:
    return client.breaker(
        "payments",
        failure_rate_threshold=50,
        slow_call_duration=timedelta(seconds=2),
        slow_call_rate_threshold=80.0,
        window_type="count",
        window_size=100,
        minimum_calls=10,
        open_for="30s",
        half_open_calls=5,
        record_exceptions=[TimeoutError, "requests.Timeout"],
        ignore_exceptions=PaymentDeclined,
        mode="enforce",
    )


def legacy_breaker(client: Client) -> CircuitBreaker:
    # The old spellings still type-check (and warn at run time).
    return client.breaker("legacy", failure_rate=50, window="time", record=[OSError])


def wire(client: Client) -> None:
    breaker = payments_breaker(client)

    @breaker
    def charge(order_id: int, amount: float = 0.0) -> str:
        return f"{order_id}:{amount}"

    assert_type(charge(1, amount=2.5), str)

    with breaker:
        pass
    assert_type(breaker.call(charge, 3), str)
    assert_type(breaker.call(charge, 3, amount=1.0), str)
    state: str = breaker.state
    settings: dict[str, Any] = breaker.settings
    epoch: int = breaker.epoch
    stats: dict[str, Any] = breaker.stats()
    breaker.reset()
    print(state, settings, epoch, stats)


async def awire(client: Client) -> bool:
    breaker = payments_breaker(client)

    async def fetch(order_id: int) -> bool:
        return order_id > 0

    @breaker
    async def acharge(order_id: int) -> bool:
        return order_id > 0

    assert_type(await acharge(1), bool)

    async with breaker:
        pass
    result = await breaker.acall(fetch, 7)
    assert_type(result, bool)
    return result


@with_circuit_breaker("refunds", failure_rate_threshold=25, minimum_calls=4)
def refund(order_id: int) -> str:
    return str(order_id)


@with_circuit_breaker("refunds")
async def arefund(order_id: int) -> str:
    return str(order_id)


async def refunds() -> str:
    assert_type(refund(1), str)
    return await arefund(2)


def rejected(error: CircuitOpenError) -> str:
    name: str = error.name
    state: str = error.state
    retry_after: float | None = error.retry_after
    return f"{name} {state} {retry_after}"
