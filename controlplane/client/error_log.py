"""Errors inside the client: logged once per cause and window, every one counted.

An error that repeats on every call (a bug of ours on the hot path, a reporter
that cannot reach Redis) must not write a line, let alone a traceback, per
call. An :class:`ErrorLog` logs the first occurrence of a cause and counts the
repeats of the next ``window`` seconds without logging them; the first line
after the window says how many it left out. Every occurrence increments the
component's counter (``controlplane_client_internal_errors_total``).

A cause is the message (before its arguments are filled in) and the
exception's type: one per call site and kind of failure. Each enforcer has its
own ``ErrorLog``, so two limiters failing alike are logged once each.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import weakref
from typing import Any, Final

WINDOW: Final = 60.0  # seconds a cause stays quiet after it was logged
MAX_CAUSES: Final = 64  # causes remembered; past that all are forgotten at once


class ErrorLog:
    """Log each cause of error once per ``window`` seconds, with a count of the repeats."""

    def __init__(self, logger: logging.Logger, counter: Any = None, window: float = WINDOW):
        self.logger = logger
        self.counter = counter  # a Prometheus counter with its labels applied, or None
        self.window = window
        self.count = 0  # every error seen, logged or not
        self._lock = threading.Lock()
        # cause -> (when it was last logged, repeats since then that were not)
        self._causes: dict[tuple[str, type[BaseException] | None], tuple[float, int]] = {}
        _logs.add(self)

    def exception(self, message: str, *args: object) -> bool:
        """Log the exception being handled, with its traceback, if its cause is due."""
        exc = sys.exc_info()[1]
        return self._count(logging.ERROR, message, args, exc, traceback=True, stacklevel=3)

    def log(
        self,
        level: int,
        message: str,
        *args: object,
        exc: BaseException | None = None,
        traceback: bool = False,
    ) -> bool:
        """Count one error; log it unless its cause was logged within the window.

        Returns whether a line was written.
        """
        return self._count(level, message, args, exc, traceback, stacklevel=3)

    def _count(
        self,
        level: int,
        message: str,
        args: tuple[object, ...],
        exc: BaseException | None,
        traceback: bool,
        stacklevel: int,  # the line logged is the caller's of log() or exception()
    ) -> bool:
        if self.counter is not None:
            self.counter.inc()
        cause = (message, None if exc is None else type(exc))
        now = time.monotonic()
        with self._lock:
            self.count += 1
            logged_at, repeats = self._causes.get(cause, (-self.window, 0))
            if now - logged_at < self.window:
                self._causes[cause] = (logged_at, repeats + 1)
                return False
            if len(self._causes) >= MAX_CAUSES and cause not in self._causes:
                self._causes.clear()
            self._causes[cause] = (now, 0)
        if repeats:
            message += " (%d more since this was logged %.0f s ago)"
            args = (*args, repeats, now - logged_at)
        exc_info = (type(exc), exc, exc.__traceback__) if traceback and exc is not None else None
        self.logger.log(level, message, *args, exc_info=exc_info, stacklevel=stacklevel)
        return True


_logs: weakref.WeakSet[ErrorLog] = weakref.WeakSet()


def _new_locks_in_child() -> None:
    # A lock held by another thread at fork() would stay held in the child forever.
    for log in list(_logs):
        log._lock = threading.Lock()


os.register_at_fork(after_in_child=_new_locks_in_child)
