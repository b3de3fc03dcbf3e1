"""Runtime config: typed reads, change callbacks, validation."""

from __future__ import annotations

from typing import Any, assert_type

from controlplane.client import Client


def max_items(client: Client) -> int:
    value = client.config.get("checkout.max_items", 10)
    assert_type(value, int)
    banner = client.config.get("checkout.banner", default="")
    assert_type(banner, str)
    anything = client.config.get("checkout.flags")
    assert_type(anything, object)

    def resized(key: str, new_value: Any) -> None:
        print(key, new_value)

    client.config.on_change("checkout.max_items", resized)
    checked = client.config.validate("checkout.max_items", 12)
    print(checked)
    return value
