"""Rate limits: the limiter itself, its decisions, and the decorators."""

from __future__ import annotations

from typing import assert_type

from controlplane.client import Client, RateLimitExceeded, rate_limited
from controlplane.client.limiter import Decision, RateLimiter


def api_limiter(client: Client) -> RateLimiter:
    return client.limiter(
        "api",
        algorithm="token_bucket",
        limit=100,
        period="1m",
        burst=20,
        key="user",
        custom_key="tenant",
        on_redis_error="local",
        mode="observe",
    )


def check(client: Client, user_id: int) -> bool:
    limiter = api_limiter(client)
    decision = limiter.hit(f"user:{user_id}")
    assert_type(decision, Decision)
    peeked = limiter.peek(f"user:{user_id}", cost=2)
    headers = (peeked.limit, peeked.remaining, peeked.reset_after, peeked.retry_after)
    print(headers, decision.source, decision.observed_rejection)
    return decision.allowed


async def acheck(client: Client) -> bool:
    limiter = api_limiter(client)
    first = await limiter.ahit("global")
    second = await limiter.apeek()
    return first.allowed and second.allowed


async def views(client: Client) -> None:
    @client.rate_limited("search", key=lambda query, page: query, limit=5, period=1)
    def search(query: str, page: int = 1) -> list[str]:
        return [query] * page

    @client.rate_limited("search")
    async def asearch(query: str) -> list[str]:
        return [query]

    assert_type(search("shoes", page=2), list[str])
    assert_type(await asearch("shoes"), list[str])


@rate_limited("login", key=lambda username: username, limit=10, period=60)
def login(username: str) -> bool:
    return bool(username)


@rate_limited("login")
async def alogin(username: str) -> bool:
    return bool(username)


async def logins() -> bool:
    assert_type(login("ann"), bool)
    return await alogin("bob")


def refused(error: RateLimitExceeded) -> float:
    name: str = error.name
    decision: Decision = error.decision
    print(name, decision.limit)
    return error.retry_after
