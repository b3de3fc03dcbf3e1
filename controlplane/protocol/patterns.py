"""Regular expressions written by users, run by RE2 in time linear in the subject.

Python's ``re`` backtracks: ``^(a+)+$`` against 37 ``a`` and a ``!`` holds the
GIL for minutes, and whoever can save a config entry, or write to Redis, could
freeze the control plane and every client that reads the document. RE2 refuses
what it cannot run in linear time (backreferences, look-around), so a pattern is
either refused when it is saved or evaluated fast everywhere.

The syntax is RE2's (https://github.com/google/re2/wiki/Syntax): Python's
without backreferences and look-around; ``\\d``, ``\\w`` and ``\\s`` are ASCII.
"""

from __future__ import annotations

import functools
from typing import Any

import re2

from controlplane.protocol.limits import MAX_PATTERN_LENGTH, MAX_PATTERN_SUBJECT

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # RE2 would print each refused pattern to stderr
_OPTIONS.max_mem = 8 << 20  # bytes per compiled pattern: refuses pathological sizes


class PatternError(ValueError):
    """A pattern RE2 cannot compile, or a pattern or subject over the length limits."""


@functools.lru_cache(maxsize=512)
def compile_pattern(source: str) -> Any:
    """Return ``source`` compiled by RE2, or raise ``PatternError`` saying why."""
    if len(source) > MAX_PATTERN_LENGTH:
        raise PatternError(f"a pattern is at most {MAX_PATTERN_LENGTH} characters long")
    try:
        return re2.compile(source, _OPTIONS)
    except re2.error as exc:
        raise PatternError(_reason(exc)) from None
    except (TypeError, ValueError) as exc:  # e.g. a NUL character in the source
        raise PatternError(str(exc)) from None


def fullmatch(source: str, subject: str) -> bool:
    """Whether the whole of ``subject`` matches ``source``."""
    return compile_pattern(source).fullmatch(_checked(subject)) is not None


def search(source: str, subject: str) -> bool:
    """Whether ``source`` matches somewhere in ``subject`` (JSON Schema's ``pattern``)."""
    return compile_pattern(source).search(_checked(subject)) is not None


def _checked(subject: str) -> str:
    if len(subject) > MAX_PATTERN_SUBJECT:
        raise PatternError(
            f"a value checked against a pattern is at most {MAX_PATTERN_SUBJECT:,} characters"
        )
    return subject


def _reason(exc: Exception) -> str:
    message = exc.args[0] if exc.args else str(exc)
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return f"RE2 cannot use it ({message}); backreferences and look-around are not supported"
