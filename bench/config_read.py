"""Reading one config value: our client against django-constance's Redis backends."""

from __future__ import annotations

from bench.common import Row, per_call_us, wait_until
from bench.context import BenchContext
from controlplane.client import Client

NAME = "config read"


def run(ctx: BenchContext) -> list[Row]:
    ctx.publish("config", "checkout.max_items", {"value_type": "integer", "value": 50})
    client = Client(ctx.redis_url, environment=ctx.environment, service="bench").start()
    try:
        wait_until(lambda: client.config.get("checkout.max_items") == 50)
        get = client.config.get
        ours = per_call_us(lambda: get("checkout.max_items", 10), 200_000)
    finally:
        client.close()

    from constance import config, settings

    config.CHECKOUT_MAX_ITEMS = 50
    plain = per_call_us(lambda: config.CHECKOUT_MAX_ITEMS, 5_000)
    settings.BACKEND = "constance.backends.redisd.CachingRedisBackend"
    from constance import base

    caching = base.Config()
    caching.CHECKOUT_MAX_ITEMS  # noqa: B018 - fills its 60 s process cache
    cached = per_call_us(lambda: caching.CHECKOUT_MAX_ITEMS, 200_000)
    return [
        Row.of(NAME, "controlplane client", ours, "µs", "local snapshot, changes pushed"),
        Row.of(NAME, "django-constance RedisBackend", plain, "µs", "one GET per read"),
        Row.of(
            NAME,
            "django-constance CachingRedisBackend",
            cached,
            "µs",
            "60 s process cache: changes seen up to 60 s late",
        ),
    ]
