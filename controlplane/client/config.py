"""Typed config values read from the local snapshot: a dict lookup, no Redis round trip."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, overload

from controlplane.protocol.schema import CONFIG, InvalidValue, check_config_value

if TYPE_CHECKING:
    from controlplane.client.client import Client

logger = logging.getLogger("controlplane.client")

ChangeCallback = Callable[[str, Any], None]  # (key, new value or the default)
T = TypeVar("T")


class ConfigView:
    def __init__(self, client: Client) -> None:
        self._client = client
        self._defaults: dict[str, Any] = {}
        self._callbacks: dict[str, list[ChangeCallback]] = {}
        self._last: dict[str, Any] = {}

    @overload
    def get(self, key: str, default: None = None) -> object: ...

    @overload
    def get(self, key: str, default: T) -> T: ...

    def get(self, key: str, default: Any = None) -> Any:
        """Return the published value of ``key``, or ``default`` when it has none.

        Typed as the default (``get("max_items", 10)`` is an ``int``): give a default
        of the type the config declares. Without one the value is an ``object``.
        """
        spec = self._client.state.spec(CONFIG, key)
        if spec is None:
            if key not in self._defaults:
                self._defaults[key] = default
                self._client.reporter.discovered(CONFIG, key, {"value": _jsonable(default)})
            return default
        return spec["value"]

    def validate(self, key: str, value: Any) -> Any:
        """Return ``value`` converted and checked by the published rules of ``key``."""
        spec = self._client.state.spec(CONFIG, key)
        if spec is None:
            return value
        try:
            return check_config_value(spec, value)
        except InvalidValue as exc:
            raise ValueError(f"{key}: {exc}") from None

    def on_change(self, key: str, callback: ChangeCallback) -> None:
        """Call ``callback(key, value)`` on the follower thread whenever ``key`` changes."""
        if key not in self._callbacks:
            self._last[key] = self.get(key, self._defaults.get(key))
            self._client.watch(CONFIG, key, self._changed)
        self._callbacks.setdefault(key, []).append(callback)

    def _changed(self, kind: str, key: str) -> None:
        value = self.get(key, self._defaults.get(key))
        if key in self._last and self._last[key] == value:
            return
        self._last[key] = value
        for callback in self._callbacks.get(key, ()):
            try:
                callback(key, value)
            except Exception:
                logger.exception("Config change callback for %s failed", key)


def _jsonable(value: Any) -> Any:
    return (
        value if isinstance(value, str | int | float | bool | list | dict | None) else repr(value)
    )
