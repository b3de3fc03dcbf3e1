"""Keyword arguments of ``client.breaker``/``cache`` are the policy's field names.

The short spellings of earlier versions (``failure_rate``, ``window``, ``stale``...)
still work, with a ``DeprecationWarning`` naming the field to write instead.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping
from types import FrameType
from typing import Any, Final

# Old spelling -> the policy's field name.
BREAKER_RENAMED: Final = {
    "failure_rate": "failure_rate_threshold",
    "slow_call_rate": "slow_call_rate_threshold",
    "window": "window_type",
    "record": "record_exceptions",
    "ignore": "ignore_exceptions",
}
CACHE_RENAMED: Final = {"stale": "stale_ttl"}

_LIBRARY = os.path.dirname(os.path.abspath(__file__))


def policy_fields(kwargs: Mapping[str, Any], renamed: Mapping[str, str]) -> dict[str, Any]:
    """``kwargs`` under the policy's field names; an old spelling warns once per call site.

    A field given under both spellings is a ``ValueError`` naming both.
    """
    fields: dict[str, Any] = {}
    spelt: dict[str, str] = {}
    for key, value in kwargs.items():
        field = renamed.get(key, key)
        if field in fields:
            raise ValueError(f"{field}: given twice (as {spelt[field]} and {key})")
        spelt[field] = key
        if field != key:
            warnings.warn(
                f"{key}= is deprecated; write {field}= (the policy's field name)",
                DeprecationWarning,
                stacklevel=_caller_level(),
            )
        fields[field] = value
    return fields


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside the client library: the user's call."""
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_LIBRARY):
        frame = frame.f_back
        level += 1
    return level
