"""Caches: decorated functions (sync and async) with invalidate, and the Cache itself."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, assert_type

from controlplane.client import CachedFunction, Client, cached
from controlplane.client.cache import Cache, JsonSerializer


def prices(client: Client) -> CachedFunction[[str], int]:
    @client.cached("prices", ttl=30, stale_ttl="10s", local_size=1000, serializer="json")
    def price(sku: str) -> int:
        return len(sku)

    assert_type(price("ABC-1"), int)
    price.invalidate("ABC-1")
    return price


async def aprices(client: Client) -> int:
    @client.cached(
        "quotes",
        key=lambda sku, currency: sku,
        ttl=timedelta(seconds=5),
        enabled=True,
        generation=0,
        lock_timeout=2.0,
        serializer=JsonSerializer(),
    )
    async def quote(sku: str, currency: str = "EUR") -> int:
        return len(sku + currency)

    value = await quote("ABC-1", currency="USD")
    assert_type(value, int)
    quote.invalidate("ABC-1")
    await quote.ainvalidate("ABC-1", currency="USD")
    return value


def pickled(client: Client) -> Cache:
    return client.cache("sessions", ttl=60, serializer="pickle", stale=5)


def by_hand(client: Client) -> object:
    cache = client.cache("pages", ttl=60)
    cache.set("home", {"title": "Home"})
    page: Any = cache.get("home", default=None)
    cache.delete("home")
    stats: dict[str, int] = cache.stats()
    print(stats, cache.local_entries)
    cache.clear_local()

    @cache
    def render(path: str) -> str:
        return path

    assert_type(render("/"), str)
    render.invalidate("/")
    return page


async def aby_hand(client: Client) -> None:
    cache = client.cache("pages")
    await cache.aset("home", [1, 2])
    print(await cache.aget("home"))
    await cache.adelete("home")


@cached("catalogue", ttl=300)
def catalogue(category: str, *, page: int = 1) -> list[str]:
    return [category] * page


@cached("catalogue")
async def acatalogue(category: str) -> list[str]:
    return [category]


async def use_default_client() -> list[str]:
    assert_type(catalogue("shoes", page=2), list[str])
    catalogue.invalidate("shoes", page=2)
    await acatalogue.ainvalidate("shoes")
    return await acatalogue("shoes")
