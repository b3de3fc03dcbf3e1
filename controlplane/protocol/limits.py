"""Size and depth limits on everything parsed from outside: forms, API, import files, Redis.

One set of limits governs what can be stored, published and exported, so a value
that was accepted can always be read back. Checks are iterative and bounded by a
node budget: a YAML document whose aliases share one list many times over is
refused after ``MAX_JSON_NODES`` visits instead of being walked exponentially.
"""

from __future__ import annotations

import json
from typing import Any, Final, TypeGuard

MAX_JSON_DEPTH: Final = 32  # nesting of lists and objects in a value or schema
MAX_JSON_NODES: Final = 100_000  # values visited, shared references counted each time
MAX_DOCUMENT_BYTES: Final = 1024 * 1024  # one JSON/YAML text: a policy, a document, a value
MAX_IMPORT_BYTES: Final = 8 * 1024 * 1024  # a whole config-as-code file
MAX_PATTERN_LENGTH: Final = 1000  # a regular expression's source
MAX_PATTERN_SUBJECT: Final = 64 * 1024  # a string matched against a user's pattern
# Every integer on the wire lies within +-(2**53 - 1), the integers a double holds exactly:
# a reader in JavaScript (and the publish script's Lua numbers) would get larger ones wrong.
MAX_SAFE_INTEGER: Final = 2**53 - 1


class LimitExceeded(ValueError):
    """Input over one of the limits above; the message says which, in words."""


def check_shape(
    value: Any,
    *,
    what: str = "The value",
    max_depth: int = MAX_JSON_DEPTH,
    text: str | bytes | None = None,
) -> None:
    """Raise ``LimitExceeded`` if ``value`` nests deeper than ``max_depth`` or has
    more than ``MAX_JSON_NODES`` members (counting a shared member at each place).

    With ``text``, the JSON ``value`` was parsed from, a text that proves the value
    within the limits (``shape_within_limits``) spares the walk.
    """
    if not isinstance(value, list | tuple | dict):
        return
    if text is not None and shape_within_limits(text, max_depth):
        return
    # Only containers are queued; their members are counted as they are listed.
    pending: list[tuple[Any, int]] = [(value, 0)]
    visited = 1
    while pending:
        item, depth = pending.pop()
        if depth >= max_depth:
            raise LimitExceeded(f"{what} nests deeper than {max_depth} levels.")
        members = item.values() if isinstance(item, dict) else item
        visited += len(members)
        if visited > MAX_JSON_NODES:
            raise LimitExceeded(f"{what} has more than {MAX_JSON_NODES:,} members.")
        pending.extend(
            (member, depth + 1) for member in members if isinstance(member, list | tuple | dict)
        )


def shape_within_limits(text: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """Whether JSON ``text`` alone proves its value within ``check_shape``'s limits.

    Every value but the root follows a ``[``, ``,`` or ``:``, and every level of
    nesting opens with ``[`` or ``{``: counted in the text (inside strings too,
    so the counts are upper bounds), they spare walking a small document.
    """
    if isinstance(text, str):
        opened = text.count("[") + text.count("{")
        members = opened + text.count(",") + text.count(":")
    else:
        opened = text.count(b"[") + text.count(b"{")
        members = opened + text.count(b",") + text.count(b":")
    return opened < max_depth and members < MAX_JSON_NODES


def is_safe_integer(value: Any) -> TypeGuard[int]:
    """Whether ``value`` is a protocol integer: an ``int`` (not a bool) within the safe range."""
    return type(value) is int and -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER


def check_size(
    text: str | bytes, *, limit: int = MAX_DOCUMENT_BYTES, what: str = "The text"
) -> None:
    """Raise ``LimitExceeded`` if ``text`` is longer than ``limit`` bytes (UTF-8)."""
    # A str of n characters takes at least n bytes: count exactly only near the limit.
    size = len(text) if isinstance(text, bytes) or len(text) * 4 <= limit else _utf8_len(text)
    if size > limit:
        raise LimitExceeded(f"{what} is over {_size(limit)}.")


def loads_json(
    text: str | bytes,
    *,
    limit: int = MAX_DOCUMENT_BYTES,
    what: str = "The JSON",
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """Parse JSON ``text`` within the size, depth and member limits.

    Raises ``LimitExceeded`` for input over a limit and ``ValueError`` for text
    that is not JSON (``UnicodeDecodeError`` included).
    """
    check_size(text, limit=limit, what=what)
    try:
        value = json.loads(text)
    except RecursionError:
        raise LimitExceeded(f"{what} nests deeper than {max_depth} levels.") from None
    check_shape(value, what=what, max_depth=max_depth, text=text)
    return value


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _size(limit: int) -> str:
    if limit % (1024 * 1024) == 0:
        return f"{limit // (1024 * 1024)} MiB"
    if limit % 1024 == 0:
        return f"{limit // 1024} KiB"
    return f"{limit} bytes"
