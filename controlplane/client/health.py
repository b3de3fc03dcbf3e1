"""One Redis health state per client, shared by every enforcer and background thread.

When a Redis call fails because Redis is unreachable or too slow (a refused or
timed-out connection, a TLS or authentication failure, a URL redis-py cannot
use), the client is marked *down*: every enforcer then decides without Redis at
once (a limiter by its ``on_redis_error``, a cache by calling the function, a
breaker locally), the reporter and the follower wait, and one background thread
probes Redis with a ``PING`` (the client's timeout), waiting twice as long after
each failure, with jitter, up to ``PROBE_MAX`` seconds. When the ping answers,
the client is *up* again and the listeners of :meth:`RedisHealth.on_up` are
called (the breakers re-share the transitions Redis missed, the follower
reconnects at once).

An error reply (``WRONGTYPE`` and the like) is about one key: it costs that call
only and marks nothing down.

Logs: one line when an outage begins, naming the cause (an ERROR at start-up,
before Redis ever answered: a specific line per cause, see :func:`describe`; a
WARNING later), one INFO line when it ends, with how long it lasted and how many
calls fell back; each cause at most once per ``log_window`` seconds.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis

from controlplane.client.error_log import WINDOW, ErrorLog

if TYPE_CHECKING:
    from controlplane.client.client import Client

logger = logging.getLogger("controlplane.client")

PROBE_FIRST: Final = 0.05  # seconds before the first probe of an outage
PROBE_MAX: Final = 0.5  # the longest wait between two probes: Redis back -> up within it
PROBE_MAX_MISCONFIGURED: Final = 30.0  # a URL redis-py refuses does not heal by itself

# Causes, as the ``cause`` label of controlplane_client_problems_total.
UNREACHABLE: Final = "unreachable"
TIMEOUT: Final = "timeout"
TLS: Final = "tls"
AUTH: Final = "auth"
URL: Final = "url"


def shown_url(url: str) -> str:
    """``url`` without its passwords (a Sentinel URL's ``sentinel_password`` too), for logs."""
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        secret_option = any(name in _PASSWORD_OPTIONS for name, _ in query)
        if parts.password is None and not secret_option:
            return url  # as given: urlunsplit would write unix:///path as unix:/path
        if parts.password is not None:
            user = parts.username or ""
            host = parts.netloc.rpartition("@")[2]
            parts = parts._replace(netloc=f"{user}:***@{host}")
        if secret_option:
            shown = [(name, "***" if name in _PASSWORD_OPTIONS else value) for name, value in query]
            parts = parts._replace(query=urlencode(shown, safe="*/"))
        return urlunsplit(parts)
    except ValueError:
        return "<unparsable Redis URL>"


_PASSWORD_OPTIONS: Final = {"password", "sentinel_password"}


def _chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 10 and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says Redis cannot be used (not an error reply about one key)."""
    return not isinstance(exc, redis.ResponseError)


def describe(url: str, exc: BaseException) -> tuple[str, str]:
    """The cause of a failure to use Redis, and a line that says what to fix."""
    where = shown_url(url)
    chain = _chain(exc)
    tls = url.lower().startswith("rediss:")
    if isinstance(exc, redis.AuthenticationError) or any(
        word in str(exc) for word in ("NOAUTH", "WRONGPASS", "AUTH <password>")
    ):
        return AUTH, f"Redis at {where} refused to authenticate this client: {exc}"
    if not isinstance(exc, redis.RedisError | OSError):
        text = str(exc)
        if "unexpected keyword argument" in text:
            option = text.rpartition("argument")[2].strip(" '\"")
            hint = " (TLS options need a rediss:// URL)" if option.startswith("ssl") else ""
            return URL, f"The Redis URL {where} has an unsupported option {option!r}{hint}"
        return URL, f"Cannot connect with the Redis URL {where}: {type(exc).__name__}: {exc}"
    if tls and any(isinstance(e, FileNotFoundError) for e in chain):
        return TLS, (
            f"TLS to Redis at {where}: a certificate file does not exist ({exc}); "
            "check ssl_ca_certs, ssl_certfile and ssl_keyfile"
        )
    if tls and any(
        isinstance(e, ssl.SSLError) or "handshake" in str(e) or "SSL" in str(e) for e in chain
    ):
        cause = next((e for e in chain if e is not exc), exc)
        return TLS, (
            f"TLS handshake with Redis at {where} failed ({cause}): does the server speak TLS "
            "on that port, and does the CA given sign its certificate?"
        )
    if isinstance(exc, redis.TimeoutError | TimeoutError):
        return TIMEOUT, f"Redis at {where} did not answer in time ({exc})"
    return UNREACHABLE, f"Cannot reach Redis at {where}: {exc}"


class RedisHealth:
    """Whether the client's Redis answers; read by hot paths as the plain ``down`` flag."""

    def __init__(self, client: Client, log_window: float = WINDOW) -> None:
        self.client = client
        self.down = False  # read without a lock on every call
        self.ever_up = False  # Redis answered this client at least once
        self.cause: str | None = None  # of the current outage
        self.since = 0.0  # monotonic start of the current outage
        self.outages = 0
        self.fallbacks = 0  # calls decided without Redis during the current outage
        self._up_listeners: list[Callable[[], None]] = []
        self._log = ErrorLog(logger, window=log_window)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._probe: threading.Thread | None = None
        metrics = client.metrics
        self._up_gauge = metrics.redis_up.labels(client.environment)
        self._up_gauge.set(1)
        self._outages = metrics.redis_outages.labels(client.environment)
        self._problems = metrics.problems
        self._probe_errors = metrics.redis_errors.labels("probe")

    @property
    def log_window(self) -> float:
        """Seconds a cause stays quiet after it was logged (tests shorten it)."""
        return self._log.window

    @log_window.setter
    def log_window(self, seconds: float) -> None:
        self._log.window = seconds

    def log(self, level: int, message: str, *args: object) -> bool:
        """Log a diagnosis once per cause (``message``) and window; for the client's own."""
        return self._log.log(level, message, *args)

    def on_up(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (on the probe's or the follower's thread) whenever Redis is back."""
        self._up_listeners.append(listener)

    def fell_back(self) -> None:
        """Count one call decided without Redis (reported when the outage ends)."""
        self.fallbacks += 1

    def failed(self, exc: BaseException, operation: str = "") -> bool:
        """A Redis call failed: mark the client down unless it was an error reply.

        Returns whether the failure is an outage (the caller falls back).
        """
        if not is_outage(exc):
            return False
        with self._lock:
            if self.down:
                return True
            self.down = True
            self.since = time.monotonic()
            self.fallbacks = 0
            self.outages += 1
            cause, text = describe(self.client.redis_url, exc)
            self.cause = cause
            starting = not self.ever_up
        self._up_gauge.set(0)
        self._outages.inc()
        self._problems.labels(cause).inc()
        self._announce(cause, text, starting, operation)
        self._start_probe()
        return True

    def _announce(self, cause: str, text: str, starting: bool, operation: str) -> None:
        # The text is the cause (one line per text and window); the operation is not.
        message = text.rstrip(". ").replace("%", "%%")
        if starting:
            self._log.log(
                logging.ERROR,
                f"{message}. Running on the last known policies (or the code defaults) "
                "until it answers.",
            )
        else:
            self._log.log(
                logging.WARNING,
                f"Lost Redis (%s): {message}. Enforcers fall back (rate limits by "
                "on_redis_error, caches call the function, breakers decide locally) "
                "until it answers.",
                operation or "probe",
            )

    def recovered(self) -> None:
        """Redis answered: mark the client up and tell the listeners."""
        with self._lock:
            self.ever_up = True
            if not self.down:
                return
            self.down = False
            lasted = time.monotonic() - self.since
            fallbacks, cause = self.fallbacks, self.cause
            self.cause = None
        self._up_gauge.set(1)
        self._log.log(
            logging.INFO,
            "Redis at %s answers again after %.1f s (%s); %d calls fell back meanwhile",
            shown_url(self.client.redis_url),
            lasted,
            cause,
            fallbacks,
        )
        for listener in list(self._up_listeners):
            try:
                listener()
            except Exception:
                logger.exception("A listener of Redis coming back failed")

    # The probe: one thread per client, only while Redis is down.

    def _start_probe(self) -> None:
        with self._lock:
            if self._stop.is_set() or (self._probe is not None and self._probe.is_alive()):
                return
            self._probe = threading.Thread(
                target=self._run_probe, name="controlplane-redis-probe", daemon=True
            )
            self._probe.start()

    def _run_probe(self) -> None:
        delay = PROBE_FIRST
        while self.down and not self._stop.wait(random.uniform(delay / 2, delay)):
            try:
                self.client.redis.ping()
            except Exception as exc:
                self._probe_errors.inc()
                cause, text = describe(self.client.redis_url, exc)
                if cause != self.cause:  # e.g. refused, then back but refusing the password
                    self.cause = cause
                    self._problems.labels(cause).inc()
                    self._announce(cause, text, not self.ever_up, "probe")
                cap = PROBE_MAX_MISCONFIGURED if cause == URL else PROBE_MAX
                delay = min(delay * 2, cap)
                continue
            self.recovered()
        with self._lock:
            if self._probe is threading.current_thread():
                self._probe = None
        if self.down and not self._stop.is_set():  # marked down again as this one ended
            self._start_probe()

    def close(self) -> None:
        self._stop.set()

    def reopen(self) -> None:
        """After ``close()``: probe again when needed (a client started again)."""
        self._stop.clear()
        if self.down:
            self._start_probe()

    def after_fork(self) -> None:
        """In a forked child: the probe thread and the lock stayed in the parent."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._probe = None
        if self.down:
            self._start_probe()
